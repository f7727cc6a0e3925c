"""The statistician's baselines: meta-fitted once, adapted per group, through evaluate_few_shot."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor

from skreptile.evaluation import (
    LinearMixedModel,
    PooledRandomIntercept,
    evaluate_few_shot,
)


def _table(seed, n_groups, tau=1.0, sigma=1.0, slope_sd=0.0, sizes=(10, 40)):
    """y = 1 + 2 x1 - x2 + u_g + s_g x1 + e: a linear model plus random effects."""
    rng = np.random.default_rng(seed)
    n = rng.integers(*sizes, size=n_groups)
    groups = np.repeat(np.arange(n_groups), n)
    X = rng.normal(size=(len(groups), 2))
    u = rng.normal(scale=tau, size=n_groups)[groups]
    s = rng.normal(scale=slope_sd, size=n_groups)[groups]
    y = 1 + X @ [2.0, -1.0] + u + s * X[:, 0] + rng.normal(scale=sigma, size=len(groups))
    return X, y, groups


def _tasks(X, y, groups):
    return [(X[groups == g], y[groups == g]) for g in np.unique(groups)]


def test_variances_estimated_by_the_pooled_baseline_are_close_to_the_truth():
    X, y, groups = _table(0, 300, tau=np.sqrt(0.5), sigma=1.0)
    model = PooledRandomIntercept(Ridge()).meta_fit(X, y, groups)
    assert model.tau2_ == pytest.approx(0.5, rel=0.2)
    assert model.sigma2_ == pytest.approx(1.0, rel=0.1)
    assert model.n_groups_ == 300


def test_variances_come_from_out_of_group_residuals():
    # 1-nearest-neighbour interpolates its training rows: in-sample residuals are all 0,
    # so variances from them would be 0.  Out-of-group residuals carry the noise.
    X, y, groups = _table(1, 60, tau=1.0, sigma=1.0)
    model = PooledRandomIntercept(KNeighborsRegressor(n_neighbors=1)).meta_fit(X, y, groups)
    assert model.sigma2_ > 1.0
    assert model.tau2_ > 0.3


def test_fit_sets_the_blup_offset_and_predict_adds_it():
    X, y, groups = _table(2, 50)
    model = PooledRandomIntercept(LinearRegression()).meta_fit(X, y, groups)
    Xs, ys = X[:3], y[:3] + 4.0
    residuals = ys - model.estimator_.predict(Xs)
    weight = 3 * model.tau2_ / (3 * model.tau2_ + model.sigma2_)
    fitted = clone(model).fit(Xs, ys)
    assert fitted.shrinkage_ == pytest.approx(weight)
    assert fitted.offset_ == pytest.approx(weight * residuals.mean())
    np.testing.assert_allclose(
        fitted.predict(X[5:9]), model.estimator_.predict(X[5:9]) + fitted.offset_
    )
    unshrunk = clone(model).set_params(offset="mean").fit(Xs, ys)
    assert unshrunk.offset_ == pytest.approx(residuals.mean())


def test_clone_keeps_the_meta_fit_and_drops_the_adaptation():
    X, y, groups = _table(3, 40, slope_sd=0.5)
    for model in (
        PooledRandomIntercept(Ridge()).meta_fit(X, y, groups),
        LinearMixedModel().meta_fit(X, y, groups),
    ):
        model.fit(X[:5], y[:5])
        copy = clone(model)
        assert not hasattr(copy, "offset_") and not hasattr(copy, "random_effects_")
        np.testing.assert_allclose(copy.fit(X[:5], y[:5]).predict(X[:7]), model.predict(X[:7]))
        loaded = pickle.loads(pickle.dumps(model))
        np.testing.assert_allclose(loaded.predict(X[:7]), model.predict(X[:7]))


def test_blup_beats_the_unshrunk_offset_at_two_rows_through_evaluate_few_shot():
    # Between-group variance small against the noise: two rows' mean residual is
    # mostly noise, and the BLUP shrinks it (weight 2 * 0.25 / (2 * 0.25 + 1) = 1/3).
    X, y, groups = _table(4, 400, tau=0.5, sigma=1.0)
    train = groups < 200
    pooled = PooledRandomIntercept(Ridge()).meta_fit(X[train], y[train], groups[train])
    lmm = LinearMixedModel(random_slopes=False).meta_fit(X[train], y[train], groups[train])
    baselines = {
        "BLUP": pooled,
        "offset": clone(pooled).set_params(offset="mean"),
        "pooled only": clone(pooled).set_params(offset="blup"),
        "LMM": lmm,
    }
    baselines["pooled only"].tau2_ = 0.0  # a clone's copy: the pooled model without offset
    results = evaluate_few_shot(
        None,
        _tasks(X[~train], y[~train], groups[~train]),
        n_support=2,
        baselines=baselines,
        random_state=0,
    )
    mean = {name: results.errors(name).mean() for name in baselines}
    assert mean["BLUP"] < mean["offset"]
    assert mean["BLUP"] < mean["pooled only"]
    assert results.compare("BLUP", "offset")["ci_high"] < 0  # the whole interval
    # The linear mixed model with a random intercept is the same model here.
    assert mean["LMM"] == pytest.approx(mean["BLUP"], rel=0.02)


def test_random_slopes_win_where_the_groups_slopes_differ():
    X, y, groups = _table(5, 300, tau=0.5, sigma=0.5, slope_sd=1.5)
    train = groups < 150
    Xt, yt, gt = X[train], y[train], groups[train]
    baselines = {
        "slopes": LinearMixedModel().meta_fit(Xt, yt, gt),
        "intercept": LinearMixedModel(random_slopes=False).meta_fit(Xt, yt, gt),
    }
    assert baselines["slopes"].G_[1, 1] == pytest.approx(1.5**2, rel=0.3)
    results = evaluate_few_shot(
        None,
        _tasks(X[~train], y[~train], groups[~train]),
        n_support=8,
        baselines=baselines,
        random_state=0,
    )
    assert results.compare("slopes", "intercept")["ci_high"] < 0


def test_fit_and_predict_before_meta_fit_say_what_to_do():
    X, y, groups = _table(6, 20)
    for model in (PooledRandomIntercept(Ridge()), LinearMixedModel()):
        with pytest.raises(NotFittedError, match=r"meta_fit\(X, y, groups\)"):
            model.fit(X[:5], y[:5])
        with pytest.raises(NotFittedError, match="meta_fit"):
            model.predict(X[:5])
        model.meta_fit(X, y, groups)
        with pytest.raises(NotFittedError, match="fit"):
            model.predict(X[:5])


def test_a_changed_meta_fit_parameter_is_refused_an_adaptation_one_is_not():
    X, y, groups = _table(7, 20)
    model = PooledRandomIntercept(Ridge(), cv=4).meta_fit(X, y, groups)
    model.set_params(offset="mean").fit(X[:5], y[:5])  # adaptation only: allowed
    for change in ({"estimator": Ridge(alpha=10.0)}, {"cv": 3}):
        changed = clone(model).set_params(**change)
        with pytest.raises(ValueError, match="call meta_fit again"):
            changed.fit(X[:5], y[:5])
    lmm = LinearMixedModel().meta_fit(X, y, groups)
    with pytest.raises(ValueError, match="call meta_fit again"):
        lmm.set_params(random_slopes=False).fit(X[:5], y[:5])


def test_misuse_of_meta_fit_names_the_problem():
    X, y, groups = _table(8, 4)
    with pytest.raises(ValueError, match="smaller cv"):
        PooledRandomIntercept(Ridge()).meta_fit(X, y, groups)  # 4 groups, 5 folds
    with pytest.raises(ValueError, match="one group label per row"):
        PooledRandomIntercept(Ridge(), cv=2).meta_fit(X, y, groups[:-1])
    with pytest.raises(ValueError, match="offset"):
        PooledRandomIntercept(Ridge(), offset="median").meta_fit(X, y, groups)
    # Groups too small for per-group fits: a clear error, and the model is left as it was.
    X2, y2, groups2 = _table(9, 30)
    lmm = LinearMixedModel().meta_fit(X2, y2, groups2)
    before = lmm.G_.copy()
    with pytest.raises(ValueError, match="at least 2 groups"):
        lmm.meta_fit(X[:4, :1], y[:4], [0, 0, 1, 1])
    np.testing.assert_array_equal(lmm.G_, before)
    assert lmm.n_features_in_ == 2
    with pytest.raises(ValueError, match="features"):
        lmm.fit(X[:5, :1], y[:5])
