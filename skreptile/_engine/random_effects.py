"""Random effects of a linear mixed model: variance components and BLUPs, in numpy.

The statistician's answer to few-shot regression on a grouped table is a
pooled (fixed-effect) model plus a random effect per group, predicted for a
new group by its best linear unbiased predictor (BLUP) from the group's few
rows.  Everything here works on *residuals* of a fixed-effect model already
fitted, so any pooled model can sit under the random effects.

* :func:`intercept_variance_components`: between-group variance ``tau2`` and
  within-group variance ``sigma2`` of a random intercept, by the ANOVA
  (method-of-moments) estimator for unbalanced groups;
* :func:`intercept_shrinkage`, :func:`blup_intercept`: a new group's
  intercept from its ``n`` residuals, the mean residual shrunk by
  ``n tau2 / (n tau2 + sigma2)``;
* :func:`random_effects_covariance`: the covariance ``G`` of a random
  intercept and random slopes, and ``sigma2``, from per-group least squares
  with a moment correction;
* :func:`blup_random_effects`: the BLUP ``b = (Z'Z + sigma2 G^-1)^-1 Z'r``.

Nothing here imports scikit-learn: the baselines of
:mod:`skreptile.evaluation` and the estimators share these functions.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "blup_intercept",
    "blup_random_effects",
    "intercept_shrinkage",
    "intercept_variance_components",
    "random_effects_covariance",
]


def _group_index(groups, n):
    """Integer codes of ``groups`` (length ``n``) and the number of distinct groups."""
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(
            f"groups must have one label per residual ({n}), got shape {groups.shape}."
        )
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1 if n else 0


def intercept_variance_components(residuals, groups):
    """Between- and within-group variances of a random intercept (ANOVA estimator).

    For residuals ``r_ij = u_i + e_ij`` of group ``i`` with ``u_i ~ (0, tau2)``
    and ``e_ij ~ (0, sigma2)``, the one-way analysis-of-variance estimator for
    unbalanced groups (Searle, Casella and McCulloch, *Variance Components*,
    section 3.5): with ``N`` residuals in ``k`` groups of sizes ``n_i``,

    * ``sigma2 = SSW / (N - k)``, ``SSW`` the sum of squares within groups;
    * ``tau2 = (MSB - sigma2) / n0``, ``MSB = SSB / (k - 1)`` the mean square
      between group means, ``n0 = (N - sum(n_i**2) / N) / (k - 1)``, clipped
      at 0 (a negative estimate means the group means vary no more than their
      noise explains).

    It is unbiased before the clipping; with balanced groups it equals the
    REML estimate whenever that is positive.

    Parameters
    ----------
    residuals : array-like of shape (n_samples,)
        Residuals of a fixed-effect (pooled) model.
    groups : array-like of shape (n_samples,)
        The group of every residual.

    Returns
    -------
    tau2 : float
        Between-group variance of the intercept, at least 0.
    sigma2 : float
        Within-group (residual) variance, at least 0.
    """
    r = np.asarray(residuals, dtype=np.float64).reshape(-1)
    codes, k = _group_index(groups, len(r))
    n_total = len(r)
    if k < 2 or n_total <= k:
        raise ValueError(
            f"Estimating variance components needs at least 2 groups and more residuals than "
            f"groups, got {n_total} residual(s) in {k} group(s). Give more groups, or groups "
            "of at least 2 rows."
        )
    if not np.isfinite(r).all():
        raise ValueError("residuals contain NaN or infinity; remove those rows first.")
    sizes = np.bincount(codes, minlength=k).astype(np.float64)
    means = np.bincount(codes, weights=r, minlength=k) / sizes
    ssw = float(np.sum((r - means[codes]) ** 2))
    sigma2 = ssw / (n_total - k)
    grand = r.mean()
    msb = float(np.sum(sizes * (means - grand) ** 2)) / (k - 1)
    n0 = (n_total - np.sum(sizes**2) / n_total) / (k - 1)
    tau2 = max(0.0, float((msb - sigma2) / n0))
    return tau2, float(sigma2)


def intercept_shrinkage(n, tau2, sigma2):
    """Weight of a group's mean residual in its BLUP: ``n tau2 / (n tau2 + sigma2)``.

    0 without rows or without between-group variance (``tau2 = 0``), 1 when the
    rows carry no noise (``sigma2 = 0``, ``tau2 > 0``).

    Parameters
    ----------
    n : int or array of int
        Number of the group's rows.
    tau2, sigma2 : float
        Between- and within-group variances (non-negative).

    Returns
    -------
    weight : float or ndarray
        In ``[0, 1]``.
    """
    if tau2 < 0 or sigma2 < 0:
        raise ValueError(f"Variances must be non-negative, got tau2={tau2}, sigma2={sigma2}.")
    signal = np.asarray(n, dtype=np.float64) * tau2
    total = signal + sigma2
    # 0 / 0 (no rows or no variance at all) means nothing to learn from: no offset.
    weight = np.divide(signal, total, out=np.zeros_like(total), where=total > 0)
    return float(weight) if weight.ndim == 0 else weight


def blup_intercept(residuals, tau2, sigma2):
    """BLUP of a new group's random intercept from its residuals.

    ``intercept_shrinkage(n, tau2, sigma2) * mean(residuals)``: the mean
    residual of the group's ``n`` rows, shrunk towards the pooled model (0)
    the more, the fewer rows and the smaller ``tau2`` is against ``sigma2``.

    Parameters
    ----------
    residuals : array-like of shape (n,)
        The group's residuals under the pooled model (``y - pooled(X)``).
    tau2, sigma2 : float
        Between- and within-group variances, as
        :func:`intercept_variance_components` estimates them.

    Returns
    -------
    intercept : float
        The group's offset to add to the pooled model's predictions.
    """
    r = np.asarray(residuals, dtype=np.float64).reshape(-1)
    if r.size == 0:
        return 0.0
    return intercept_shrinkage(r.size, tau2, sigma2) * float(r.mean())


def _clip_psd(G):
    """The nearest positive semi-definite matrix (negative eigenvalues set to 0)."""
    G = (G + G.T) / 2
    values, vectors = np.linalg.eigh(G)
    return (vectors * np.clip(values, 0.0, None)) @ vectors.T


def random_effects_covariance(Z, residuals, groups, *, min_rows=None):
    """Covariance ``G`` of random effects and residual variance, from per-group fits.

    For residuals ``r_i = Z_i b_i + e_i`` of every group ``i`` (``Z`` the
    random-effect design: a column of ones for the intercept, the columns of
    the random slopes), each group with at least ``min_rows`` rows is fitted
    by least squares, ``b_i^ = (Z_i'Z_i)^-1 Z_i' r_i``, whose expected outer
    product is ``G + sigma2 (Z_i'Z_i)^-1``.  The moment estimator (Swamy's
    random-coefficient estimator, here about 0, the random effects' mean
    under a fitted fixed-effect model) is::

        sigma2 = sum of the groups' residual sums of squares / sum(n_i - q)
        G = mean_i(b_i^ b_i^') - sigma2 * mean_i((Z_i'Z_i)^-1)

    clipped to the nearest positive semi-definite matrix.  ``G`` is a
    second moment about 0, not a covariance about the mean of the ``b_i^``,
    because the BLUP shrinks towards 0: a fixed-effect model that misses a
    common offset counts it as random effect instead of ignoring it.

    Parameters
    ----------
    Z : array-like of shape (n_samples, q)
        Random-effect design of every row.
    residuals : array-like of shape (n_samples,)
        Residuals of the fixed-effect model.
    groups : array-like of shape (n_samples,)
        The group of every row.
    min_rows : int or None, default=None
        Least rows of a group that enters the estimate; None means ``q + 2``
        (a group needs more rows than effects for its residual variance, and
        one more keeps ``(Z_i'Z_i)^-1`` from exploding).

    Returns
    -------
    G : ndarray of shape (q, q)
        Positive semi-definite covariance of the random effects.
    sigma2 : float
        Residual variance within groups.
    """
    Z = np.asarray(Z, dtype=np.float64)
    r = np.asarray(residuals, dtype=np.float64).reshape(-1)
    if Z.ndim != 2 or len(Z) != len(r):
        raise ValueError(
            f"Z must be 2-D with one row per residual ({len(r)}), got shape {Z.shape}."
        )
    codes, k = _group_index(groups, len(r))
    q = Z.shape[1]
    min_rows = q + 2 if min_rows is None else max(int(min_rows), q + 1)
    moments, inverses, rss, dof = [], [], 0.0, 0
    for g in range(k):
        rows = codes == g
        Zg, rg = Z[rows], r[rows]
        if len(rg) < min_rows:
            continue
        gram = Zg.T @ Zg
        if np.linalg.matrix_rank(gram) < q:
            continue  # a slope no row of this group varies: its effect is not identified
        inv = np.linalg.inv(gram)
        b = inv @ (Zg.T @ rg)
        rss += float(np.sum((rg - Zg @ b) ** 2))
        dof += len(rg) - q
        moments.append(np.outer(b, b))
        inverses.append(inv)
    if len(moments) < 2:
        raise ValueError(
            f"Estimating the random effects' covariance needs at least 2 groups of at least "
            f"{min_rows} rows whose design has full rank ({q} effects), got {len(moments)}. "
            "Give groups with more rows, or fewer random slopes."
        )
    sigma2 = float(rss / dof)
    G = np.mean(moments, axis=0) - sigma2 * np.mean(inverses, axis=0)
    return _clip_psd(G), sigma2


def blup_random_effects(Z, residuals, G, sigma2):
    """BLUP of one group's random effects: ``b = (Z'Z + sigma2 G^-1)^-1 Z'r``.

    Computed as the solution of ``(G Z'Z + sigma2 I) b = G Z'r``, the same
    equation multiplied by ``G``, so that a singular ``G`` (an effect without
    variance, as clipping leaves it) needs no inverse: that effect's BLUP is
    0.  With ``sigma2 = 0`` and ``Z'Z`` invertible it is the group's least
    squares fit.

    Parameters
    ----------
    Z : array-like of shape (n, q)
        The group's random-effect design (its support rows).
    residuals : array-like of shape (n,)
        The group's residuals under the fixed-effect model.
    G : array-like of shape (q, q)
        Positive semi-definite covariance of the random effects.
    sigma2 : float
        Residual variance.

    Returns
    -------
    b : ndarray of shape (q,)
        The predicted random effects; the group's prediction is the fixed
        part plus ``Z @ b``.
    """
    Z = np.asarray(Z, dtype=np.float64)
    r = np.asarray(residuals, dtype=np.float64).reshape(-1)
    G = np.asarray(G, dtype=np.float64)
    q = G.shape[0]
    if Z.ndim != 2 or Z.shape != (len(r), q) or G.shape != (q, q):
        raise ValueError(
            f"Z must have shape (n_residuals, q) = ({len(r)}, {q}) for G of shape {G.shape}, "
            f"got {Z.shape}."
        )
    if sigma2 < 0:
        raise ValueError(f"sigma2 must be non-negative, got {sigma2}.")
    if len(r) == 0:
        return np.zeros(q)
    lhs = G @ (Z.T @ Z) + sigma2 * np.eye(q)
    rhs = G @ (Z.T @ r)
    # lhs is singular only without noise (sigma2 = 0) and fewer rows than effects:
    # the minimum-norm solution then interpolates the rows.
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
