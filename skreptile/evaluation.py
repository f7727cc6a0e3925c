"""Honest few-shot evaluation on held-out tasks, against ordinary baselines.

The question a user of meta-learning has to answer is not "is the error low"
but "is it lower than what I would have done without it".  The functions here
answer it on held-out tasks: every task's points are split into a few support
points, on which the meta-learned model adapts and every baseline is fitted,
and query points, on which all are scored.  Means come with confidence
intervals over tasks, and paired differences with theirs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.base import clone, is_classifier
from sklearn.pipeline import Pipeline

from ._base import BaseReptile
from .tasks._split import check_split, split_support_query

__all__ = ["FewShotResults", "evaluate_few_shot", "plot_few_shot", "split_support_query"]

DEFAULT_STEPS = (0, 1, 2, 4, 8, 16, 32)


class _ClassPrediction:
    """A classifier's prediction for one task: its classes and their probabilities."""

    def __init__(self, classes, proba):
        self.classes, self.proba = np.asarray(classes), np.asarray(proba)

    def labels(self):
        return self.classes[np.argmax(self.proba, axis=1)]


def _mse(y_true, y_pred):
    return float(np.mean((y_true - y_pred) ** 2))


def _rmse(y_true, y_pred):
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def _mae(y_true, y_pred):
    return float(np.mean(np.abs(y_true - y_pred)))


def _accuracy(y_true, pred):
    return float(np.mean(pred.labels() == y_true))


def _log_loss(y_true, pred):
    index = np.searchsorted(pred.classes, y_true).clip(0, len(pred.classes) - 1)
    p = np.where(pred.classes[index] == y_true, pred.proba[np.arange(len(y_true)), index], 0.0)
    return float(-np.mean(np.log(np.clip(p, 1e-15, 1.0))))


# name: (function, greater is better)
REGRESSION_METRICS = {"mse": (_mse, False), "rmse": (_rmse, False), "mae": (_mae, False)}
CLASSIFICATION_METRICS = {"accuracy": (_accuracy, True), "log_loss": (_log_loss, False)}


def _score(metric_fn, y_true, y_pred, worst):
    values = y_pred.proba if isinstance(y_pred, _ClassPrediction) else y_pred
    if not np.isfinite(values).all():
        return worst
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
    greater_is_better : bool, default=False
        Whether a higher value of the metric is better (accuracy).
    """

    def __init__(
        self,
        model_name,
        adapt_steps,
        model_errors,
        baseline_errors,
        metric,
        confidence,
        greater_is_better=False,
    ):
        self.greater_is_better = greater_is_better
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

    def errors(self, method: str, adapt_steps: int | None = None) -> np.ndarray:
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

    def summary(self) -> list[dict[str, Any]]:
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

    def best_baseline(self) -> str | None:
        """Return the name of the baseline with the best mean score (lowest error).

        Returns
        -------
        name : str or None
            The baseline's name, None when there are no baselines.
        """
        if not self.baseline_errors:
            return None
        sign = -1.0 if self.greater_is_better else 1.0
        return min(self.baseline_errors, key=lambda name: sign * self.baseline_errors[name].mean())

    def compare(self, method: str, other: str, adapt_steps: int | None = None) -> dict[str, float]:
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

    def to_frame(self) -> Any:
        """Return the summary as a pandas DataFrame (needs pandas).

        Returns
        -------
        frame : pandas.DataFrame
            One row per method and number of steps.
        """
        import pandas as pd

        return pd.DataFrame(self.summary())

    def to_string(self, digits: int = 4) -> str:
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

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
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


def _model_predictions(model, tasks, steps):
    """Query predictions of a meta-fitted model after each number of steps, per task."""
    classifier = is_classifier(model)
    prepared = model._prepare_tasks([t[:3] for t in tasks], with_query_y=False)
    curve = model._adaptation_curve(prepared, steps)
    preds = {}
    for s, scaled in curve.items():
        if classifier:
            preds[s] = [
                _ClassPrediction(c, _softmax(model._decode(out, c, "logits")))
                for out, c in zip(scaled, prepared.info)
            ]
        else:
            preds[s] = [
                model._decode(out, y_1d, "predict") for out, y_1d in zip(scaled, prepared.info)
            ]
    return preds


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _predict(est, X, classifier):
    """What the metric scores: values, or a classifier's classes and probabilities."""
    if classifier:
        return _ClassPrediction(est.classes_, est.predict_proba(X))
    return est.predict(X)


def _unwrap(model):
    """The Reptile estimator and the frozen preprocessing in front of it (or None)."""
    if isinstance(model, Pipeline) and isinstance(model.steps[-1][1], BaseReptile):
        return model.steps[-1][1], (model[:-1] if len(model.steps) > 1 else None)
    if isinstance(model, BaseReptile):
        return model, None
    raise TypeError(
        f"model must be a skreptile estimator or a pipeline ending in one (such as "
        f"meta_fit_pipeline returns), got {type(model).__name__}; pass other estimators "
        "as baselines."
    )


def _metric(metric, classifier):
    table = CLASSIFICATION_METRICS if classifier else REGRESSION_METRICS
    if metric is None:
        metric = "accuracy" if classifier else "mse"
    if callable(metric):
        fn = metric
        if classifier:
            fn = lambda y_true, pred: metric(y_true, pred.labels())  # noqa: E731
        return fn, getattr(metric, "__name__", "error"), False
    if metric in table:
        return table[metric][0], metric, table[metric][1]
    kind = "classifiers" if classifier else "regressors"
    raise ValueError(
        f"metric for {kind} must be one of {sorted(table)} or a callable, got {metric!r}."
    )


def evaluate_few_shot(
    model: Any,
    tasks: Any,
    *,
    n_support: int | None = None,
    adapt_steps: int | Sequence[int] = DEFAULT_STEPS,
    baselines: Mapping[str, Any] | Sequence[Any] | None = None,
    metric: str | Callable[..., float] | None = None,
    confidence: float = 0.95,
    random_state: Any = None,
) -> FewShotResults:
    """Score a meta-learned model and baselines on the query points of held-out tasks.

    For every task the model adapts on the support points, with each number of
    steps in ``adapt_steps``, and every baseline is fitted (a fresh clone per
    task) on the same support points; all predict the task's query points.

    Parameters
    ----------
    model : ReptileRegressor, ReptileClassifier, Pipeline or None
        The model to evaluate, usually meta-fitted, or a pipeline ending in one
        (as :func:`~skreptile.pipeline.meta_fit_pipeline` makes: its frozen
        preprocessing transforms every task's points).  Its own parameters
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
        Any scikit-learn regressors or classifiers, like the model (for example ``Ridge()`` or
        ``GaussianProcessRegressor()``), fitted on every task's support points.
        A list names them by class.  Wrap an estimator already trained on other
        data in ``sklearn.frozen.FrozenEstimator`` to score it unchanged.
    metric : str, callable or None, default=None
        Score of one task, computed on its query points: for regressors
        "mse" (the default), "rmse" or "mae"; for classifiers "accuracy" (the
        default, higher is better) or "log_loss".  A callable
        ``metric(y_true, y_pred) -> float`` (predicted labels for classifiers)
        is an error: lower must be better.
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
    items = _baseline_items(baselines)
    if model is None and not items:
        raise ValueError("Nothing to evaluate: give a model, baselines, or both.")
    reptile, preprocessing = (None, None) if model is None else _unwrap(model)
    classifier = is_classifier(reptile if reptile is not None else items[0][1])
    for name, est in items:
        if is_classifier(est) != classifier:
            raise ValueError(
                f"Baseline {name!r} is a {'classifier' if is_classifier(est) else 'regressor'}, "
                f"but the evaluation scores {'classifiers' if classifier else 'regressors'}."
            )
    metric_fn, metric_name, greater = _metric(metric, classifier)
    worst = -np.inf if greater else np.inf
    if n_support is not None:
        tasks = split_support_query(tasks, n_support, random_state=random_state)
    tasks = check_split(tasks, numeric_y=not classifier)
    if preprocessing is not None:
        # The pipeline's frozen preprocessing, applied as its fit and predict would.
        tasks = [
            (preprocessing.transform(Xs), ys, preprocessing.transform(Xq), yq)
            for Xs, ys, Xq, yq in tasks
        ]

    model_errors = None
    steps: list[int] = []
    if reptile is not None:
        asked = np.atleast_1d(np.asarray(adapt_steps))
        if asked.size == 0 or asked.dtype.kind not in "iu" or (asked < 0).any():
            raise ValueError(f"adapt_steps must be non-negative integers, got {adapt_steps!r}.")
        steps = [int(s) for s in asked]
        if reptile._is_meta_fitted():
            reptile._check_meta_config()
            preds = _model_predictions(reptile, tasks, steps)
        else:
            preds = {
                s: [
                    _predict(clone(reptile).set_params(adapt_steps=s).fit(Xs, ys), Xq, classifier)
                    for Xs, ys, Xq, _ in tasks
                ]
                for s in steps
            }
        model_errors = np.array(
            [[_score(metric_fn, t[3], p, worst) for t, p in zip(tasks, preds[s])] for s in steps]
        )
        diverged = ~np.isfinite(model_errors)
        if diverged.any():
            first = int(np.argmax(diverged.any(axis=1)))
            warnings.warn(
                f"Adaptation diverged on {int(diverged[first].sum())} of {len(tasks)} tasks "
                f"after {steps[first]} steps (and on {int(diverged[-1].sum())} after "
                f"{steps[-1]}); their score counts as the worst possible. The adaptation step "
                "size is likely too large for this model.",
                RuntimeWarning,
                stacklevel=2,
            )
    baseline_errors = {}
    for name, est in items:
        baseline_errors[name] = np.array(
            [
                metric_fn(yq, _predict(clone(est).fit(Xs, ys), Xq, classifier))
                for Xs, ys, Xq, yq in tasks
            ]
        )
    return FewShotResults(
        type(reptile).__name__ if reptile is not None else None,
        steps,
        model_errors,
        baseline_errors,
        metric_name,
        confidence,
        greater,
    )


def plot_few_shot(
    results: FewShotResults, ax: Any = None, *, baselines: bool = True, color: str = "C0"
) -> Any:
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
