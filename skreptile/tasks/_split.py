"""Held-out tasks split into support points (to adapt on) and query points (to score)."""

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.utils.validation import check_array

from ._base import as_generator, is_pair
from ._group import GroupTaskSampler


def as_task_list(tasks):
    """A non-empty list of tasks from a sequence or a :class:`GroupTaskSampler`."""
    if isinstance(tasks, GroupTaskSampler):
        return tasks.tasks()
    if not isinstance(tasks, Sequence) or isinstance(tasks, (str, bytes)):
        raise TypeError(
            f"tasks must be a GroupTaskSampler or a sequence of tasks, got {type(tasks).__name__}."
        )
    if len(tasks) == 0:
        raise ValueError("tasks is empty: there is nothing to evaluate on.")
    return list(tasks)


def _is_frame(a):
    """A pandas DataFrame or Series (anything indexed by position with ``iloc``)."""
    return hasattr(a, "iloc") and hasattr(a, "shape")


def _rows(a, index):
    return a.iloc[index] if _is_frame(a) else a[index]


def _inputs(X, name):
    return check_array(X, dtype=np.float64, allow_nd=True, input_name=name)


def _targets(y, name, numeric):
    return check_array(y, dtype=np.float64 if numeric else None, ensure_2d=False, input_name=name)


def split_support_query(
    tasks: Any, n_support: int, *, random_state: Any = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Split every task's points at random into support and query points.

    Parameters
    ----------
    tasks : GroupTaskSampler or sequence of (X, y)
        Held-out tasks; a :class:`~skreptile.GroupTaskSampler` gives one per group.
    n_support : int
        Support points per task, drawn without replacement; the remaining
        points are the query points.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the split.

    Returns
    -------
    split : list of (X_support, y_support, X_query, y_query)
        One tuple per task, points in their original order within each part.
        A pandas DataFrame or Series stays one (split by position), so that
        raw rows can be given to a pipeline that preprocesses them, such as
        :meth:`GroupTaskSampler.pipeline <skreptile.GroupTaskSampler.pipeline>`
        returns; other inputs and targets become arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from skreptile.evaluation import split_support_query
    >>> x = np.arange(10.0)[:, None]
    >>> Xs, ys, Xq, yq = split_support_query([(x, 2 * x[:, 0])], 3, random_state=0)[0]
    >>> Xs.shape, Xq.shape
    ((3, 1), (7, 1))
    """
    if not isinstance(n_support, numbers.Integral) or n_support < 1:
        raise ValueError(f"n_support must be a positive integer, got {n_support!r}.")
    rng = as_generator(random_state)
    split = []
    for i, task in enumerate(as_task_list(tasks)):
        if not is_pair(task):
            raise ValueError(f"Task {i}: expected a pair (X, y), got {type(task).__name__}.")
        # DataFrames (and Series) stay so, for a pipeline whose preprocessing
        # reads raw columns; they are split by position.
        X = task[0] if _is_frame(task[0]) else _inputs(task[0], "X")
        y = task[1] if _is_frame(task[1]) else _targets(task[1], "y", numeric=False)
        if len(X) != len(y):
            raise ValueError(f"Task {i}: X and y have {len(X)} and {len(y)} points.")
        if len(X) <= n_support:
            raise ValueError(
                f"Task {i} has {len(X)} points: n_support={n_support} leaves none to score. "
                "Drop the smaller tasks or lower n_support."
            )
        order = rng.permutation(len(X))
        s, q = np.sort(order[:n_support]), np.sort(order[n_support:])
        split.append((_rows(X, s), _rows(y, s), _rows(X, q), _rows(y, q)))
    return split


def check_split(tasks, *, numeric_y=True, with_query_y=True):
    """Validate held-out tasks ``(X_support, y_support, X_query[, y_query])``.

    Inputs may be flat or images; targets stay labels unless ``numeric_y``.
    """
    checked = []
    shape = None
    length = 4 if with_query_y else 3
    for i, task in enumerate(as_task_list(tasks)):
        if not (isinstance(task, (tuple, list)) and len(task) == length):
            wanted = (
                "(X_support, y_support, X_query, y_query)"
                if with_query_y
                else ("(X_support, y_support, X_query)")
            )
            raise ValueError(
                f"Task {i}: expected {wanted}; pass n_support to split tasks given as (X, y) pairs."
            )
        Xs, Xq = _inputs(task[0], "X_support"), _inputs(task[2], "X_query")
        ys = _targets(task[1], "y_support", numeric_y)
        parts = [Xs, ys, Xq]
        if with_query_y:
            yq = _targets(task[3], "y_query", numeric_y)
            if len(Xq) != len(yq):
                raise ValueError(f"Task {i}: X_query and y_query have different lengths.")
            parts.append(yq)
        if len(Xs) != len(ys):
            raise ValueError(f"Task {i}: X_support and y_support have different lengths.")
        if Xs.shape[1:] != Xq.shape[1:] or (shape is not None and Xs.shape[1:] != shape):
            raise ValueError(
                f"Task {i}: inconsistent numbers of features (support {Xs.shape[1:]}, "
                f"query {Xq.shape[1:]}"
                + ("" if shape is None else f", earlier tasks {shape}")
                + ")."
            )
        shape = Xs.shape[1:]
        checked.append(tuple(parts))
    return checked
