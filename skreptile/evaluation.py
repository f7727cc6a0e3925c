"""Honest few-shot evaluation on held-out tasks, against ordinary baselines.

The question a user of meta-learning has to answer is not "is the error low"
but "is it lower than what I would have done without it".  The functions here
answer it on held-out tasks: every task's points are split into a few support
points, on which the meta-learned model adapts and every baseline is fitted,
and query points, on which all are scored.  Means come with confidence
intervals over tasks, and paired differences with theirs.
"""

import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from sklearn.base import clone
from sklearn.utils.validation import check_array

from ._adaptation import BLOCK_TASKS, PackedTasks, adaptation_curve
from ._base import BaseReptile
from ._device import fast_cpu_math
from ._losses import LOSSES
from .tasks import GroupTaskSampler
from .tasks._base import as_generator

__all__ = ["FewShotResults", "evaluate_few_shot", "plot_few_shot", "split_support_query"]

DEFAULT_STEPS = (0, 1, 2, 4, 8, 16, 32)


def _mse(y_true, y_pred):
    return float(np.mean((y_true - y_pred) ** 2))


def _rmse(y_true, y_pred):
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def _mae(y_true, y_pred):
    return float(np.mean(np.abs(y_true - y_pred)))


METRICS = {"mse": _mse, "rmse": _rmse, "mae": _mae}


def _as_tasks(tasks):
    if isinstance(tasks, GroupTaskSampler):
        return tasks.tasks()
    if not isinstance(tasks, Sequence) or isinstance(tasks, (str, bytes)):
        raise TypeError(
            f"tasks must be a GroupTaskSampler or a sequence of tasks, got {type(tasks).__name__}."
        )
    if len(tasks) == 0:
        raise ValueError("tasks is empty: there is nothing to evaluate on.")
    return tasks


def split_support_query(tasks, n_support, *, random_state=None):
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
    for i, task in enumerate(_as_tasks(tasks)):
        if not (isinstance(task, (tuple, list)) and len(task) == 2):
            raise ValueError(f"Task {i}: expected a pair (X, y), got {type(task).__name__}.")
        X = check_array(task[0], dtype=np.float64, input_name="X")
        y = check_array(task[1], dtype=np.float64, ensure_2d=False, input_name="y")
        if len(X) != len(y):
            raise ValueError(f"Task {i}: X and y have {len(X)} and {len(y)} points.")
        if len(X) <= n_support:
            raise ValueError(
                f"Task {i} has {len(X)} points: n_support={n_support} leaves none to score. "
                "Drop the smaller tasks or lower n_support."
            )
        order = rng.permutation(len(X))
        s, q = np.sort(order[:n_support]), np.sort(order[n_support:])
        split.append((X[s], y[s], X[q], y[q]))
    return split


def _check_split(tasks):
    checked = []
    n_features = None
    for i, task in enumerate(_as_tasks(tasks)):
        if not (isinstance(task, (tuple, list)) and len(task) == 4):
            raise ValueError(
                f"Task {i}: expected (X_support, y_support, X_query, y_query); pass n_support "
                "to split tasks given as (X, y) pairs."
            )
        Xs, ys, Xq, yq = task
        Xs = check_array(Xs, dtype=np.float64, input_name="X_support")
        Xq = check_array(Xq, dtype=np.float64, input_name="X_query")
        ys = check_array(ys, dtype=np.float64, ensure_2d=False, input_name="y_support")
        yq = check_array(yq, dtype=np.float64, ensure_2d=False, input_name="y_query")
        if len(Xs) != len(ys) or len(Xq) != len(yq):
            raise ValueError(f"Task {i}: X and y of the support or query have different lengths.")
        if Xs.shape[1] != Xq.shape[1] or (n_features is not None and Xs.shape[1] != n_features):
            raise ValueError(f"Task {i}: inconsistent numbers of features.")
        n_features = Xs.shape[1]
        checked.append((Xs, ys, Xq, yq))
    return checked


def _score(metric_fn, y_true, y_pred):
    if not np.isfinite(y_pred).all():
        return np.inf
    return metric_fn(y_true, y_pred)


def _mean_ci(values, confidence):
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2 or not np.isfinite(values).all():
        return mean, np.nan, np.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1)
    half /= np.sqrt(len(values))
    return mean, mean - half, mean + half


class FewShotResults:
    """Per-task errors of a few-shot evaluation, with means and confidence intervals.

    Returned by :func:`evaluate_few_shot`.  The interval of a mean is Student's
    t interval over tasks, which treats tasks as independent draws.

    Parameters
    ----------
    model_name : str or None
        Name of the meta-learned model's rows.
    adapt_steps : ndarray of int
        Numbers of adaptation steps evaluated.
    model_errors : ndarray of shape (n_steps, n_tasks) or None
        The model's error on every task after each number of steps.
    baseline_errors : dict of str to ndarray of shape (n_tasks,)
        Every baseline's error on every task.
    metric : str
        Name of the per-task error.
    confidence : float
        Level of the intervals.
    """

    def __init__(self, model_name, adapt_steps, model_errors, baseline_errors, metric, confidence):
        self.model_name = model_name
        self.adapt_steps = np.asarray(adapt_steps, dtype=int)
        self.model_errors = model_errors
        self.baseline_errors = baseline_errors
        self.metric = metric
        self.confidence = confidence
        first = (
            model_errors[0] if model_errors is not None else next(iter(baseline_errors.values()))
        )
        self.n_tasks = len(first)

    def errors(self, method, adapt_steps=None):
        """Return the per-task errors of one method.

        Parameters
        ----------
        method : str
            The model's name or a baseline's.
        adapt_steps : int or None, default=None
            For the model, the number of adaptation steps (None: the largest).

        Returns
        -------
        errors : ndarray of shape (n_tasks,)
            The error on every task.
        """
        if method == self.model_name and self.model_errors is not None:
            if adapt_steps is None:
                adapt_steps = self.adapt_steps[-1]
            where = np.flatnonzero(self.adapt_steps == adapt_steps)
            if not len(where):
                raise KeyError(f"adapt_steps={adapt_steps} was not evaluated: {self.adapt_steps}.")
            return self.model_errors[where[0]]
        if method not in self.baseline_errors:
            known = ([self.model_name] if self.model_errors is not None else []) + list(
                self.baseline_errors
            )
            raise KeyError(f"Unknown method {method!r}; evaluated: {known}.")
        return self.baseline_errors[method]

    def summary(self):
        """One row per method (and number of steps): mean error and confidence interval.

        Returns
        -------
        rows : list of dict
            Keys ``method``, ``adapt_steps`` (None for baselines), ``mean``,
            ``ci_low``, ``ci_high`` and ``n_tasks``.
        """
        rows = []
        if self.model_errors is not None:
            for steps, errors in zip(self.adapt_steps, self.model_errors):
                rows.append(self._row(self.model_name, int(steps), errors))
        for name, errors in self.baseline_errors.items():
            rows.append(self._row(name, None, errors))
        return rows

    def _row(self, name, steps, errors):
        mean, low, high = _mean_ci(errors, self.confidence)
        return dict(
            method=name, adapt_steps=steps, mean=mean, ci_low=low, ci_high=high, n_tasks=len(errors)
        )

    def best_baseline(self):
        """Return the name of the baseline with the lowest mean error.

        Returns
        -------
        name : str or None
            The baseline's name, None when there are no baselines.
        """
        if not self.baseline_errors:
            return None
        return min(self.baseline_errors, key=lambda name: self.baseline_errors[name].mean())

    def compare(self, method, other, adapt_steps=None):
        """Paired difference of mean errors, ``method - other``, over the same tasks.

        Parameters
        ----------
        method, other : str
            Names of two evaluated methods.
        adapt_steps : int or None, default=None
            Steps of the model's row when one of them is the model (None: the
            largest number evaluated).

        Returns
        -------
        difference : dict
            ``mean``, ``ci_low``, ``ci_high`` of the per-task difference (negative:
            ``method`` has the lower error) and ``ratio`` of the two mean errors.
        """
        a = self.errors(method, adapt_steps)
        b = self.errors(other, adapt_steps)
        mean, low, high = _mean_ci(a - b, self.confidence)
        return dict(mean=mean, ci_low=low, ci_high=high, ratio=float(a.mean() / b.mean()))

    def to_frame(self):
        """Return the summary as a pandas DataFrame (needs pandas).

        Returns
        -------
        frame : pandas.DataFrame
            One row per method and number of steps.
        """
        import pandas as pd

        return pd.DataFrame(self.summary())

    def to_string(self, digits=4):
        """Return the summary as a plain-text table.

        Parameters
        ----------
        digits : int, default=4
            Decimals of the errors.

        Returns
        -------
        table : str
            The table.
        """
        pct = f"{self.confidence:.0%} CI"
        rows = self.summary()
        width = max([len("method")] + [len(str(row["method"])) for row in rows])
        lines = [f"{'method':<{width}s} {'steps':>5s} {self.metric:>10s}   {pct}"]
        for row in rows:
            steps = "-" if row["adapt_steps"] is None else str(row["adapt_steps"])
            lines.append(
                f"{row['method']:<{width}s} {steps:>5s} {row['mean']:>10.{digits}f}   "
                f"[{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
            )
        return "\n".join(lines)

    def __str__(self):
        return self.to_string()

    def __repr__(self):
        return (
            f"<FewShotResults: {self.n_tasks} tasks, metric={self.metric!r}, "
            f"{len(self.summary())} rows>"
        )


def _baseline_items(baselines):
    if baselines is None:
        return []
    if isinstance(baselines, Mapping):
        return list(baselines.items())
    items, seen = [], {}
    for est in baselines:
        name = type(est).__name__
        seen[name] = seen.get(name, 0) + 1
        items.append((name if seen[name] == 1 else f"{name} #{seen[name]}", est))
    return items


def _reptile_predictions(model, tasks, steps):
    """Query predictions of a meta-fitted model after each number of steps, per task."""
    net, device = model._net(), model._device()
    loss = LOSSES[model._loss]
    lr = model.inner_lr if model.adapt_lr is None else model.adapt_lr
    scaling = (model.x_mean_, model.x_scale_, model.y_mean_, model.y_scale_)
    theta = torch.as_tensor(model.meta_params_, dtype=torch.float32, device=device)
    two_d = lambda y: y[:, None] if y.ndim == 1 else y  # noqa: E731
    preds = {s: [] for s in steps}
    for start in range(0, len(tasks), BLOCK_TASKS):
        block = tasks[start : start + BLOCK_TASKS]
        packed = PackedTasks(
            [(Xs, two_d(ys)) for Xs, ys, _, _ in block],
            [(Xq, None) for _, _, Xq, _ in block],
            scaling,
            device,
        )
        with fast_cpu_math():
            curve = adaptation_curve(net, loss, theta, packed, steps, model.inner_optimizer, lr)
        for s, scaled in curve.items():
            out = scaled * model.y_scale_ + model.y_mean_
            for t, (_, _, Xq, yq) in enumerate(block):
                p = out[t, : len(Xq)]
                preds[s].append(p[:, 0] if yq.ndim == 1 else p)
    return preds


def evaluate_few_shot(
    model,
    tasks,
    *,
    n_support=None,
    adapt_steps=DEFAULT_STEPS,
    baselines=None,
    metric="mse",
    confidence=0.95,
    random_state=None,
):
    """Score a meta-learned model and baselines on the query points of held-out tasks.

    For every task the model adapts on the support points, with each number of
    steps in ``adapt_steps``, and every baseline is fitted (a fresh clone per
    task) on the same support points; all predict the task's query points.

    Parameters
    ----------
    model : ReptileRegressor or None
        The model to evaluate, usually meta-fitted.  Its own parameters
        (``adapt_lr``, ``inner_optimizer``) give the adaptation; ``adapt_steps``
        here overrides its ``adapt_steps``.  A model that was not meta-fitted is
        fitted from scratch on every task.  None evaluates the baselines only.
    tasks : GroupTaskSampler or sequence
        Held-out tasks: ``(X_support, y_support, X_query, y_query)`` tuples, or,
        with ``n_support``, ``(X, y)`` pairs or a
        :class:`~skreptile.GroupTaskSampler` to split at random.
    n_support : int or None, default=None
        Support points per task when ``tasks`` are not split yet.
    adapt_steps : int or sequence of int, default=(0, 1, 2, 4, 8, 16, 32)
        Numbers of adaptation steps at which to score the model.
    baselines : dict of str to estimator, list of estimators or None, default=None
        Any scikit-learn regressors (for example ``Ridge()`` or
        ``GaussianProcessRegressor()``), fitted on every task's support points.
        A list names them by class.  Wrap an estimator already trained on other
        data in ``sklearn.frozen.FrozenEstimator`` to score it unchanged.
    metric : {"mse", "rmse", "mae"} or callable, default="mse"
        Error of one task, computed on its query points; a callable
        ``metric(y_true, y_pred) -> float``.  Lower must be better.
    confidence : float, default=0.95
        Level of the confidence intervals.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the support/query split when ``n_support`` is given.

    Returns
    -------
    results : FewShotResults
        Per-task errors; ``str(results)`` is a table of means with intervals,
        ``results.compare(a, b)`` gives a paired difference.

    See Also
    --------
    split_support_query : The random split used with ``n_support``.
    plot_few_shot : Error against adaptation steps, baselines as lines.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from skreptile import ReptileRegressor, SineTaskSampler
    >>> from skreptile.evaluation import evaluate_few_shot
    >>> model = ReptileRegressor(n_meta_iter=200, random_state=0)
    >>> model = model.meta_fit(SineTaskSampler(random_state=0))
    >>> X, y = SineTaskSampler().sample_batch(np.random.default_rng(1), 20)
    >>> results = evaluate_few_shot(
    ...     model, list(zip(X, y)), n_support=10, adapt_steps=[0, 8],
    ...     baselines={"Ridge": Ridge()}, random_state=0)
    >>> [row["method"] for row in results.summary()]
    ['ReptileRegressor', 'ReptileRegressor', 'Ridge']
    """
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    if callable(metric):
        metric_fn, metric_name = metric, getattr(metric, "__name__", "error")
    elif metric in METRICS:
        metric_fn, metric_name = METRICS[metric], metric
    else:
        raise ValueError(f"metric must be one of {sorted(METRICS)} or a callable, got {metric!r}.")
    if n_support is not None:
        tasks = split_support_query(tasks, n_support, random_state=random_state)
    tasks = _check_split(tasks)
    items = _baseline_items(baselines)
    if model is None and not items:
        raise ValueError("Nothing to evaluate: give a model, baselines, or both.")

    model_errors = None
    steps = np.atleast_1d(np.asarray(adapt_steps))
    if model is not None:
        if not isinstance(model, BaseReptile):
            raise TypeError(
                f"model must be a skreptile estimator, got {type(model).__name__}; "
                "pass other estimators as baselines."
            )
        if steps.size == 0 or steps.dtype.kind not in "iu" or (steps < 0).any():
            raise ValueError(f"adapt_steps must be non-negative integers, got {adapt_steps!r}.")
        steps = [int(s) for s in steps]
        if model._is_meta_fitted():
            n_features = tasks[0][0].shape[1]
            if n_features != model.n_features_meta_:
                raise ValueError(
                    f"The tasks have {n_features} features, but the model was meta-fitted on "
                    f"{model.n_features_meta_}."
                )
            preds = _reptile_predictions(model, tasks, steps)
        else:
            preds = {
                s: [
                    clone(model).set_params(adapt_steps=s).fit(Xs, ys).predict(Xq)
                    for Xs, ys, Xq, _ in tasks
                ]
                for s in steps
            }
        model_errors = np.array(
            [[_score(metric_fn, t[3], p) for t, p in zip(tasks, preds[s])] for s in steps]
        )
        diverged = ~np.isfinite(model_errors)
        if diverged.any():
            first = int(np.argmax(diverged.any(axis=1)))
            warnings.warn(
                f"Adaptation diverged on {int(diverged[first].sum())} of {len(tasks)} tasks "
                f"after {steps[first]} steps (and on {int(diverged[-1].sum())} after "
                f"{steps[-1]}); their error counts as infinite. The adaptation step size is "
                "likely too large for this model.",
                RuntimeWarning,
                stacklevel=2,
            )
    baseline_errors = {}
    for name, est in items:
        baseline_errors[name] = np.array(
            [metric_fn(yq, clone(est).fit(Xs, ys).predict(Xq)) for Xs, ys, Xq, yq in tasks]
        )
    return FewShotResults(
        type(model).__name__ if model is not None else None,
        steps if model is not None else [],
        model_errors,
        baseline_errors,
        metric_name,
        confidence,
    )


def plot_few_shot(results, ax=None, *, baselines=True, color="C0"):
    """Plot the model's error against adaptation steps, baselines as horizontal lines.

    Parameters
    ----------
    results : FewShotResults
        From :func:`evaluate_few_shot`.
    ax : matplotlib Axes or None, default=None
        Where to draw; None uses the current axes.
    baselines : bool, default=True
        Draw every baseline's mean as a dashed line, its interval as a band.
    color : str, default="C0"
        Colour of the model's curve.

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from skreptile import ReptileRegressor, SineTaskSampler
    >>> from skreptile.evaluation import evaluate_few_shot, plot_few_shot
    >>> model = ReptileRegressor(n_meta_iter=100, random_state=0)
    >>> model = model.meta_fit(SineTaskSampler(random_state=0))
    >>> X, y = SineTaskSampler().sample_batch(np.random.default_rng(1), 10)
    >>> results = evaluate_few_shot(model, list(zip(X, y)), n_support=5,
    ...                             baselines=[Ridge()], random_state=0)
    >>> ax = plot_few_shot(results)
    >>> ax.get_xlabel()
    'adaptation steps'
    """
    import matplotlib.pyplot as plt

    if ax is None:
        ax = plt.gca()
    pct = f"{results.confidence:.0%}"
    if results.model_errors is not None:
        rows = [
            results._row(results.model_name, s, e)
            for s, e in zip(results.adapt_steps, results.model_errors)
        ]
        mean = np.array([r["mean"] for r in rows])
        low = np.array([r["ci_low"] for r in rows])
        high = np.array([r["ci_high"] for r in rows])
        ax.plot(results.adapt_steps, mean, "o-", color=color, label=results.model_name)
        ax.fill_between(results.adapt_steps, low, high, color=color, alpha=0.2, lw=0)
    if baselines:
        for i, name in enumerate(results.baseline_errors):
            row = results._row(name, None, results.baseline_errors[name])
            c = f"C{(i + 1) % 10}"
            ax.axhline(row["mean"], color=c, ls="--", label=name)
            if np.isfinite(row["ci_low"]):
                ax.axhspan(row["ci_low"], row["ci_high"], color=c, alpha=0.12, lw=0)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel(f"{results.metric} on query points (mean, {pct} CI)")
    ax.legend(fontsize=8)
    return ax
