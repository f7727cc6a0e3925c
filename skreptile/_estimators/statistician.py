"""The statistician's model of a new group, beside the network: predictions and held-out weights.

Two kinds of model stand beside the network (``base_estimator_``):

* a pooled scikit-learn regressor plus the group's random intercept: the
  mean support residual shrunk by its BLUP (``random_intercept_`` holds the
  variances between and within groups);
* with ``base_estimator="auto"``, also a linear mixed model with a random
  intercept and random slopes
  (:class:`~skreptile._engine.linear_mixed.LinearMixedEffects`), the
  group's effects by their BLUP.

Either gives a group *state* from its support rows (an offset, or a vector of
effects) and predictions from that state; :func:`weights_on_held_out` scores
the network's average with it on the held-out groups.
"""

from __future__ import annotations

import numpy as np

from .._engine.linear_mixed import LinearMixedEffects
from .._engine.random_effects import blup_intercept, intercept_variance_components
from .base_choice import choose_weight

LINEAR_MIXED = "linear_mixed_model"


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


def offsets(model, X):
    """The base model's predictions as a column ``(n_samples, 1)`` (zeros without a model)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    if model is None or len(X) == 0:
        return np.zeros((len(X), 1))
    return np.asarray(model.predict(X), dtype=np.float64).reshape(len(X), 1)


def linear_mixed_model(X, y, groups):
    """A :class:`LinearMixedEffects` with random slopes fitted on the table, or None where too
    few groups have the rows to estimate the slopes' covariance."""
    try:
        return LinearMixedEffects().fit(X, y, groups)
    except ValueError:
        return None


def group_state(model, variances, X, y):
    """What a group's support rows tell the statistician's ``model``: the BLUP of its offset
    from a pooled regressor, or of its effects in a linear mixed model."""
    if isinstance(model, LinearMixedEffects):
        return model.group_effects(X, np.ravel(y))
    return group_offset(variances, np.ravel(y) - offsets(model, X)[:, 0])


def group_prediction(model, X, state):
    """The statistician's predictions ``(n_samples,)`` of a group's rows ``X`` in ``state``."""
    if isinstance(model, LinearMixedEffects):
        return model.predict_group(X, state)
    return offsets(model, X)[:, 0] + state


def statistician_predictions(model, variances, Xs, ys, Xq):
    """The statistician's model of every task: its query predictions from its support rows."""
    return [
        group_prediction(model, X_q, group_state(model, variances, X_s, y_s))
        for X_s, y_s, X_q in zip(Xs, ys, Xq)
    ]


def network_on_held_out(est, held_out):
    """``{support size: (splits, the network's query predictions)}`` on the ``held_out`` splits.
    ``est`` has no weights yet, so its ``few_shot_predict`` is the network's whole prediction;
    computed once, it serves every statistician's model weighed against it."""
    out = {}
    for size, splits in held_out.items():
        Xs, ys, Xq = ([s[i] for s in splits] for i in range(3))
        out[len(Xs[0]) if size is None else size] = (splits, est.few_shot_predict(Xs, ys, Xq))
    return out


def weights_on_held_out(network, model, variances, nested):
    """``({support size: weight}, {size: task errors at it}, {size: the network's own})``: the
    network's weight beside the statistician's ``model`` chosen on the held-out splits of
    ``network`` (:func:`network_on_held_out`;
    :func:`~skreptile._estimators.base_choice.choose_weight`, ``nested`` for a network on the
    base model's residuals)."""
    weights, chosen, own = {}, {}, {}
    for size, (splits, predictions) in network.items():
        Xs, ys, Xq = ([s[i] for s in splits] for i in range(3))
        statistician = statistician_predictions(model, variances, Xs, ys, Xq)
        weights[size], chosen[size], errors = choose_weight(
            predictions, statistician, splits, nested
        )
        own[size] = errors[1.0]
    return weights, chosen, own
