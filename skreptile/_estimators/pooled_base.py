"""The pooled model beside the network (``base_estimator``): fitted once, cross-fitted for meta-training.

A data scientist's first model of a grouped table is a pooled one (every
row, the group ignored) plus the new group's offset.  With a base model the
network meta-learns and adapts the *correction* of the pooled model per group:
``predict(X) = base.predict(X) + offset + network(X)``; the network's weight
in that sum is chosen per support size on the held-out groups (a weight of 0
is the statistician's mixed model alone, see :mod:`.base_choice`).

The tasks the network meta-trains on must not see fits of their own rows: a
pooled model fitted on a group predicts that group better than it will predict
a new one, and a correction learned from such leaked fits would be too small.
So meta-training targets are the residuals of *out-of-group* predictions:
``GroupKFold`` cross-fitting over the meta-training groups (``N_FOLDS``
folds).  The held-out validation groups use the model fitted on every
meta-training row, which never saw them.  Once every choice made on them is
made, the model is refitted on every row, the held-out groups included, for
``fit``, ``predict`` and ``few_shot_predict`` on new groups: more groups make
a better pooled model (the statistician's gradient-boosted model plus BLUP
offset fitted on 80% of the training groups had a 2% higher error on
kc_house's new groups, 4% on txhousing's).

``"auto"`` cross-fits each candidate of ``CANDIDATES`` and scores it on the
groups each fold held out as a statistician would use it: the expected error
on a new group of the pooled prediction plus the BLUP of the group's offset
from the monitored number of support rows (:func:`_expected_error`), against
the same for the overall mean (no base).  The better candidate is considered
only when its error is below ``MIN_GAIN`` times that of the mean.  That score
judges the pooled model as a statistician would use it, not what a network
makes of its residuals (on daily temperature curves the network on a
gradient-boosted model's residuals lost to the network alone by 40%), so with
``"auto"`` the network meta-trains on the targets themselves and its adapted
prediction is *averaged* with the statistician's model
(``base_mode_="average"``), at weights chosen per support size on the
held-out groups.  Beside the pooled candidate, "auto" considers a linear mixed
model with random slopes (:mod:`.statistician`); the one whose average scores
better on the held-out groups is kept, and none where the network gets weight 1
at every size.  Whenever nothing is held out (infinite samplers, too few
groups, ``validation_fraction=None``) or the targets have several outputs,
"auto" gives no base model, so the sine demo and generated tasks are
unchanged.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..tasks._base import sampler_kind
from ..tasks._validation import host_array
from .adaptation import nearest_row
from .base_choice import means
from .statistician import (
    LINEAR_MIXED,
    group_offset,
    group_prediction,
    group_state,
    intercept_variances,
    linear_mixed_model,
    network_on_held_out,
    offsets,
    weights_on_held_out,
)

N_FOLDS = 5
# A pooled candidate of "auto" must beat the support mean by this factor, in its cross-fitted
# error on groups it never saw, to be considered.
MIN_GAIN = 0.95
CANDIDATES = {
    "ridge": lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
    "hist_gradient_boosting": lambda: HistGradientBoostingRegressor(random_state=0),
}


class PooledBase:
    """What ``meta_fit`` learned about the base model: the fitted model (or None), the scores
    that chose it, the variances of the groups' offsets from it (``{"between", "within"}``)
    and whether the network meta-trains on its residuals (``mode="residuals"``) or on the
    targets, to be averaged with it (``"average"``, see :mod:`.base_choice`)."""

    def __init__(
        self, model, name, scores, variances=None, held_out=None, mode="residuals", partners=None
    ):
        self.model, self.name, self.scores, self.variances = model, name, scores, variances
        self.held_out = held_out  # the held-out splits by support size, in the targets' units
        self.mode = mode
        # "average": every statistician's model to weigh, {name: (model, variances)}.
        self.partners = partners or {name: (model, variances)}

    def attributes(self):
        """The estimator's learned ``base_estimator_``, ``base_scores_``, ``random_intercept_``
        and ``base_mode_``."""
        return {
            "base_estimator_": self.model,
            "base_scores_": self.scores,
            "random_intercept_": self.variances,
            "base_mode_": self.mode,
        }


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
    splits (:func:`skreptile._training.selftune.hold_out`).  With an explicit
    base model the sampler's targets become out-of-group residuals and every
    held-out task's targets residuals of the model fitted on all
    meta-training rows; with ``"auto"`` (a network averaged with the base
    model) the tasks are left as they are.
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
        partners = {}
        if scores[best] < MIN_GAIN * scores["support mean"]:
            model = _fit(_candidates(spec)[best], X, y_flat, best)
            partners[best] = (model, intercept_variances(y_flat - cross[best], groups))
        mixed = linear_mixed_model(X, y_flat, groups)
        if mixed is not None:
            partners[LINEAR_MIXED] = (mixed, None)
        if not partners:
            return sampler, by_size, validation_tasks, PooledBase(None, None, scores)
        name, (model, variances) = next(iter(partners.items()))
        held_out = by_size if validation_tasks is None else {None: validation_tasks}
        base = PooledBase(model, name, scores, variances, held_out, "average", partners)
        return sampler, by_size, validation_tasks, base
    name, predictions = next(iter(cross.items()))
    model = _fit(clone(spec), X, y_flat, name)
    variances = intercept_variances(y_flat - predictions, groups)
    held_out = by_size if validation_tasks is None else {None: validation_tasks}
    sampler = _with_targets(sampler, (y_flat - predictions).reshape(y.shape))
    if by_size is not None:
        by_size = {k: residual_splits(model, variances, v) for k, v in by_size.items()}
    validation_tasks = residual_splits(model, variances, validation_tasks)
    return sampler, by_size, validation_tasks, PooledBase(model, name, scores, variances, held_out)


class PooledBaseMixin:
    """The regressor's hooks for a base model: ``fit``, ``predict`` and ``few_shot_predict``
    average the network with the base model plus the group's offset (:mod:`.base_choice`);
    a network meta-trained on the base model's residuals adapts to the residuals less the
    offset."""

    def _base_model(self):
        """The fitted pooled model beside the network, or None."""
        return self.__dict__.get("base_estimator_")

    def _on_residuals(self):
        """Whether the network was meta-trained on the base model's residuals."""
        return self.__dict__.get("base_mode_", "residuals") == "residuals"

    def _pooled_base(self, sampler, by_size, validation_tasks):
        spec = self.base_estimator
        if isinstance(spec, str) and self.warm_start and self._is_meta_fitted():
            # A warm start continues what meta_fit settled on, base model or none.
            spec = spec if self._base_model() is not None else None
        return pooled_base(spec, sampler, by_size, validation_tasks)

    def _settle_base(self, task_sampler, validation_tasks, result, continued):
        """Choose the network's weight beside the base model on the held-out groups
        (:func:`weights_on_held_out`) and refit the base model on every row; with
        ``"auto"``, choose the statistician's model too, and drop it where the network gets
        weight 1 at every support size."""
        base = result.base
        if base is None or base.model is None:
            return
        name = base.name
        if base.held_out:
            nested = base.mode == "residuals"
            scores = dict(self.base_scores_ or {})
            chosen = {}
            network = network_on_held_out(self, base.held_out)
            for partner, (model, variances) in base.partners.items():
                weights, errors, own = weights_on_held_out(network, model, variances, nested)
                chosen[partner] = (weights, errors)
                if not nested:
                    scores["held-out error, network"] = means(own)
                    scores[f"held-out error, network averaged with {partner}"] = means(errors)
            # The statistician's model with the lower held-out error, over the support sizes.
            name = min(
                chosen, key=lambda p: np.mean([np.log(e.mean()) for e in chosen[p][1].values()])
            )
            weights = chosen[name][0]
            self.network_weights_ = weights
            if not nested:
                self.base_scores_ = scores
                if all(w == 1.0 for w in weights.values()):
                    # The network alone, bit for bit: nothing of the base model is used.
                    for attr in ("base_estimator_", "random_intercept_", "base_mode_"):
                        del self.__dict__[attr]
                    del self.network_weights_
                    return
            self.base_estimator_, self.random_intercept_ = base.partners[name]
        if validation_tasks is None and base.held_out:
            # Decisions made, the held-out groups' rows join the base model's fit and the
            # estimate of its offsets' variances, as the statistician's model uses every
            # group (with nothing held out, both already saw every row).
            X, y, groups = rows_of(task_sampler)
            y = y.reshape(len(y))
            if name == LINEAR_MIXED:
                self.base_estimator_ = linear_mixed_model(X, y, groups)
                return
            spec = self.base_estimator
            model = _candidates(spec)[name] if isinstance(spec, str) else clone(spec)
            residuals = y - _cross_fitted(model, X, y, groups, _n_folds(groups), name)
            self.random_intercept_ = intercept_variances(residuals, groups)
            self.base_estimator_ = _fit(model, X, y, name)

    def _group_offset(self, residuals):
        """The BLUP of a group's offset from its support residuals (0 without a base model)."""
        if self._base_model() is None:
            return 0.0
        return group_offset(self.__dict__.get("random_intercept_"), residuals)

    def _network_weight(self, n_support):
        """The network's weight beside the base model for ``n_support`` rows (see
        ``network_weights_``): that of the held-out support size nearest them."""
        weights = self.__dict__.get("network_weights_")
        if not weights:
            return 1.0
        sizes = np.array(sorted(weights), dtype=float)
        return float(weights[int(sizes[nearest_row(sizes, n_support)])])

    def _support_targets(self, X, Y):
        """``(targets the network adapts to, the group's offset, the network's weight)`` of
        support rows ``X``, ``Y`` (encoded, in the targets' units)."""
        model = self._base_model()
        if model is None:
            return Y, 0.0, 1.0
        weight = self._network_weight(len(Y))
        if not self._on_residuals():
            state = group_state(model, self.__dict__.get("random_intercept_"), X, Y)
            return Y, state, weight
        residuals = Y - offsets(model, X)
        level = self._group_offset(residuals)
        return residuals - level, level, weight

    def _less_base(self, tasks):
        if self._base_model() is None:
            return tasks, [(0.0, 1.0)] * len(tasks)
        adapted = [self._support_targets(X, Y) for X, Y in zip(tasks.X_support, tasks.Y_support)]
        tasks.Y_support = [target for target, _, _ in adapted]
        return tasks, [(level, weight) for _, level, weight in adapted]

    def _plus_base(self, pred, X, shift):
        model = self._base_model()
        if model is None:
            return pred
        state, weight = shift
        if self._on_residuals():  # the network's prediction is its correction
            base = offsets(model, X) + state
            return (base[:, 0] if pred.ndim == 1 else base) + weight * pred
        base = group_prediction(model, X, state)
        base = base if pred.ndim == 1 else base[:, None]
        return base + weight * (pred - base)
