"""A target transform learned once at meta time and frozen for new groups.

:class:`~skreptile.GroupTaskSampler` fits a clone of ``target_transformer``
once on the meta-training targets (:func:`fit_target_transformer`), and
:meth:`~skreptile.GroupTaskSampler.pipeline` wraps the model in a
``TransformedTargetRegressor`` whose transformer is that fitted one, frozen
(:class:`FrozenTargetTransformer`): adapting to a new group's few rows must
not refit it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator


class FrozenTargetTransformer(FrozenEstimator):
    """A fitted target transformer that ``fit`` leaves as it is.

    :class:`sklearn.frozen.FrozenEstimator` for the ``transformer`` of a
    ``TransformedTargetRegressor``, whose ``fit`` calls ``transformer.fit(y)``
    with the targets only (``FrozenEstimator.fit`` needs ``X`` and ``y``).
    :meth:`GroupTaskSampler.pipeline` makes one of ``target_transformer_``.

    Parameters
    ----------
    estimator : transformer
        The fitted transformer.
    """

    def fit(self, X: Any, y: Any = None, *args: Any, **kwargs: Any) -> FrozenTargetTransformer:
        """Do nothing: the transformer stays as it was fitted.

        Parameters
        ----------
        X : array-like
            Ignored (the targets, for ``TransformedTargetRegressor``).
        y : None
            Ignored.
        *args, **kwargs
            Ignored.

        Returns
        -------
        self : FrozenTargetTransformer
            This object, unchanged.
        """
        return super().fit(X, y, *args, **kwargs)


def fit_target_transformer(tt, y):
    """``(fitted clone of tt, y transformed)``, with every way it could go wrong named.

    Parameters
    ----------
    tt : transformer
        Must have ``fit``, ``transform`` and ``inverse_transform``, give one
        finite column per target column, and be inverted by its inverse.
    y : ndarray of shape (n_samples,) or (n_samples, n_outputs)

    Returns
    -------
    fitted : transformer
    y_transformed : ndarray shaped like ``y``
    """
    lacking = [m for m in ("fit", "transform", "inverse_transform") if not hasattr(tt, m)]
    if lacking:
        raise TypeError(
            f"target_transformer={tt!r} has no {' or '.join(lacking)} method. It must be "
            "a scikit-learn transformer that can be inverted (predictions are brought back "
            "to the target's units with inverse_transform), e.g. "
            "FunctionTransformer(np.log1p, inverse_func=np.expm1), PowerTransformer() or "
            "QuantileTransformer()."
        )
    y_2d = y.reshape(-1, 1) if y.ndim == 1 else y
    with np.errstate(divide="ignore", invalid="ignore"):  # non-finite output is named below
        fitted = clone(tt).fit(y_2d)
        out = fitted.transform(y_2d)
    if hasattr(out, "toarray"):
        out = out.toarray()
    out = np.asarray(out, dtype=np.float64)
    if out.shape != y_2d.shape and out.size == y_2d.size:
        out = out.reshape(y_2d.shape)  # e.g. a function returning a 1-D array
    if out.shape != y_2d.shape:
        raise ValueError(
            f"target_transformer={tt!r} turned targets of shape {y_2d.shape} into shape "
            f"{out.shape}; it must transform each target column into one column."
        )
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise ValueError(
            f"target_transformer={tt!r} gives {int(bad.sum())} non-finite value(s), first "
            f"for the target {y_2d[row].tolist()} (row {row}). Choose a transform defined "
            "on every target (np.log1p needs targets > -1), or drop those rows."
        )
    # A transform whose inverse is not one (FunctionTransformer(np.log1p) without
    # inverse_func) would silently return predictions in the wrong units.
    rows = np.linspace(0, len(y_2d) - 1, min(len(y_2d), 1000)).astype(np.intp)
    with np.errstate(all="ignore"):
        back = np.asarray(fitted.inverse_transform(out[rows]), dtype=np.float64).reshape(
            y_2d[rows].shape
        )
    if not np.allclose(back, y_2d[rows], rtol=1e-5, atol=1e-8 * max(1.0, np.abs(y).max())):
        worst = int(np.argmax(np.abs(back - y_2d[rows]).max(axis=1)))
        raise ValueError(
            f"target_transformer={tt!r}: inverse_transform does not invert transform on "
            f"the targets (target {y_2d[rows][worst].tolist()} comes back as "
            f"{back[worst].tolist()}), so predictions would not be in the target's units. "
            "Give the inverse (e.g. FunctionTransformer(np.log1p, inverse_func=np.expm1))."
        )
    return fitted, out.reshape(y.shape)
