"""Standardisation of inputs and targets, learned once by ``meta_fit`` and then fixed.

A meta-learned initialisation lives in the coordinates of the data it was
learned on, so the scaling is part of the learned state: it is computed once,
on the first meta-training tasks, and every later step (the inner loop,
``fit``, prediction, validation, evaluation) goes through :class:`Scaling`.
"""

import numpy as np


class Scaling:
    """Per-feature (or global) input and per-output target standardisation.

    Parameters
    ----------
    x_mean, x_scale : ndarray of shape (n_features,)
    y_mean, y_scale : ndarray of shape (n_outputs,)
    """

    def __init__(self, x_mean, x_scale, y_mean, y_scale):
        self.x_mean, self.x_scale = x_mean, x_scale
        self.y_mean, self.y_scale = y_mean, y_scale

    @classmethod
    def fit(cls, X, Y, *, inputs="per_feature", targets=True):
        """Statistics of the points ``X (..., n_features)`` and ``Y (..., n_outputs)``.

        ``inputs`` is "per_feature", "global" (one mean and scale for every
        value, as for the pixels of images) or None (no scaling); ``targets``
        says whether targets are scaled (not for one-hot classes).  A scale
        that overflows raises a ``ValueError`` naming the column.
        """
        n_features, n_outputs = X.shape[-1], Y.shape[-1]
        X = X.reshape(-1, n_features)
        Y = Y.reshape(-1, n_outputs)
        x_mean, x_scale = np.zeros(n_features), np.ones(n_features)
        y_mean, y_scale = np.zeros(n_outputs), np.ones(n_outputs)
        with np.errstate(over="ignore", invalid="ignore"):
            if inputs == "per_feature":
                x_mean, x_scale = _mean_std(X, axis=0)
            elif inputs == "global":
                mean, std = _mean_std(X.reshape(-1, 1), axis=0)
                x_mean, x_scale = np.full(n_features, mean[0]), np.full(n_features, std[0])
            if targets:
                y_mean, y_scale = _mean_std(Y, axis=0)
        _check_finite(x_mean, x_scale, "X", "feature")
        _check_finite(y_mean, y_scale, "y", "output")
        return cls(x_mean, x_scale, y_mean, y_scale)

    def x(self, X):
        """Scaled inputs."""
        return (X - self.x_mean) / self.x_scale

    def y(self, Y):
        """Scaled targets."""
        return (Y - self.y_mean) / self.y_scale

    def y_inverse(self, Y):
        """Targets in their own units from scaled ones."""
        return Y * self.y_scale + self.y_mean

    def as_tuple(self):
        """``(x_mean, x_scale, y_mean, y_scale)``."""
        return self.x_mean, self.x_scale, self.y_mean, self.y_scale


# A column whose standard deviation is within this many float64 roundings of
# its mean is constant: what spread it has is the rounding of the mean's own
# computation.  Anything wider is data, however small its units (a spread of
# 1e-13 around 0, or around 5, is scaled to unit variance like any other).
_ROUNDINGS = 16


def _mean_std(a, axis):
    mean, std = a.mean(axis=axis), a.std(axis=axis)
    # A constant column carries no scale: leave it unscaled rather than divide by 0.
    noise = _ROUNDINGS * np.finfo(np.float64).eps * np.abs(mean)
    constant = ~((std > noise) & (std > np.finfo(np.float64).tiny))
    return mean, np.where(constant & np.isfinite(std), 1.0, std)


def _check_finite(mean, scale, name, what):
    bad = ~(np.isfinite(mean) & np.isfinite(scale))
    if bad.any():
        column = int(np.argmax(bad))
        raise ValueError(
            f"The meta-training {name} overflows: the mean or standard deviation of "
            f"{what} {column} is not finite in float64 (values near 1e154 or beyond). "
            f"Rescale {name} (for example divide it by a power of ten, or take a log) "
            "before meta_fit."
        )
