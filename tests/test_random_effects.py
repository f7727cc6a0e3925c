"""Random effects in numpy: the ANOVA variances and the BLUPs, by hand and against statsmodels."""

import numpy as np
import pytest

from skreptile._engine.random_effects import (
    blup_intercept,
    blup_random_effects,
    intercept_shrinkage,
    intercept_variance_components,
    random_effects_covariance,
)


def test_shrinkage_and_blup_equal_the_hand_formula():
    # n tau2 / (n tau2 + sigma2) = 4 * 0.5 / (4 * 0.5 + 2) = 0.5; the mean residual is 3.
    assert intercept_shrinkage(4, 0.5, 2.0) == pytest.approx(0.5)
    assert blup_intercept([1.0, 2.0, 3.0, 6.0], 0.5, 2.0) == pytest.approx(1.5)
    # One row: 0.5 / 2.5.
    assert blup_intercept([5.0], 0.5, 2.0) == pytest.approx(5.0 * 0.2)
    np.testing.assert_allclose(intercept_shrinkage(np.array([1, 4]), 0.5, 2.0), [0.2, 0.5])


def test_no_between_group_variance_gives_no_offset_and_no_noise_the_mean():
    residuals = [1.0, 2.0, 6.0]
    assert blup_intercept(residuals, 0.0, 1.0) == 0.0
    assert blup_intercept(residuals, 1.0, 0.0) == pytest.approx(3.0)
    assert blup_intercept(residuals, 0.0, 0.0) == 0.0  # nothing varies: no offset
    assert blup_intercept([], 1.0, 1.0) == 0.0  # no rows: the pooled model
    with pytest.raises(ValueError, match="non-negative"):
        intercept_shrinkage(3, -1.0, 1.0)


def test_anova_variances_equal_a_hand_computation_on_unbalanced_groups():
    # Groups a: (1, 3), b: (4, 6, 8), c: (0); means 2, 6, 0, grand mean 11/3.
    # SSW = 2 + 8 + 0 = 10 over N - k = 3; SSB = 2(5/3)^2 + 3(7/3)^2 + (11/3)^2 = 106/3,
    # MSB = 53/3; n0 = (6 - 14/6) / 2 = 11/6; tau2 = (53/3 - 10/3) / (11/6) = 86/11.
    r = [1.0, 3.0, 4.0, 6.0, 8.0, 0.0]
    g = ["a", "a", "b", "b", "b", "c"]
    tau2, sigma2 = intercept_variance_components(r, g)
    assert sigma2 == pytest.approx(10 / 3)
    assert tau2 == pytest.approx(86 / 11)


def test_anova_between_variance_is_clipped_at_zero():
    # Equal group means: MSB = 0 < sigma2, a negative estimate, reported as 0.
    tau2, sigma2 = intercept_variance_components([1.0, 3.0, 0.0, 4.0], [0, 0, 1, 1])
    assert (tau2, sigma2) == (0.0, pytest.approx(5.0))


def test_anova_refuses_a_single_group_with_the_fix():
    with pytest.raises(ValueError, match="at least 2 groups"):
        intercept_variance_components([1.0, 2.0, 3.0], [0, 0, 0])
    with pytest.raises(ValueError, match="one label per residual"):
        intercept_variance_components([1.0, 2.0, 3.0], [0, 1])


def test_anova_variances_are_close_to_the_truth_on_unbalanced_groups():
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 40, size=400)
    groups = np.repeat(np.arange(400), sizes)
    r = rng.normal(scale=np.sqrt(1.5), size=400)[groups] + rng.normal(
        scale=np.sqrt(0.8), size=len(groups)
    )
    tau2, sigma2 = intercept_variance_components(r, groups)
    assert tau2 == pytest.approx(1.5, rel=0.15)
    assert sigma2 == pytest.approx(0.8, rel=0.05)


def _slopes_data(rng, n_groups, G, sigma2, sizes=(8, 30)):
    n = rng.integers(*sizes, size=n_groups)
    groups = np.repeat(np.arange(n_groups), n)
    x = rng.normal(size=len(groups))
    Z = np.column_stack([np.ones_like(x), x])
    b = rng.multivariate_normal(np.zeros(2), G, size=n_groups)
    r = np.sum(Z * b[groups], axis=1) + rng.normal(scale=np.sqrt(sigma2), size=len(x))
    return Z, r, groups


def test_random_effects_covariance_is_close_to_the_truth():
    G = np.array([[1.0, 0.3], [0.3, 0.5]])
    Z, r, groups = _slopes_data(np.random.default_rng(1), 600, G, 0.5)
    G_hat, sigma2 = random_effects_covariance(Z, r, groups)
    np.testing.assert_allclose(G_hat, G, atol=0.12)
    assert sigma2 == pytest.approx(0.5, rel=0.05)


def test_random_effects_covariance_is_clipped_to_positive_semidefinite():
    # No slope varies: the moment estimate of its variance is about 0, half the time
    # negative; the clipped matrix never has a negative eigenvalue.
    for seed in range(4):
        Z, r, groups = _slopes_data(np.random.default_rng(seed), 30, np.diag([1.0, 0.0]), 1.0)
        G_hat, _ = random_effects_covariance(Z, r, groups)
        assert np.linalg.eigvalsh(G_hat).min() >= -1e-12
    with pytest.raises(ValueError, match="at least 2 groups"):
        random_effects_covariance(Z[:5], r[:5], groups[:5])


def test_blup_random_effects_by_hand():
    rng = np.random.default_rng(2)
    Z = np.column_stack([np.ones(6), rng.normal(size=6)])
    r = rng.normal(size=6)
    G = np.array([[0.7, 0.2], [0.2, 0.4]])
    expected = np.linalg.solve(Z.T @ Z + 0.9 * np.linalg.inv(G), Z.T @ r)
    np.testing.assert_allclose(blup_random_effects(Z, r, G, 0.9), expected)
    # Without noise: the group's least squares fit.
    np.testing.assert_allclose(
        blup_random_effects(Z, r, G, 0.0), np.linalg.lstsq(Z, r, rcond=None)[0]
    )
    # A random intercept alone is the shrunk mean residual.
    b = blup_random_effects(Z[:, :1], r, [[0.7]], 0.9)
    assert b[0] == pytest.approx(blup_intercept(r, 0.7, 0.9))
    # An effect without variance (singular G) is predicted 0, with no inverse of G.
    b = blup_random_effects(Z, r, np.diag([0.7, 0.0]), 0.9)
    assert b[1] == pytest.approx(0.0, abs=1e-12)
    assert b[0] == pytest.approx(blup_intercept(r, 0.7, 0.9))


def _statsmodels():
    return pytest.importorskip(
        "statsmodels.api", reason="statsmodels (an optional reference) is not installed"
    )


def test_anova_equals_statsmodels_reml_on_balanced_groups():
    sm = _statsmodels()
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(40), 6)
    y = rng.normal(size=40)[groups] + rng.normal(scale=1.5, size=len(groups))
    fit = sm.MixedLM(y, np.ones((len(y), 1)), groups).fit(reml=True)
    tau2, sigma2 = intercept_variance_components(y, groups)
    assert tau2 > 0  # REML and ANOVA agree where the estimate is not clipped
    assert tau2 == pytest.approx(float(np.asarray(fit.cov_re)[0, 0]), rel=1e-3)
    assert sigma2 == pytest.approx(float(fit.scale), rel=1e-3)


def test_blup_equals_statsmodels_random_effects_given_its_variances():
    sm = _statsmodels()
    Z, r, groups = _slopes_data(np.random.default_rng(4), 60, [[1.0, 0.3], [0.3, 0.5]], 0.5)
    y = r + 2.0 + 3.0 * Z[:, 1]
    fit = sm.MixedLM(y, Z, groups, exog_re=Z).fit(reml=True)
    G = np.asarray(fit.cov_re)
    residuals = y - Z @ np.asarray(fit.fe_params)
    for g in (0, 17, 59):
        rows = groups == g
        ours = blup_random_effects(Z[rows], residuals[rows], G, float(fit.scale))
        np.testing.assert_allclose(ours, np.asarray(fit.random_effects[g]), rtol=1e-6)


def test_moment_covariance_is_close_to_statsmodels_reml():
    sm = _statsmodels()
    G = np.array([[1.0, 0.3], [0.3, 0.5]])
    Z, r, groups = _slopes_data(np.random.default_rng(5), 300, G, 0.5)
    fit = sm.MixedLM(r, Z, groups, exog_re=Z).fit(reml=True)
    # The fixed effects are 0 here: the moment estimator reads the residuals as they are.
    G_hat, sigma2 = random_effects_covariance(Z, r, groups)
    np.testing.assert_allclose(G_hat, np.asarray(fit.cov_re), atol=0.03)
    assert sigma2 == pytest.approx(float(fit.scale), rel=0.01)
