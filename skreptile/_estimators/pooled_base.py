"""The pooled model under the network (``base_estimator``): fitted once, cross-fitted for meta-training.

A data scientist's first model of a grouped table is a pooled one (every
row, the group ignored) plus the new group's offset.  With a base model the
network meta-learns and adapts the *correction* of the pooled model per group:
``predict(X) = base.predict(X) + network(X)``.

The tasks the network meta-trains on must not see fits of their own rows: a
pooled model fitted on a group predicts that group better than it will predict
a new one, and a correction learned from such leaked fits would be too small.  So meta-training targets are the
residuals of *out-of-group* predictions: ``GroupKFold`` cross-fitting over the
meta-training groups (``N_FOLDS`` folds).  The held-out validation groups
use the model fitted on every meta-training row, which never saw them.  Once
every choice made on them is made, the model is refitted on every row, the
held-out groups included, for ``fit``, ``predict`` and ``few_shot_predict`` on
new groups: more groups make a better pooled model (the statistician's
gradient-boosted model plus BLUP offset fitted on 80% of the training groups
had a 2% higher error on kc_house's new groups, 4% on txhousing's).

``"auto"`` cross-fits each candidate of ``CANDIDATES`` and scores it on the
groups each fold held out as a statistician would use it: the expected error
on a new group of the pooled prediction plus the BLUP of the group's offset
from the monitored number of support rows (:func:`_expected_error`), against
the same for the overall mean (no base).  A candidate is used only when its
error is below ``MIN_GAIN`` times that of the mean.  That score judges the
pooled model as a statistician would use it, not what the network makes of
its residuals (on daily temperature curves the network on a gradient-boosted
model's residuals lost to the network alone by 40%), so the network is then
meta-trained again without the base model, from the same seed and on the same
held-out groups, and the base model is kept only if the network on it scores
better there (:func:`base_pays`).  Whenever nothing is held out (infinite
samplers, too few groups, ``validation_fraction=None``) or the targets have
several outputs, "auto" gives no base model, so the sine demo and generated
tasks are unchanged.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .._engine.random_effects import blup_intercept, intercept_variance_components
from ..tasks._base import sampler_kind
from ..tasks._validation import host_array
from .adaptation import nearest_row
from .learned_state import adopt_meta_state

N_FOLDS = 5
# What is more complex must beat what is simpler by this factor on the held-out groups to be
# used: a base model the support mean, the network's correction the base model and offset alone.
MIN_GAIN = 0.95
CANDIDATES = {
    "ridge": lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
    "hist_gradient_boosting": lambda: HistGradientBoostingRegressor(random_state=0),
}


class PooledBase:
    """What ``meta_fit`` learned about the base model: the fitted model (or None), the scores
    that chose it, and the variances of the groups' offsets from it (``{"between", "within"}``)."""

    def __init__(self, model, name, scores, variances=None, held_out=None):
        self.model, self.name, self.scores, self.variances = model, name, scores, variances
        self.held_out = held_out  # the held-out splits by support size, in the targets' units

    def attributes(self):
        """The estimator's learned ``base_estimator_``, ``base_scores_`` and ``random_intercept_``."""
        return {
            "base_estimator_": self.model,
            "base_scores_": self.scores,
            "random_intercept_": self.variances,
        }


def intercept_variances(residuals, groups):
    """``{"between": tau2, "within": sigma2}`` of a random intercept (ANOVA moments,
    :func:`skreptile._engine.random_effects.intercept_variance_components`)."""
    between, within = intercept_variance_components(residuals, groups)
    return {"between": float(between), "within": float(within)}


def group_offset(variances, support_residuals):
    """The BLUP of a new group's offset from its support residuals: their mean, shrunk."""
    if variances is None:
        return 0.0
    r = np.ravel(support_residuals)
    return float(blup_intercept(r, variances["between"], variances["within"])) if len(r) else 0.0


def rows_of(sampler):
    """``(X, y, group index of every row)`` of a finite grouped sampler, else None."""
    if hasattr(sampler, "_rows"):
        return sampler._rows()
    if sampler_kind(sampler) != "sequence" or len(sampler) == 0:
        return None
    try:
        X = np.concatenate([np.asarray(host_array(t[0]), dtype=np.float64) for t in sampler])
        y = np.concatenate([np.asarray(host_array(t[1]), dtype=np.float64) for t in sampler])
    except (TypeError, ValueError, IndexError, RuntimeError):
        return None  # malformed tasks: meta_fit's checks name the task at fault
    if X.ndim != 2 or len(y) != len(X) or not (np.isfinite(X).all() and np.isfinite(y).all()):
        return None
    return X, y, np.repeat(np.arange(len(sampler)), [len(t[0]) for t in sampler])


def _with_targets(sampler, y):
    if hasattr(sampler, "_with_targets"):
        return sampler._with_targets(y)
    bounds = np.cumsum([0] + [len(t[0]) for t in sampler])
    return [(t[0], y[a:b]) for t, a, b in zip(sampler, bounds[:-1], bounds[1:])]


def offsets(model, X):
    """The base model's predictions as a column ``(n_samples, 1)`` (zeros without a model)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    if model is None or len(X) == 0:
        return np.zeros((len(X), 1))
    return np.asarray(model.predict(X), dtype=np.float64).reshape(len(X), 1)


def _residual_split(model, variances, split):
    Xs, ys, Xq, yq = split
    ys, yq = np.asarray(ys, dtype=np.float64), np.asarray(yq, dtype=np.float64)
    ys = ys - offsets(model, Xs).reshape(ys.shape)
    level = group_offset(variances, ys)
    return Xs, ys - level, Xq, yq - offsets(model, Xq).reshape(yq.shape) - level


def residual_splits(model, variances, splits):
    """Held-out ``(Xs, ys, Xq, yq)`` tasks with targets less the base model's predictions and
    the group's shrunk offset (:func:`group_offset` of its support residuals)."""
    if model is None or splits is None:
        return splits
    return [_residual_split(model, variances, s) for s in splits]


def _n_folds(groups):
    """Folds of the grouped cross-fitting: ``N_FOLDS``, or one per group when fewer."""
    return min(N_FOLDS, int(groups.max()) + 1)


def _cross_fitted(model, X, y, groups, n_folds, name):
    """Out-of-group predictions of every row (``GroupKFold`` cross-fitting)."""
    try:
        return cross_val_predict(clone(model), X, y, groups=groups, cv=GroupKFold(n_folds))
    except Exception as exc:
        raise _unfittable(name, exc) from exc


def _expected_error(residuals, groups, k):
    """The expected squared error on a new group's rows of a pooled prediction plus the BLUP
    of its offset from ``k`` rows, under the random intercept model of ``residuals``:
    ``within + between * within / (k between + within)``."""
    v = intercept_variances(residuals, groups)
    spread = k * v["between"] + v["within"]
    return v["within"] + (v["between"] * v["within"] / spread if spread > 0 else 0.0)


def _candidates(spec):
    if isinstance(spec, str):  # "auto": every candidate
        return {name: make() for name, make in CANDIDATES.items()}
    return {type(spec).__name__: clone(spec)}


def _fit(model, X, y, name):
    try:
        return model.fit(X, y)
    except Exception as exc:
        raise _unfittable(name, exc) from exc


def _unfittable(name, exc):
    return ValueError(
        f"base_estimator {name} could not be fitted on the meta-training rows "
        f"({type(exc).__name__}: {exc}). Pass another scikit-learn regressor, or "
        "base_estimator=None for none."
    )


def pooled_base(spec, sampler, by_size, validation_tasks):
    """``(sampler, by_size, validation_tasks, PooledBase or None)`` of a ``meta_fit`` run.

    ``spec`` is the estimator's ``base_estimator``; ``by_size`` the held-out
    splits (:func:`skreptile._training.selftune.hold_out`).  With a base model
    the sampler's targets become out-of-group residuals and every held-out
    task's targets residuals of the model fitted on all meta-training rows.
    """
    if spec is None:
        return sampler, by_size, validation_tasks, None
    auto = isinstance(spec, str)
    rows = rows_of(sampler)
    if rows is None:
        if auto or sampler_kind(sampler) == "sequence":  # a bad task: its checks name it
            return sampler, by_size, validation_tasks, None
        raise ValueError(
            "base_estimator needs the rows of a finite grouped table: a GroupTaskSampler or a "
            f"list of (X, y) tasks, not {type(sampler).__name__}. Use base_estimator=None "
            "(or 'auto') for generated tasks."
        )
    X, y, groups = rows
    if y.ndim > 1 and y.shape[1] > 1:
        if auto:
            return sampler, by_size, validation_tasks, None
        raise ValueError(
            f"base_estimator supports one target; these tasks have {y.shape[1]}. Use "
            "base_estimator=None."
        )
    y_flat = y.reshape(len(y))
    scoring = (
        validation_tasks
        if validation_tasks is not None
        else next(iter(by_size.values()), None)
        if by_size
        else None
    )
    if auto and not scoring:
        return sampler, by_size, validation_tasks, None
    n_folds = _n_folds(groups)
    if n_folds < 2:
        raise ValueError("base_estimator needs tasks from at least 2 groups to cross-fit.")
    # Out-of-group predictions: no task meta-trains on a fit of its own rows, and "auto"
    # scores each candidate on groups its fit never saw.
    cross = {
        name: _cross_fitted(model, X, y_flat, groups, n_folds, name)
        for name, model in _candidates(spec).items()
    }
    scores = None
    if auto:
        k = len(scoring[0][0])  # the monitored support size
        scores = {"support mean": _expected_error(y_flat - y_flat.mean(), groups, k)}
        scores.update({name: _expected_error(y_flat - c, groups, k) for name, c in cross.items()})
        best = min(cross, key=scores.__getitem__)
        if scores[best] >= MIN_GAIN * scores["support mean"]:
            return sampler, by_size, validation_tasks, PooledBase(None, None, scores)
        cross = {best: cross[best]}
    name, predictions = next(iter(cross.items()))
    model = _fit(_candidates(spec)[name] if auto else clone(spec), X, y_flat, name)
    residuals = y_flat - predictions
    variances = intercept_variances(residuals, groups)
    sampler = _with_targets(sampler, residuals.reshape(y.shape))
    held_out = by_size if validation_tasks is None else {None: validation_tasks}
    if by_size is not None:
        by_size = {k: residual_splits(model, variances, v) for k, v in by_size.items()}
    validation_tasks = residual_splits(model, variances, validation_tasks)
    return sampler, by_size, validation_tasks, PooledBase(model, name, scores, variances, held_out)


def held_out_errors(est, held_out):
    """``{support size: every held-out task's query MSE}`` of ``est`` adapting as
    ``few_shot_predict`` does."""
    errors = {}
    for size, splits in held_out.items():
        Xs, ys, Xq = ([s[i] for s in splits] for i in range(3))
        errors[size] = _task_errors(est.few_shot_predict(Xs, ys, Xq), splits)
    return errors


def _means(errors):
    return {size: float(e.mean()) for size, e in errors.items()}


def base_pays(with_base, without):
    """Whether the held-out error with the base model is lower: the geometric mean over the
    support sizes of the ratio of mean errors below 1."""
    ratios = [with_base[k].mean() / without[k].mean() for k in with_base]
    return bool(np.mean(np.log(ratios)) < 0.0)


def _task_errors(preds, splits):
    return np.array([np.mean((np.ravel(s[3]) - np.ravel(p)) ** 2) for p, s in zip(preds, splits)])


def _group_means(values, splits):
    """``values`` of the splits averaged per held-out group: the splits of one group hold the
    same rows, so they are not independent evidence."""
    keys = [(len(s[0]) + len(s[2]), round(float(np.sum(s[0]) + np.sum(s[2])), 6)) for s in splits]
    by_group = {}
    for key, value in zip(keys, values):
        by_group.setdefault(key, []).append(value)
    return np.array([np.mean(v) for v in by_group.values()])


def _network_pays(alone, corrected, splits):
    """Whether the network's correction lowers the held-out error clearly: by ``1 - MIN_GAIN``
    of it at least, and by more than two standard errors of the per-group differences (the
    network was early-stopped on these same groups, so a small gain may be luck)."""
    gains = _group_means(alone - corrected, splits)
    if corrected.mean() > MIN_GAIN * alone.mean():
        return False
    if len(gains) < 2:
        return True
    return gains.mean() > 2.0 * gains.std(ddof=1) / np.sqrt(len(gains))


def uncorrected_sizes(est, base):
    """Support sizes at which the network's adapted correction does not clearly beat the pooled
    model and the group's offset alone on the held-out groups (:func:`_network_pays`): there
    the network is left out, so the model nests the mixed model instead of racing it."""
    if base.model is None or not base.held_out:
        return []
    sizes = []
    for size, splits in base.held_out.items():
        Xs, ys, Xq = ([s[i] for s in splits] for i in range(3))
        corrected = _task_errors(est.few_shot_predict(Xs, ys, Xq), splits)
        alone = []
        for X_s, y_s, X_q in zip(Xs, ys, Xq):
            level = group_offset(base.variances, np.ravel(y_s) - offsets(base.model, X_s)[:, 0])
            alone.append(offsets(base.model, X_q)[:, 0] + level)
        if not _network_pays(_task_errors(alone, splits), corrected, splits):
            sizes.append(len(Xs[0]) if size is None else size)
    return sizes


class PooledBaseMixin:
    """The regressor's hooks for a base model: ``fit``, ``predict`` and ``few_shot_predict``
    work on its residuals less the group's offset, and add both back."""

    def _base_model(self):
        """The fitted pooled model under the network, or None."""
        return self.__dict__.get("base_estimator_")

    def _pooled_base(self, sampler, by_size, validation_tasks):
        spec = self.base_estimator
        if isinstance(spec, str) and self.warm_start and self._is_meta_fitted():
            # A warm start continues what meta_fit settled on, base model or none.
            spec = spec if self._base_model() is not None else None
        return pooled_base(spec, sampler, by_size, validation_tasks)

    def _settle_base(self, task_sampler, validation_tasks, result, continued):
        """With ``"auto"``, keep the base model only if the network on it beats the network
        alone on the held-out tasks (:func:`base_pays`); refit a kept one on every row."""
        base = result.base
        if base is None:
            return
        self.uncorrected_sizes_ = uncorrected_sizes(self, base)
        if base.model is None:
            return
        if isinstance(self.base_estimator, str) and base.held_out and not continued:
            # The same run without a base model: same seed, so the same held-out tasks.
            alone = clone(self).set_params(
                base_estimator=None, random_state=result.seed, checkpoint_path=None
            )
            alone.meta_fit(task_sampler, validation_tasks=validation_tasks)
            with_base = held_out_errors(self, base.held_out)
            without = held_out_errors(alone, base.held_out)
            scores = dict(self.base_scores_ or {})
            scores["held-out error, network on the base model"] = _means(with_base)
            scores["held-out error, network alone"] = _means(without)
            if not base_pays(with_base, without):
                adopt_meta_state(self, alone)
                self.base_scores_ = scores
                return
            self.base_scores_ = scores
        if validation_tasks is None and base.held_out:
            # Decisions made, the held-out groups' rows join the base model's fit and the
            # estimate of its offsets' variances, as the statistician's model uses every
            # group (with nothing held out, both already saw every row).
            X, y, groups = rows_of(task_sampler)
            y = y.reshape(len(y))
            model = _candidates(self.base_estimator)[base.name]
            residuals = y - _cross_fitted(model, X, y, groups, _n_folds(groups), base.name)
            self.random_intercept_ = intercept_variances(residuals, groups)
            self.base_estimator_ = _fit(model, X, y, base.name)

    def _group_offset(self, residuals):
        """The BLUP of a group's offset from its support residuals (0 without a base model)."""
        if self._base_model() is None:
            return 0.0
        return group_offset(self.__dict__.get("random_intercept_"), residuals)

    def _corrected(self, n_support):
        """Whether the network's correction is used for ``n_support`` rows (see
        ``uncorrected_sizes_``): the size nearest them decides."""
        off = self.__dict__.get("uncorrected_sizes_")
        if not off:
            return True
        rows = self.__dict__.get("adaptation_by_support_")
        if rows is None:
            return False
        return int(rows[nearest_row(rows[:, 0], n_support), 0]) not in off

    def _less_base(self, tasks):
        model = self._base_model()
        if model is None:
            return tasks, [(0.0, True)] * len(tasks)
        residuals = [Y - offsets(model, X) for X, Y in zip(tasks.X_support, tasks.Y_support)]
        shifts = [(self._group_offset(r), self._corrected(len(r))) for r in residuals]
        tasks.Y_support = [r - level for r, (level, _) in zip(residuals, shifts)]
        return tasks, shifts

    def _plus_base(self, pred, X, shift):
        model = self._base_model()
        if model is None:
            return pred
        level, corrected = shift
        base = offsets(model, X) + level
        base = base[:, 0] if pred.ndim == 1 else base
        return pred + base if corrected else base
