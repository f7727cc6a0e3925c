"""A linear mixed model with a random intercept and random slopes, in closed form (numpy).

The model of every row of group ``i`` is ``y = z'(beta + b_i) + e`` with
``z = (1, standardised x)``, ``b_i ~ (0, G)`` and ``e ~ (0, sigma2)``:
``beta`` by pooled least squares, ``G`` and ``sigma2`` by
:func:`~skreptile._engine.random_effects.random_effects_covariance`, and a
new group's ``b`` by its BLUP (:func:`~skreptile._engine.random_effects.blup_random_effects`).
The baseline :class:`skreptile.evaluation.LinearMixedModel` and the
regressor's ``base_estimator="auto"`` both use it.
"""

from __future__ import annotations

import numpy as np

from .random_effects import blup_random_effects, random_effects_covariance


class LinearMixedEffects:
    """Fitted fixed effects and random-effect variances; BLUPs of new groups' effects.

    Parameters
    ----------
    random_slopes : bool, default=True
        Whether every feature has a random slope; False leaves the random
        intercept alone.
    """

    def __init__(self, random_slopes=True):
        self.random_slopes = random_slopes

    def fit(self, X, y, groups):
        """Estimate ``beta``, ``G`` and ``sigma2`` from a table (``groups`` any labels).

        Raises ``ValueError`` (from ``random_effects_covariance``) when too few
        groups have enough rows to estimate ``G``.
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(len(X))
        mean, scale = X.mean(axis=0), X.std(axis=0)
        # A constant feature is left unscaled, as StandardScaler does.
        self.x_mean, self.x_scale = mean, np.where(scale > 0, scale, 1.0)
        Z_fixed, Z_random = self.design(X)
        beta = np.linalg.lstsq(Z_fixed, y, rcond=None)[0]
        self.G, self.sigma2 = random_effects_covariance(Z_random, y - Z_fixed @ beta, groups)
        self.beta = beta
        return self

    def design(self, X):
        """``(1, standardised X)``: the fixed effects' design, and the random effects'."""
        X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        Z = np.column_stack([np.ones(len(X)), (X - self.x_mean) / self.x_scale])
        return Z, (Z if self.random_slopes else Z[:, :1])

    def predict(self, X):
        """The fixed effects' prediction (a group's effects at their mean, 0)."""
        return self.design(X)[0] @ self.beta

    def group_effects(self, X, y):
        """The BLUP of a group's random effects from its rows ``X``, ``y``."""
        Z_fixed, Z_random = self.design(X)
        residuals = np.asarray(y, dtype=np.float64).reshape(len(Z_fixed)) - Z_fixed @ self.beta
        return blup_random_effects(Z_random, residuals, self.G, self.sigma2)

    def predict_group(self, X, effects):
        """Predictions for a group's rows ``X`` with its random ``effects``."""
        Z_fixed, Z_random = self.design(X)
        return Z_fixed @ self.beta + Z_random @ effects
