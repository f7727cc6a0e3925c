"""The results of a few-shot evaluation: per-task scores, means with confidence intervals, plots."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


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
