"""Pipelines whose preprocessing is learned at meta-training time and frozen.

A meta-learned initialisation is tied to the coordinates of the meta-training
data.  Preprocessing in front of it must therefore be fitted once, on the
meta-training tasks, and then stay fixed: refitting a scaler on the ten support
points of each new task (or of each cross-validation fold) moves the inputs
away from the coordinates the initialisation was learned in.
:func:`meta_fit_pipeline` does the right thing in one call.
"""

from numbers import Integral
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from .tasks._base import (
    TaskError,
    TaskSampler,
    is_pair,
    keyed_generator,
    sampler_kind,
    seed_from_random_state,
)

__all__ = ["meta_fit_pipeline"]


def _dense(X):
    """A transformer's output as a float array (sparse matrices and DataFrames included)."""
    if sparse.issparse(X):
        X = X.toarray()
    return np.asarray(X, dtype=np.float64)


class _TransformedTaskSampler(TaskSampler):
    """A skreptile sampler whose tasks' inputs pass through ``transform``."""

    def __init__(self, sampler, transform):
        self.sampler = sampler
        self.transform = transform

    def resolve_seed(self, fallback_seed):
        return self.sampler.resolve_seed(fallback_seed)

    def sample_batch(self, rng, n_tasks):
        X, y = self.sampler.sample_batch(rng, n_tasks)
        X = np.asarray(X)
        if X.ndim != 3:
            return X, y  # meta_fit reports the malformed batch
        n, p, d = X.shape
        return _dense(self.transform(X.reshape(n * p, d))).reshape(n, p, -1), y


class _TransformedCallable:
    """A callable sampler whose tasks' inputs pass through ``transform``."""

    def __init__(self, sampler, transform):
        self.sampler = sampler
        self.transform = transform

    def __call__(self, rng):
        task = self.sampler(rng)
        if not is_pair(task):
            return task  # meta_fit reports the malformed task
        X, y = task
        return _dense(self.transform(X)), y


def _as_pair(task, index):
    if not is_pair(task):
        raise TaskError(
            f"Task {index}: a task sampler must return a pair (X, y), got {type(task).__name__}."
        )
    return task


def _concat(parts):
    if hasattr(parts[0], "iloc"):  # DataFrames keep their columns for the transformers
        import pandas as pd

        return pd.concat(parts, ignore_index=True)
    return np.concatenate([np.asarray(part) for part in parts])


def _fitting_points(task_sampler, n_tasks, seed):
    """All points of the tasks on which the transformers are fitted, as ``(X, y)``."""
    kind = sampler_kind(task_sampler)
    if kind == "batched":
        X, y = task_sampler.sample_batch(keyed_generator(task_sampler.resolve_seed(seed)), n_tasks)
        X, y = np.asarray(X), np.asarray(y)
        return X.reshape(-1, X.shape[-1]), y.reshape(X.shape[0] * X.shape[1], *y.shape[2:])
    if kind == "callable":
        rng = keyed_generator(seed)
        tasks = [_as_pair(task_sampler(rng), i) for i in range(n_tasks)]
    else:
        if len(task_sampler) == 0:
            raise TaskError("The sequence of tasks is empty.")
        tasks = [_as_pair(task, i) for i, task in enumerate(task_sampler)]
    return _concat([X for X, _ in tasks]), _concat([y for _, y in tasks])


def _kept_as_is(step):
    """Steps that need no fitting: already frozen, or no transformation at all."""
    return step is None or isinstance(step, (str, FrozenEstimator))


def _transformed(task_sampler, transform):
    kind = sampler_kind(task_sampler)
    if kind == "batched":
        return _TransformedTaskSampler(task_sampler, transform)
    if kind == "callable":
        return _TransformedCallable(task_sampler, transform)
    return [(_dense(transform(X)), y) for X, y in task_sampler]


def meta_fit_pipeline(pipeline: Pipeline, task_sampler: Any, *, n_tasks: int = 256) -> Pipeline:
    """Meta-fit a pipeline ending in a Reptile estimator, with its preprocessing frozen.

    The transformers of ``pipeline`` are fitted on the points of the
    meta-training tasks and wrapped in :class:`sklearn.frozen.FrozenEstimator`;
    the last step is meta-fitted on the tasks as the transformers output them.
    The result adapts to a new task with ``fit`` (the frozen transformers are
    left as they are) and works with ``clone``, ``cross_val_score``,
    ``GridSearchCV`` and ``joblib``: every fold transforms its points with the
    meta-training statistics and adapts from the meta-learned initialisation.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Transformers followed by a :class:`~skreptile.ReptileRegressor` (or any
        estimator with ``meta_fit``).  It is not modified.  Steps that are
        already a ``FrozenEstimator`` are kept as they are.
    task_sampler : callable, sequence of (X, y) or TaskSampler
        The meta-training tasks, in the form the first step expects (arrays, or
        DataFrames for a ``ColumnTransformer``), as for
        :meth:`ReptileRegressor.meta_fit <skreptile.ReptileRegressor.meta_fit>`.
    n_tasks : int, default=256
        Tasks drawn from a callable or :class:`~skreptile.TaskSampler` to fit the
        transformers on, with a generator seeded from the last step's
        ``random_state``.  A sequence of tasks is used whole.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        A new pipeline: the fitted transformers, frozen, and the meta-fitted last
        step.  It is not fitted (``check_is_fitted`` fails) until ``fit`` adapts
        it to a new task.

    See Also
    --------
    sklearn.frozen.FrozenEstimator : The wrapper that keeps a fitted step as it is.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skreptile import ReptileRegressor
    >>> from skreptile.pipeline import meta_fit_pipeline
    >>> def sampler(rng):  # temperatures around 20 degrees, a slope per task
    ...     x = rng.uniform(10, 30, size=(20, 1))
    ...     return x, rng.uniform(-1, 1) * (x[:, 0] - 20)
    >>> pipe = make_pipeline(
    ...     StandardScaler(),
    ...     ReptileRegressor(hidden_layer_sizes=(16,), n_meta_iter=50, random_state=0),
    ... )
    >>> pipe = meta_fit_pipeline(pipe, sampler)
    >>> pipe[0]  # fitted on the meta-training points, frozen
    FrozenEstimator(estimator=StandardScaler())
    >>> x = np.linspace(10, 30, 8)[:, None]
    >>> pipe.fit(x, 0.5 * (x[:, 0] - 20)).predict(x).shape
    (8,)
    """
    if not isinstance(pipeline, Pipeline):
        raise TypeError(
            f"meta_fit_pipeline expects a sklearn Pipeline, got {type(pipeline).__name__}."
        )
    if not isinstance(n_tasks, Integral) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}.")
    result = clone(pipeline)
    *head, (last_name, last) = result.steps
    if not hasattr(last, "meta_fit"):
        raise TypeError(
            f"The last step of the pipeline, {last_name!r}, must have a meta_fit method "
            f"(such as a ReptileRegressor); got {type(last).__name__}."
        )

    frozen = []
    if head:
        transformers = Pipeline(head)
        if not all(_kept_as_is(step) for _, step in head):
            seed = seed_from_random_state(getattr(last, "random_state", None))
            X, y = _fitting_points(task_sampler, int(n_tasks), seed)
            transformers.fit(X, y)
        frozen = [
            (name, step if _kept_as_is(step) else FrozenEstimator(step))
            for name, step in transformers.steps
        ]
        task_sampler = _transformed(task_sampler, Pipeline(frozen).transform)

    last.meta_fit(task_sampler)
    return result.set_params(steps=[*frozen, (last_name, last)])
