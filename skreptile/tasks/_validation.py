"""The validation of what task samplers return: one task, or a batch of stacked tasks.

Every error is a :class:`TaskError` that names the task by its index (the
user's own, in a sequence of tasks) and says what to change.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_array


class TaskError(ValueError):
    """A task sampler returned something that is not a valid task."""


_ONE_DATA_SET_HINT = (
    " A sequence of tasks is a list of (X, y) pairs: for one task, pass "
    "meta_fit([(X, y)]); to cut one data set into tasks by a group column, pass "
    "meta_fit(X, y, groups=group) (or GroupTaskSampler(X, y, group) for its options)."
)


def host_array(a):
    """``a``, or a torch tensor's values on the host, detached from any autograd graph.

    Tasks are data: a tensor that requires gradients (a sampler built from a
    model's outputs) would otherwise fail in numpy with torch's own message.
    """
    detach = getattr(a, "detach", None)
    return a.detach().cpu() if callable(detach) and hasattr(a, "cpu") else a


def _as_2d_targets(y):
    return y[:, None] if y.ndim == 1 else y


def validate_task(task, index, expected=None, min_points=2):
    """Check one task and return ``(X, y)`` as 2-D float arrays.

    ``index`` names the task in messages; ``expected`` is ``(n_features, n_outputs)``
    of the tasks seen before, which this one must match.
    """
    where = f"Task {index}"
    if not (isinstance(task, (tuple, list)) and len(task) == 2):
        raise TaskError(
            f"{where}: a task sampler must return a pair (X, y), got {type(task).__name__}"
            + (f" of length {len(task)}" if hasattr(task, "__len__") else "")
            + "."
            # An array where a task should be: most likely meta_fit((X, y)), whose
            # tuple was read as a sequence of tasks.
            + (_ONE_DATA_SET_HINT if hasattr(task, "shape") else "")
        )
    X, y = (host_array(a) for a in task)
    try:
        X = check_array(X, dtype=np.float64, input_name="X")
        y = check_array(y, dtype=np.float64, ensure_2d=False, input_name="y")
    except ValueError as exc:
        raise TaskError(f"{where}: {exc}") from exc
    if y.ndim not in (1, 2):
        raise TaskError(f"{where}: y must be 1-D or 2-D, got {y.ndim} dimensions.")
    if X.shape[0] != y.shape[0]:
        raise TaskError(
            f"{where}: X and y have different numbers of points ({X.shape[0]} and {y.shape[0]})."
        )
    if X.shape[0] < min_points:
        raise TaskError(
            f"{where} has {X.shape[0]} point(s); meta-training tasks need at least {min_points}."
        )
    y = _as_2d_targets(y)
    _check_matches(where, X.shape[1], y.shape[1], expected)
    return X, y


def _check_matches(where, n_features, n_outputs, expected):
    if expected is None:
        return
    if n_features != expected[0]:
        raise TaskError(f"{where} has {n_features} features, but earlier tasks have {expected[0]}.")
    if n_outputs != expected[1]:
        raise TaskError(f"{where} has {n_outputs} outputs, but earlier tasks have {expected[1]}.")


def validate_task_batch(
    X, y, first_index, expected=None, min_points=2, scan_values=True, n_tasks=None, sampler_name=""
):
    """Check stacked tasks ``X (n_tasks, n_points, n_features)`` and ``y``.

    ``n_tasks``: the number of tasks asked of the sampler (named
    ``sampler_name`` in the message), which ``X`` must hold.

    ``scan_values=False`` skips the scan for NaN and infinity (the batch's
    largest cost), for samplers whose values were checked when they were built.
    """
    X = np.asarray(host_array(X), dtype=np.float64)
    y = np.asarray(host_array(y), dtype=np.float64)
    where = f"Tasks {first_index} to {first_index + len(X) - 1}"
    if n_tasks is not None and (X.ndim < 1 or len(X) != n_tasks):
        raise TaskError(
            f"{sampler_name}.sample_batch(rng, {n_tasks}) returned "
            f"{len(X) if X.ndim else 0} tasks (X of shape {X.shape}); it must return "
            f"exactly n_tasks={n_tasks} tasks, stacked along the first axis."
        )
    if X.ndim != 3 or y.ndim not in (2, 3) or X.shape[:2] != y.shape[:2]:
        raise TaskError(
            f"{where}: sample_batch must return X of shape (n_tasks, n_points, n_features) "
            f"and y of shape (n_tasks, n_points[, n_outputs]); got {X.shape} and {y.shape}."
        )
    if X.shape[1] < min_points:
        raise TaskError(
            f"{where} have {X.shape[1]} point(s); meta-training tasks need at least {min_points}."
        )
    for name, arr in (("X", X), ("y", y)) if scan_values else ():
        finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if not finite.all():
            bad = first_index + int(np.argmin(finite))
            raise TaskError(f"Task {bad}: {name} contains NaN or infinity.")
    if y.ndim == 2:
        y = y[:, :, None]
    _check_matches(where, X.shape[2], y.shape[2], expected)
    return X, y


def is_pair(task):
    """Whether ``task`` has the shape of a task, a pair ``(X, y)``."""
    return isinstance(task, (tuple, list)) and len(task) == 2
