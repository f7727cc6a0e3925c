"""The statistician's baselines: a pooled model plus a new group's random effects.

On a grouped table a statistician fits a pooled (fixed-effect) model on every
meta-training row and predicts a new group from a few of its rows by the
best linear unbiased predictor (BLUP) of its random effects.  Both baselines
here are trained once on the meta-training table with ``meta_fit(X, y,
groups)``; ``fit(X, y)`` on a new group's support rows then adapts only the
group's random effects, so they go through
:func:`~skreptile.evaluation.evaluate_few_shot` (which fits a ``clone`` per
task) like a meta-fitted skreptile model: ``clone`` keeps what ``meta_fit``
learned.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .._engine.linear_mixed import LinearMixedEffects
from .._engine.random_effects import (
    blup_intercept,
    intercept_shrinkage,
    intercept_variance_components,
)
from ._meta_fitted import MetaFittedMixin

__all__ = ["LinearMixedModel", "PooledRandomIntercept"]


def _check_groups(groups, n):
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(
            f"groups must give one group label per row of X ({n}), got shape {groups.shape}."
        )
    return groups


class PooledRandomIntercept(MetaFittedMixin, RegressorMixin, BaseEstimator):
    """A pooled regressor plus a new group's random intercept, shrunk by its BLUP.

    ``meta_fit(X, y, groups)`` fits ``estimator`` on every meta-training row
    (``estimator_``) and estimates the between-group variance ``tau2_`` and
    the within-group variance ``sigma2_`` of the groups' offsets from the
    pooled model, by the ANOVA estimator for unbalanced groups.  The
    residuals it reads are *out-of-group*: each comes from a clone of
    ``estimator`` fitted on the other folds of a ``GroupKFold``, as the model
    will meet a new group; in-sample residuals of a flexible model understate
    both variances.  ``fit(X, y)`` on a new group's ``n`` rows sets its offset,
    the mean residual times ``n tau2 / (n tau2 + sigma2)``; ``predict`` adds
    it to the pooled model's predictions.

    Parameters
    ----------
    estimator : regressor
        The pooled model: any scikit-learn regressor (a pipeline included),
        cloned before it is fitted.
    cv : int, default=5
        Folds of the ``GroupKFold`` that cross-fits the residuals.
    offset : {"blup", "mean"}, default="blup"
        ``"blup"`` shrinks the group's mean residual; ``"mean"`` adds it
        unshrunk (the plain offset baseline).  It can be changed after
        ``meta_fit``.

    Attributes
    ----------
    estimator_ : regressor
        ``estimator`` fitted on every meta-training row.
    tau2_ : float
        Between-group variance of the offsets (0 when the groups' offsets vary
        no more than their noise explains).
    sigma2_ : float
        Within-group variance of the residuals.
    n_groups_ : int
        Number of meta-training groups.
    meta_config_ : str
        A hash of the parameters that shaped ``meta_fit``.
    offset_ : float
        The group's offset, set by ``fit``.
    shrinkage_ : float
        The weight of the group's mean residual in ``offset_`` (1 for
        ``offset="mean"``).

    See Also
    --------
    LinearMixedModel : A linear mixed model with random intercept and slopes.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from skreptile.evaluation import PooledRandomIntercept
    >>> rng = np.random.default_rng(0)
    >>> groups = np.repeat(np.arange(30), 20)
    >>> X = rng.normal(size=(600, 2))
    >>> y = X @ [1.0, -2.0] + rng.normal(size=30)[groups] + rng.normal(size=600)
    >>> model = PooledRandomIntercept(Ridge()).meta_fit(X, y, groups)
    >>> bool(0.5 < model.tau2_ < 2 and 0.8 < model.sigma2_ < 1.2)
    True
    >>> new = model.fit(X[:5], y[:5] + 3.0)  # 5 rows of a group above the pool
    >>> round(new.shrinkage_, 3)  # 5 tau2 / (5 tau2 + sigma2)
    0.814
    >>> round(new.offset_, 3)  # its mean residual, 1.458, shrunk
    1.187
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"])],
        "cv": [Interval(Integral, 2, None, closed="left")],
        "offset": [StrOptions({"blup", "mean"})],
    }
    _META_STATE = ("estimator_", "tau2_", "sigma2_", "n_groups_", "n_features_in_")
    _ADAPT_PARAMS = ("offset",)

    def __init__(self, estimator, *, cv=5, offset="blup"):
        self.estimator = estimator
        self.cv = cv
        self.offset = offset

    def meta_fit(self, X, y, groups):
        """Fit the pooled model and the variances of the groups' offsets.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Meta-training rows, as ``estimator`` takes them.
        y : array-like of shape (n_samples,)
            Their targets.
        groups : array-like of shape (n_samples,)
            The group of every row; at least ``cv`` groups.

        Returns
        -------
        self : PooledRandomIntercept
            Meta-fitted; no group adapted yet.
        """
        self._validate_params()
        y = column_or_1d(y, warn=True).astype(np.float64)
        groups = _check_groups(groups, len(y))
        n_groups = len(np.unique(groups))
        if n_groups < self.cv:
            raise ValueError(
                f"meta_fit cross-fits the pooled model over cv={self.cv} folds of groups, but "
                f"the table has {n_groups} group(s). Give more groups or a smaller cv."
            )
        folds = GroupKFold(n_splits=self.cv)
        held_out = cross_val_predict(clone(self.estimator), X, y, groups=groups, cv=folds)
        tau2, sigma2 = intercept_variance_components(y - held_out, groups)
        estimator = clone(self.estimator).fit(X, y)
        # Only now, after every step succeeded, does the baseline change.
        for attr in ("offset_", "shrinkage_"):
            self.__dict__.pop(attr, None)
        self.estimator_, self.tau2_, self.sigma2_ = estimator, tau2, sigma2
        self.n_groups_ = n_groups
        if hasattr(estimator, "n_features_in_"):
            self.n_features_in_ = estimator.n_features_in_
        self._record_meta_config()
        return self

    def fit(self, X, y):
        """Set a new group's offset from its rows (the pooled model is unchanged).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            The group's support rows.
        y : array-like of shape (n_samples,)
            Their targets.

        Returns
        -------
        self : PooledRandomIntercept
            Adapted to the group.
        """
        self._check_meta_fitted()
        self._validate_params()
        y = column_or_1d(y, warn=True).astype(np.float64)
        residuals = y - np.asarray(self.estimator_.predict(X), dtype=np.float64).reshape(-1)
        if self.offset == "mean":
            self.shrinkage_ = 1.0
            self.offset_ = float(residuals.mean())
        else:
            self.shrinkage_ = intercept_shrinkage(len(residuals), self.tau2_, self.sigma2_)
            self.offset_ = blup_intercept(residuals, self.tau2_, self.sigma2_)
        return self

    def predict(self, X):
        """The pooled model's predictions plus the group's offset.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Rows of the group ``fit`` adapted to.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predictions.
        """
        self._check_meta_fitted()
        check_is_fitted(self, "offset_")
        return np.asarray(self.estimator_.predict(X), dtype=np.float64) + self.offset_


class LinearMixedModel(MetaFittedMixin, RegressorMixin, BaseEstimator):
    """A linear mixed model: pooled linear fit plus a new group's random intercept and slopes.

    The model of every row of group ``i`` is ``y = z'(beta + b_i) + e``, with
    ``z = (1, standardised x)``, ``b_i ~ (0, G)`` and ``e ~ (0, sigma2)``.
    ``meta_fit(X, y, groups)`` standardises the features, estimates the
    fixed effects ``beta`` by pooled least squares, and ``G`` and ``sigma2``
    from least squares fits of every group's residuals with the moment
    correction ``G = mean(b_i b_i') - sigma2 mean((Z_i'Z_i)^-1)``, clipped to
    positive semi-definite (groups with fewer rows than effects plus 2, or a
    feature constant within them, do not enter it).  ``fit(X, y)`` on a new
    group's rows sets its random effects to their BLUP,
    ``(Z'Z + sigma2 G^-1)^-1 Z'(y - Z beta)``; ``predict`` uses ``beta + b``.
    For the REML fit of statsmodels' ``MixedLM``, estimate ``G`` and
    ``sigma2`` there and pass them to the same formula.

    Parameters
    ----------
    random_slopes : bool, default=True
        Whether every feature has a random slope; False leaves the random
        intercept alone.

    Attributes
    ----------
    x_mean_, x_scale_ : ndarray of shape (`n_features_in_`,)
        The standardisation of the features (a constant feature keeps scale 1).
    fixed_effects_ : ndarray of shape (`n_features_in_` + 1,)
        ``beta``: intercept, then the slopes of the standardised features.
    G_ : ndarray of shape (q, q)
        Covariance of the random effects (``q`` is 1 without random slopes).
    sigma2_ : float
        Residual variance within groups.
    n_groups_ : int
        Number of meta-training groups.
    n_features_in_ : int
        Number of features.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        The features' names, when ``X`` had string column names.
    meta_config_ : str
        A hash of the parameters that shaped ``meta_fit``.
    random_effects_ : ndarray of shape (q,)
        The group's BLUP, set by ``fit``.

    See Also
    --------
    PooledRandomIntercept : Any pooled regressor plus a shrunk intercept.

    Examples
    --------
    >>> import numpy as np
    >>> from skreptile.evaluation import LinearMixedModel
    >>> rng = np.random.default_rng(0)
    >>> groups = np.repeat(np.arange(40), 15)
    >>> X = rng.normal(size=(600, 1))
    >>> slopes = 2.0 + rng.normal(size=40)[groups]
    >>> y = slopes * X[:, 0] + rng.normal(scale=0.5, size=600)
    >>> model = LinearMixedModel().meta_fit(X, y, groups)
    >>> model.G_.shape
    (2, 2)
    >>> new = model.fit(X[:5], 4.0 * X[:5, 0])  # a new group, slope 4
    >>> bool(new.predict([[1.0]])[0] > 3.0)
    True
    """

    _parameter_constraints: dict = {"random_slopes": ["boolean"]}
    _META_STATE = (
        "x_mean_",
        "x_scale_",
        "fixed_effects_",
        "G_",
        "sigma2_",
        "n_groups_",
        "n_features_in_",
        "feature_names_in_",
    )

    def __init__(self, *, random_slopes=True):
        self.random_slopes = random_slopes

    def _effects(self):
        """The meta-fitted model as the engine's :class:`LinearMixedEffects`."""
        effects = LinearMixedEffects(self.random_slopes)
        effects.x_mean, effects.x_scale = self.x_mean_, self.x_scale_
        effects.beta, effects.G, effects.sigma2 = self.fixed_effects_, self.G_, self.sigma2_
        return effects

    def meta_fit(self, X, y, groups):
        """Estimate the fixed effects, ``G`` and ``sigma2`` from the meta-training table.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Meta-training rows (numeric).
        y : array-like of shape (n_samples,)
            Their targets.
        groups : array-like of shape (n_samples,)
            The group of every row.

        Returns
        -------
        self : LinearMixedModel
            Meta-fitted; no group adapted yet.
        """
        self._validate_params()
        saved = dict(self.__dict__)
        try:
            # validate_data records the features (reset=True forgets an earlier table's).
            X, y = validate_data(self, X, y, y_numeric=True, reset=True)
            groups = _check_groups(groups, len(y))
            effects = LinearMixedEffects(self.random_slopes).fit(X, y, groups)
        except BaseException:
            # A failed meta_fit leaves the model as it was, as skreptile's estimators do.
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
        self.x_mean_, self.x_scale_ = effects.x_mean, effects.x_scale
        self.fixed_effects_, self.G_, self.sigma2_ = effects.beta, effects.G, effects.sigma2
        self.n_groups_ = len(np.unique(groups))
        self.__dict__.pop("random_effects_", None)
        self._record_meta_config()
        return self

    def fit(self, X, y):
        """Set a new group's random effects to their BLUP from its rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The group's support rows.
        y : array-like of shape (n_samples,)
            Their targets.

        Returns
        -------
        self : LinearMixedModel
            Adapted to the group.
        """
        self._check_meta_fitted()
        X, y = validate_data(self, X, y, y_numeric=True, reset=False)
        self.random_effects_ = self._effects().group_effects(X, y)
        return self

    def predict(self, X):
        """Predict with the group's fixed plus random effects.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows of the group ``fit`` adapted to.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predictions.
        """
        self._check_meta_fitted()
        check_is_fitted(self, "random_effects_")
        X = validate_data(self, X, reset=False)
        return self._effects().predict_group(X, self.random_effects_)
