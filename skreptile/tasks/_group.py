"""Tasks from one table with a group column: one task per group."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._typing import RandomStateLike, Task, TaskBatch
from ._base import TaskSampler
from ._device import check_draw_on, on_device
from ._group_table import prepare_table
from ._targets import FrozenTargetTransformer

# Bound on the random keys drawn at once when choosing points without replacement.
_KEY_BUDGET = 1 << 22


class GroupTaskSampler(TaskSampler):
    """Meta-training tasks from one table: every group of rows is a task.

    Real data rarely comes as separate tasks: it comes as one table with a
    column saying which patient, sensor, store, station or day a row belongs to.
    This sampler makes each group a task.  A meta-training draw picks groups
    uniformly at random (with replacement: a group can be drawn again later) and
    takes ``n_points`` of the group's rows, without replacement, or all of them.

    Parameters
    ----------
    X : array-like or pandas DataFrame of shape (n_samples, n_features)
        Inputs.  A DataFrame's column names are kept in ``feature_names_in_``.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs), or str
        Targets, or the name of the column of the DataFrame ``X`` holding them
        (then not used as a feature).
    groups : array-like of shape (n_samples,) or str
        Group label of every row, or the name of the column of ``X`` holding
        them (then not used as a feature).  Labels may be of any comparable type.
    n_points : int or None, default=None
        Rows per drawn task, chosen at random without replacement within the
        group.  None takes every row of the group, so tasks have the sizes of
        their groups; tasks of different sizes in one meta-batch are padded and
        masked.
    small_groups : {"error", "skip"}, default="error"
        What to do with groups of fewer than ``n_points`` rows (fewer than 2
        when ``n_points`` is None: a task needs two points).  "error" raises a
        ``ValueError`` naming them; "skip" leaves them out with a ``UserWarning``
        and lists them in ``skipped_groups_``.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the tasks drawn by ``meta_fit``.  None defers to the estimator's
        ``random_state``.
    preprocessor : scikit-learn transformer or None, default=None
        A transformer (for example a ``ColumnTransformer`` with an imputer and
        a one-hot encoder) for tables with categorical or string columns or
        missing values.  A clone is fitted **once** on the rows of ``X`` (the
        meta-training rows, without the ``y`` and ``groups`` columns), and the
        table is transformed once: tasks are drawn from its output, never
        preprocessed per task.  The fitted transformer is ``preprocessor_``;
        :meth:`pipeline` puts it, frozen, in front of an estimator, for the
        rows of new groups.
    target_transformer : scikit-learn transformer or None, default=None
        A transformer of the targets with an ``inverse_transform``, for
        example ``FunctionTransformer(np.log1p, inverse_func=np.expm1)`` for a
        log price, a ``PowerTransformer`` or a ``QuantileTransformer``.  A
        clone is fitted **once**, on the targets of every row of ``X`` (as a
        column ``(n_samples, 1)``, or ``(n_samples, n_outputs)``), and the
        table's targets are transformed once, before anything else: the
        ``preprocessor`` is fitted with the transformed targets, and tasks,
        including the groups that ``meta_fit`` holds out for validation, are
        drawn in transformed units.  The fitted transformer is
        ``target_transformer_``; :meth:`pipeline` wraps the model in a
        ``TransformedTargetRegressor`` with it frozen, so that ``fit`` on a
        new group transforms its targets with the meta-training statistics
        and ``predict`` returns the original units.  For regression only.
    draw_on : {"auto", "host", "device"}, default="auto"
        Where ``meta_fit`` draws the tasks: "host" with numpy
        (:meth:`sample_batch`), "device" with torch on the training device
        (:meth:`draw_tasks`; the table is copied there once, in float32),
        "auto" on the device when it is not the CPU.  Drawing on the device
        needs tasks of one size: ``n_points`` set, or groups all of one size;
        otherwise "auto" draws on the host and "device" is refused.  The two
        paths draw other tasks from the same distribution.

    Attributes
    ----------
    groups_ : ndarray of shape (n_groups,)
        Labels of the groups used as tasks, sorted.
    group_sizes_ : ndarray of shape (n_groups,)
        Rows of each group.
    skipped_groups_ : ndarray
        Labels of the groups left out for being too small.
    n_features_in_ : int
        Number of features.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features, when ``X`` is a DataFrame with string column
        names and there is no ``preprocessor``.
    preprocessor_ : transformer
        The fitted clone of ``preprocessor`` (only when one is given).
    target_transformer_ : transformer
        The fitted clone of ``target_transformer`` (only when one is given).

    Notes
    -----
    Without a ``preprocessor``, ``X`` must be numeric and free of missing
    values: a column that is not is named in the error, which points to
    ``preprocessor``.  Missing targets are never imputed: drop those rows.
    Rows are copied once, sorted by group, when the sampler is built.

    A target transform belongs to the meta-learned model, like the
    preprocessing: a ``TransformedTargetRegressor`` with a scaler fitted per
    fold would scale every new group's few support targets differently from
    meta-training, and the initialisation would no longer mean what it
    learned.  ``target_transformer`` learns it once and freezes it.

    Examples
    --------
    >>> import numpy as np
    >>> from skreptile import GroupTaskSampler
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 2))
    >>> y = X[:, 0] + rng.normal(size=30)
    >>> groups = np.repeat(["a", "b", "c"], [8, 10, 12])
    >>> sampler = GroupTaskSampler(X, y, groups, n_points=5, random_state=0)
    >>> sampler.groups_, sampler.group_sizes_
    (array(['a', 'b', 'c'], dtype='<U1'), array([ 8, 10, 12]))
    >>> Xs, ys = sampler.sample_batch(np.random.default_rng(0), 4)
    >>> Xs.shape, ys.shape
    ((4, 5, 2), (4, 5))
    >>> [len(Xt) for Xt, _ in sampler.tasks()]
    [8, 10, 12]
    """

    # The table is checked finite when built (and after preprocessing).
    _finite_by_construction = True

    # Learned when built (prepare_table).
    groups_: np.ndarray
    group_sizes_: np.ndarray
    skipped_groups_: np.ndarray
    n_features_in_: int
    feature_names_in_: np.ndarray
    preprocessor_: Any
    target_transformer_: Any
    _X: np.ndarray
    _y: np.ndarray
    _starts: np.ndarray

    def __init__(
        self,
        X: Any,
        y: Any,
        groups: Any,
        *,
        n_points: int | None = None,
        small_groups: str = "error",
        random_state: RandomStateLike = None,
        preprocessor: Any = None,
        target_transformer: Any = None,
        draw_on: str = "auto",
    ) -> None:
        self.n_points = n_points
        self.small_groups = small_groups
        self.random_state = random_state
        self.preprocessor = preprocessor
        self.target_transformer = target_transformer
        self.draw_on = draw_on
        vars(self).update(prepare_table(self, X, y, groups))
        check_draw_on(draw_on, self.device_drawable, "groups differ in size and n_points is None")

    def pipeline(self, estimator: Any) -> Any:
        """The estimator with this sampler's fitted preprocessing in front, frozen.

        For the rows of a new group as they come (a DataFrame with the raw
        columns, targets in their original units), as
        :func:`skreptile.pipeline.meta_fit_pipeline` does for pipelines:

        * with a ``preprocessor``,
          ``Pipeline([("preprocessor", FrozenEstimator(preprocessor_)), ("model", estimator)])``:
          ``fit`` adapts the estimator only;
        * with a ``target_transformer``, that (or the estimator) wrapped in
          ``TransformedTargetRegressor`` with ``target_transformer_`` frozen
          (a ``FrozenEstimator`` whose ``fit`` takes the targets alone) and
          ``check_inverse=False``: ``fit`` transforms the support targets with
          the meta-training statistics (never refitted) and adapts a clone of
          the estimator, which keeps its meta-learned initialisation;
          ``predict`` inverts the predictions to the original units;
        * with neither, the estimator as it is.

        Parameters
        ----------
        estimator : estimator
            The model meta-fitted on this sampler (or to be).

        Returns
        -------
        model : estimator
            ``estimator`` behind the frozen ``preprocessor_`` and
            ``target_transformer_``.

        Examples
        --------
        >>> import numpy as np
        >>> import pandas as pd
        >>> from sklearn.preprocessing import FunctionTransformer
        >>> from skreptile import GroupTaskSampler, ReptileRegressor
        >>> rng = np.random.default_rng(0)
        >>> df = pd.DataFrame({"x": rng.normal(size=200), "shop": np.repeat(range(20), 10)})
        >>> df["sales"] = np.exp(df["x"] + rng.normal(size=20)[df["shop"]])
        >>> log = FunctionTransformer(np.log, inverse_func=np.exp)
        >>> sampler = GroupTaskSampler(df, "sales", "shop", target_transformer=log)
        >>> model = ReptileRegressor(hidden_layer_sizes=(16,), n_meta_iter=100, random_state=0)
        >>> pipe = sampler.pipeline(model.meta_fit(sampler))
        >>> type(pipe).__name__
        'TransformedTargetRegressor'
        >>> new = pd.DataFrame({"x": [0.0, 1.0, -1.0, 0.5]})
        >>> sales = pipe.fit(new, [1.0, 2.7, 0.4, 1.6]).predict(new)  # in sales, not log sales
        >>> bool((sales > 0).all())
        True
        """
        model = estimator
        if self.preprocessor is not None:
            from sklearn.frozen import FrozenEstimator
            from sklearn.pipeline import Pipeline

            model = Pipeline(
                [("preprocessor", FrozenEstimator(self.preprocessor_)), ("model", estimator)]
            )
        if self.target_transformer is not None:
            from sklearn.base import is_classifier
            from sklearn.compose import TransformedTargetRegressor

            if is_classifier(estimator):
                raise ValueError(
                    f"{type(estimator).__name__} is a classifier, but this sampler has "
                    f"target_transformer={self.target_transformer!r}: class labels cannot be "
                    "transformed. Build the sampler without target_transformer for "
                    "classification."
                )
            model = TransformedTargetRegressor(
                regressor=model,
                transformer=FrozenTargetTransformer(self.target_transformer_),
                check_inverse=False,
            )
        return model

    # ----------------------------------------------------------------- tasks
    @property
    def n_groups_(self) -> int:
        """Number of groups used as tasks."""
        return len(self.groups_)

    def tasks(self) -> list[Task]:
        """Every group's rows as a task ``(X, y)``, in the order of ``groups_``.

        Returns
        -------
        tasks : list of (ndarray, ndarray)
            One ``(X, y)`` pair per group: all of its rows, in their original order.
        """
        return [
            (self._X[s : s + n], self._y[s : s + n])
            for s, n in zip(self._starts, self.group_sizes_)
        ]

    def _choose_points(self, rng, sizes, k):
        """Indices ``(n_tasks, k)`` into groups of ``sizes``, without replacement in a row."""
        width = int(sizes.max())
        per_block = max(1, _KEY_BUDGET // width)
        out = np.empty((len(sizes), k), dtype=np.intp)
        for start in range(0, len(sizes), per_block):
            block = sizes[start : start + per_block]
            keys = rng.random((len(block), width))
            # Positions past a group's end can never be among the k smallest keys.
            keys[np.arange(width) >= block[:, None]] = 2.0
            out[start : start + len(block)] = np.argpartition(keys, k - 1, axis=1)[:, :k]
        return out

    def sample_batch(self, rng: np.random.Generator, n_tasks: int) -> TaskBatch:
        """Draw ``n_tasks`` tasks from groups chosen uniformly at random.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness; the sampler keeps no state between calls.
        n_tasks : int
            Number of tasks.

        Returns
        -------
        tasks : tuple of ndarray or list of (ndarray, ndarray)
            With ``n_points`` set (or groups all of one size), stacked arrays
            ``X (n_tasks, n_points, n_features)`` and ``y (n_tasks, n_points[, n_outputs])``;
            otherwise a list of ``(X, y)``, one per task, of its group's size.
        """
        chosen = rng.integers(self.n_groups_, size=n_tasks)
        starts, sizes = self._starts[chosen], self.group_sizes_[chosen]
        if self.n_points is not None:
            rows = starts[:, None] + self._choose_points(rng, sizes, int(self.n_points))
            return self._X[rows], self._y[rows]
        if (self.group_sizes_ == self.group_sizes_[0]).all():
            rows = starts[:, None] + np.arange(self.group_sizes_[0])
            return self._X[rows], self._y[rows]
        return [(self._X[s : s + n], self._y[s : s + n]) for s, n in zip(starts, sizes)]

    @property
    def device_drawable(self) -> bool:
        """Whether :meth:`draw_tasks` can draw these tasks: all of one size."""
        return self.n_points is not None or bool((self.group_sizes_ == self.group_sizes_[0]).all())

    def draw_tasks(self, random, task_ids, device):
        """Draw the tasks ``task_ids`` on ``device`` with torch (``draw_on="device"``).

        The same distribution as :meth:`sample_batch`: groups chosen uniformly,
        ``n_points`` distinct rows of each (all rows without ``n_points``).
        The rows of a task come in no particular order: ``meta_fit`` orders
        them at random.

        Parameters
        ----------
        random : skreptile._engine.keyed_random.KeyedRandom
            The run's keyed generator: task ``i`` is the same whatever other
            tasks are drawn with it.
        task_ids : tensor of int64, shape (n_tasks,)
            Global ids of the tasks, on ``device``.
        device : torch.device
            Where the tasks are drawn and returned.

        Returns
        -------
        X : tensor of float32, shape (n_tasks, n_points, n_features)
            Inputs of the tasks, on ``device``.
        y : tensor of float32, shape (n_tasks, n_points, n_outputs)
            Targets of the tasks, on ``device``.
        """
        import torch

        if not self.device_drawable:
            check_draw_on("device", False, "groups differ in size and n_points is None")
        X, y, starts, sizes = on_device(
            self,
            device,
            lambda: (
                self._X.astype(np.float32),
                self._y.reshape(len(self._y), -1).astype(np.float32),
                self._starts.astype(np.int64),
                self.group_sizes_.astype(np.int64),
            ),
        )
        ids = torch.as_tensor(task_ids, dtype=torch.int64, device=device)
        # A multiply-shift maps a 32-bit word to a group uniformly (to 2**-32).
        chosen = (random.bits(0, ids, 1)[:, 0] * self.n_groups_) >> 32
        if self.n_points is None:
            within = torch.arange(int(self.group_sizes_[0]), device=ids.device).expand(len(ids), -1)
        else:
            within = random.subsets(1, ids, sizes[chosen], int(self.n_points))
        rows = starts[chosen][:, None] + within
        return X[rows], y[rows]

    def __repr__(self) -> str:
        return (
            f"GroupTaskSampler(n_groups={self.n_groups_}, n_points={self.n_points!r}, "
            f"small_groups={self.small_groups!r}, random_state={self.random_state!r})"
        )

    def _rows(self):
        """``(X, y, group index of every row)``: the table as ``meta_fit`` draws from it."""
        return self._X, self._y, np.repeat(np.arange(self.n_groups_), self.group_sizes_)

    def _with_targets(self, y):
        """A sampler of the same groups and rows with targets ``y`` (rows in ``_rows`` order)."""
        y = np.asarray(y, dtype=self._y.dtype)
        if y.shape != self._y.shape:
            raise ValueError(f"targets of shape {y.shape} for a table of {self._y.shape}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._y = np.ascontiguousarray(y)
        return new

    def _split_groups(self, held_out):
        """``(sampler of the other groups, list of the held-out groups' (X, y))``.

        ``held_out`` indexes ``groups_``.  The returned sampler shares nothing
        mutable with this one; its tasks are whole groups, never a part of one.
        """
        held = np.zeros(self.n_groups_, dtype=bool)
        held[np.asarray(held_out, dtype=np.intp)] = True
        tasks = self.tasks()
        kept = [t for t, h in zip(tasks, held) if not h]
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.groups_ = self.groups_[~held]
        new.group_sizes_ = self.group_sizes_[~held]
        new._X = np.ascontiguousarray(np.concatenate([X for X, _ in kept]))
        new._y = np.ascontiguousarray(np.concatenate([y for _, y in kept]))
        new._starts = np.concatenate([[0], np.cumsum(new.group_sizes_)[:-1]]).astype(np.intp)
        return new, [t for t, h in zip(tasks, held) if h]
