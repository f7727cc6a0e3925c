"""The pooled base model under the network (``base_estimator``) and ``meta_fit(X, y, groups=g)``."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import LinearRegression

from skreptile import GroupTaskSampler, ReptileRegressor, SineTaskSampler
from skreptile._engine.linear_mixed import LinearMixedEffects
from skreptile._estimators.pooled_base import group_offset, intercept_variances
from skreptile.evaluation import PooledRandomIntercept

BETA = np.array([1.0, -2.0, 0.5])
SMALL = dict(n_meta_iter=100, hidden_layer_sizes=(8,), device="cpu", random_state=0)


def linear_with_intercepts(n_groups, n_rows, seed, tau=1.0, sigma=1.0):
    """``y = X beta + b_group + noise``: a linear model with a random intercept."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), n_rows)
    X = rng.normal(size=(n_groups * n_rows, 3))
    y = X @ BETA + tau * rng.normal(size=n_groups)[groups] + sigma * rng.normal(size=len(X))
    return X, y, groups


def new_groups(X, y, groups, k):
    """Stacked support (first ``k`` rows) and query (the rest) of every group."""
    labels = np.unique(groups)
    rows = [np.flatnonzero(groups == label) for label in labels]
    return (
        np.stack([X[r[:k]] for r in rows]),
        np.stack([y[r[:k]] for r in rows]),
        np.stack([X[r[k:]] for r in rows]),
        np.stack([y[r[k:]] for r in rows]),
    )


def test_meta_fit_on_a_table_equals_the_sampler_form():
    X, y, g = linear_with_intercepts(12, 10, seed=0)
    by_sampler = ReptileRegressor(**SMALL).meta_fit(GroupTaskSampler(X, y, g))
    by_table = ReptileRegressor(**SMALL).meta_fit(X, y, groups=g)
    np.testing.assert_array_equal(by_table.meta_params_, by_sampler.meta_params_)
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(target=y, school=g)
    named = ReptileRegressor(**SMALL).meta_fit(frame, "target", groups="school")
    np.testing.assert_array_equal(named.meta_params_, by_sampler.meta_params_)
    assert named.feature_names_in_.tolist() == ["a", "b", "c"]


def test_meta_fit_on_a_table_refuses_what_it_cannot_read():
    X, y, g = linear_with_intercepts(12, 10, seed=0)
    with pytest.raises(ValueError, match="needs groups="):
        ReptileRegressor(**SMALL).meta_fit(X, y)
    with pytest.raises(ValueError, match="needs the targets y"):
        ReptileRegressor(**SMALL).meta_fit(X, groups=g)
    with pytest.raises(TypeError, match="validation_tasks="):
        ReptileRegressor(**SMALL).meta_fit(SineTaskSampler(random_state=0), [(X, y, X, y)])


class OwnRowsDetector(RegressorMixin, BaseEstimator):
    """A least-squares fit that fails the test if it ever predicts a row it was fitted on."""

    def fit(self, X, y):
        self.seen_ = {row.tobytes() for row in np.asarray(X)}
        self.model_ = LinearRegression().fit(X, y)
        return self

    def predict(self, X):
        X = np.asarray(X)
        leaked = sum(row.tobytes() in self.seen_ for row in X)
        assert leaked == 0, f"{leaked} rows predicted by a model fitted on them"
        return self.model_.predict(X)


def test_meta_training_targets_are_out_of_group_residuals():
    # Every row is distinct, so a base model fitted on a group's own rows would be seen
    # predicting them; cross-fitting must never do it (and the residuals must be the
    # out-of-group ones, not zero as a memorising fit would give).
    X, y, g = linear_with_intercepts(20, 10, seed=1)
    model = ReptileRegressor(base_estimator=OwnRowsDetector(), **SMALL).meta_fit(X, y, groups=g)
    assert isinstance(model.base_estimator_, OwnRowsDetector)
    np.testing.assert_allclose(model.base_estimator_.model_.coef_, BETA, atol=0.4)
    # The variances come from out-of-group residuals: the between-group one is near 1.
    assert 0.5 < model.random_intercept_["between"] < 2.5


def test_the_random_intercept_variances_and_offset_are_the_anova_and_blup_formulas():
    residuals = np.array([1.0, 3.0, 2.0, 4.0, 6.0, 5.0])
    groups = np.array([0, 0, 1, 1, 2, 2])
    # Group means 2, 3, 5.5; within: (1+1+1+1+0.25+0.25)/(6-3) = 1.5; between mean square
    # 2 * ((2-3.5)^2 + (3-3.5)^2 + (5.5-3.5)^2) / 2 = 6.5; tau2 = (6.5 - 1.5) / 2 = 2.5.
    variances = intercept_variances(residuals, groups)
    assert variances == pytest.approx({"between": 2.5, "within": 1.5})
    shrink = 3 * 2.5 / (3 * 2.5 + 1.5)
    assert group_offset(variances, [1.0, 2.0, 3.0]) == pytest.approx(shrink * 2.0)
    assert group_offset({"between": 0.0, "within": 1.0}, [5.0]) == 0.0
    assert group_offset({"between": 1.0, "within": 0.0}, [5.0, 7.0]) == pytest.approx(6.0)


def test_auto_base_is_within_3_percent_of_the_oracle_blup_on_a_random_intercept_model():
    X, y, g = linear_with_intercepts(60, 20, seed=0)
    model = ReptileRegressor(base_estimator="auto", random_state=0, device="cpu")
    model.meta_fit(X, y, groups=g)
    assert model.base_estimator_ is not None  # "auto" found the pooled linear trend
    # ... and the network alone scored worse on the held-out groups than the mixed model, at
    # every support size, so every weight beside it is 0: the model is the mixed model.
    scores = model.base_scores_
    network = scores["held-out error, network"]
    averaged = scores["held-out error, network averaged with ridge"]  # the partner kept
    assert all(averaged[k] < network[k] for k in network)
    assert model.base_mode_ == "average" and set(model.network_weights_.values()) == {0.0}
    assert "held-out error, network averaged with linear_mixed_model" in scores
    Xs, ys, Xq, yq = new_groups(*linear_with_intercepts(150, 20, seed=100), k=5)
    error = np.mean((model.few_shot_predict(Xs, ys, Xq) - yq) ** 2)
    # The oracle: the true coefficients and variances (tau2 = sigma2 = 1).
    offsets = 5 / 6 * (ys - Xs @ BETA).mean(axis=1)
    oracle = np.mean((yq - Xq @ BETA - offsets[:, None]) ** 2)
    assert error < 1.03 * oracle, (error, oracle)


def curves_per_group(n_groups, n_rows, seed):
    """Every group its own sine curve (amplitude and phase) plus a pooled linear trend."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), n_rows)
    X = rng.uniform(-3, 3, size=(n_groups * n_rows, 2))
    amplitude, phase = rng.uniform(0.5, 2, n_groups), rng.uniform(0, np.pi, n_groups)
    y = amplitude[groups] * np.sin(X[:, 0] + phase[groups]) + 0.5 * X[:, 1]
    return X, y + 0.1 * rng.normal(size=len(X)), groups


def test_groups_with_their_own_nonlinear_curves_beat_the_blup_clearly():
    X, y, g = curves_per_group(40, 20, seed=0)
    params = dict(random_state=0, device="cpu", n_meta_iter=1500)
    model = ReptileRegressor(base_estimator="auto", **params).meta_fit(X, y, groups=g)
    # The network alone is far better than any statistician's model here: it keeps most of
    # the weight at every support size (on this machine: 1 from 10 rows, 0.75 with 4, beside
    # the linear mixed model; where it gets 1 everywhere the base model is dropped).
    assert model.base_scores_["hist_gradient_boosting"] < 0.95 * model.base_scores_["support mean"]
    assert all(w >= 0.5 for w in model.__dict__.get("network_weights_", {}).values())
    alone = ReptileRegressor(base_estimator=None, **params).meta_fit(X, y, groups=g)
    np.testing.assert_array_equal(model.meta_params_, alone.meta_params_)
    Xs, ys, Xq, yq = new_groups(*curves_per_group(60, 20, seed=100), k=5)
    error = np.mean((model.few_shot_predict(Xs, ys, Xq) - yq) ** 2)
    # The statistician's model: pooled least squares plus the BLUP of each group's intercept.
    pooled = LinearRegression().fit(X, y)
    variances = intercept_variances(y - pooled.predict(X), g)
    blup = [
        pooled.predict(xq) + group_offset(variances, ys_ - pooled.predict(xs))
        for xs, ys_, xq in zip(Xs, ys, Xq)
    ]
    assert error < 0.6 * np.mean((np.array(blup) - yq) ** 2)


def test_fit_predict_equals_few_shot_predict_and_survives_clone_and_pickle():
    X, y, g = linear_with_intercepts(20, 10, seed=2)
    model = ReptileRegressor(base_estimator=LinearRegression(), **SMALL).meta_fit(X, y, groups=g)
    Xs, ys, Xq, _ = new_groups(*linear_with_intercepts(3, 10, seed=3), k=4)
    batched = model.few_shot_predict(Xs, ys, Xq)
    for again in (model, clone(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(again.base_estimator_, LinearRegression)
        for t in range(3):
            np.testing.assert_allclose(
                again.fit(Xs[t], ys[t]).predict(Xq[t]), batched[t], rtol=1e-5, atol=1e-6
            )
    # The base model shaped the initialisation: changing it needs a new meta_fit.
    with pytest.raises(ValueError, match="base_estimator"):
        clone(model).set_params(base_estimator=None).fit(Xs[0], ys[0])


def test_auto_has_no_base_for_generated_tasks_and_an_explicit_one_is_refused():
    auto = dict(SMALL, base_estimator="auto")
    model = ReptileRegressor(**auto).meta_fit(SineTaskSampler(random_state=0))
    assert model.__dict__.get("base_estimator_") is None
    with pytest.raises(ValueError, match="finite grouped table"):
        ReptileRegressor(base_estimator=LinearRegression(), **SMALL).meta_fit(
            SineTaskSampler(random_state=0)
        )


def test_a_base_model_that_cannot_fit_is_named():
    X, y, g = linear_with_intercepts(12, 10, seed=0)

    class Broken(LinearRegression):
        def fit(self, X, y):
            raise RuntimeError("no convergence")

    with pytest.raises(ValueError, match="base_estimator Broken could not be fitted"):
        ReptileRegressor(base_estimator=Broken(), **SMALL).meta_fit(X, y, groups=g)


def test_a_checkpointed_run_with_a_base_model_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch
):
    from conftest import interrupting_meta_lr_at

    import skreptile._engine.outer as engine_module

    X, y, g = linear_with_intercepts(20, 10, seed=4)
    params = dict(SMALL, n_meta_iter=300, base_estimator=LinearRegression(), early_stopping=False)
    reference = ReptileRegressor(**params).meta_fit(X, y, groups=g)
    path = tmp_path / "run.ckpt"
    model = ReptileRegressor(checkpoint_path=path, checkpoint_interval=100, **params)
    with monkeypatch.context() as m:
        m.setattr(engine_module, "meta_lr_at", interrupting_meta_lr_at(250))
        with pytest.warns(RuntimeWarning, match="interrupted"), pytest.raises(KeyboardInterrupt):
            model.meta_fit(X, y, groups=g)
    assert path.exists()
    seen, real = [], engine_module.meta_lr_at

    def recording(meta_lr, schedule, at, n_meta_iter):
        seen.append(at)
        return real(meta_lr, schedule, at, n_meta_iter)

    monkeypatch.setattr(engine_module, "meta_lr_at", recording)
    model.meta_fit(X, y, groups=g)
    assert min(seen) == 250  # resumed where the interrupt saved it, not from the start
    np.testing.assert_array_equal(model.meta_params_, reference.meta_params_)
    np.testing.assert_array_equal(model.base_estimator_.coef_, reference.base_estimator_.coef_)
    assert model.random_intercept_ == reference.random_intercept_


class CountingLinear(LinearRegression):
    """A least-squares fit that counts its fits on the class."""

    fits = 0

    def fit(self, X, y):
        type(self).fits += 1
        return super().fit(X, y)


def test_a_step_size_back_off_reuses_the_base_models_fit():
    X, y, g = linear_with_intercepts(20, 10, seed=5)
    params = dict(SMALL, n_meta_iter=300, hidden_layer_sizes=(32, 32), early_stopping=False)
    CountingLinear.fits = 0
    model = ReptileRegressor(base_estimator=CountingLinear(), inner_lr=3.0, **params)
    model.meta_fit(X, y, groups=g)
    assert model.step_size_info_["backoffs"] >= 1  # else this test could not tell
    # Cross-fitting over 5 folds, the fit for the decisions, then the variances' cross-fitting
    # and the refit on every row: once each.
    assert CountingLinear.fits == 5 + 1 + 5 + 1


class RowCounting(LinearRegression):
    """A least-squares fit that records the number of rows of each of its fits."""

    rows = []

    def fit(self, X, y):
        type(self).rows.append(len(X))
        return super().fit(X, y)


def test_the_kept_base_model_is_refitted_on_every_row_held_out_groups_included():
    X, y, g = linear_with_intercepts(20, 10, seed=6)
    RowCounting.rows = []
    model = ReptileRegressor(base_estimator=RowCounting(), **SMALL).meta_fit(X, y, groups=g)
    # 4 of the 20 groups were held out for the decisions; the final fit sees all 200 rows, and
    # the variances of the offsets come from cross-fitting over every group, as the
    # statistician's pooled model with a random intercept estimates them.
    assert RowCounting.rows[5] == 160 and RowCounting.rows[-1] == 200
    assert sum(RowCounting.rows[-6:-1]) == 4 * 200  # 5 folds of the 200 rows
    reference = LinearRegression().fit(X, y)
    np.testing.assert_allclose(model.base_estimator_.coef_, reference.coef_)
    statistician = PooledRandomIntercept(LinearRegression()).meta_fit(X, y, g)
    np.testing.assert_allclose(
        [model.random_intercept_["between"], model.random_intercept_["within"]],
        [statistician.tau2_, statistician.sigma2_],
    )
    # With nothing held out, the one fit already saw every row: no second fit.
    RowCounting.rows = []
    ReptileRegressor(base_estimator=RowCounting(), validation_fraction=None, **SMALL).meta_fit(
        X, y, groups=g
    )
    assert RowCounting.rows[5:] == [200]  # after the 5 cross-fits


def statisticians(model, Xs, ys, Xq):
    """The fitted base model plus each task's BLUP offset: the network's weight-0 prediction."""
    base, variances = model.base_estimator_, model.random_intercept_
    return np.stack(
        [
            base.predict(xq) + group_offset(variances, y_ - base.predict(xs))
            for xs, y_, xq in zip(Xs, ys, Xq)
        ]
    )


def test_auto_averages_the_network_alone_with_the_base_model_and_a_warm_start_continues_it():
    X, y, g = linear_with_intercepts(20, 10, seed=7)
    params = dict(SMALL, n_meta_iter=200, early_stopping=False)
    model = ReptileRegressor(base_estimator="auto", **params).meta_fit(X, y, groups=g)
    assert model.base_mode_ == "average" and sorted(model.network_weights_) == [4, 10, 25]
    # The network meta-trained on the targets themselves: the run without a base model.
    alone = ReptileRegressor(base_estimator=None, **params).meta_fit(X, y, groups=g)
    np.testing.assert_array_equal(model.meta_params_, alone.meta_params_)
    # Every prediction is the statistician's plus the network's weight times the difference
    # (weights set here, so that every one of them is tested whatever was chosen).
    model.network_weights_ = {4: 0.25, 10: 0.75, 25: 1.0}
    Xs, ys, Xq, _ = new_groups(*linear_with_intercepts(3, 10, seed=8), k=4)
    mixed = statisticians(model, Xs, ys, Xq)
    expected = mixed + 0.25 * (alone.few_shot_predict(Xs, ys, Xq) - mixed)
    for again in (model, pickle.loads(pickle.dumps(model))):
        np.testing.assert_allclose(again.few_shot_predict(Xs, ys, Xq), expected, rtol=1e-6)
        fitted = again.fit(Xs[0], ys[0])
        np.testing.assert_allclose(fitted.predict(Xq[0]), expected[0], rtol=1e-5, atol=1e-6)
        assert fitted.network_weight_ == 0.25
    # A warm start goes on with the network alone, still averaged with the base model.
    for m in (model, alone):
        m.set_params(warm_start=True, n_meta_iter=300).meta_fit(X, y, groups=g)
    assert model.base_mode_ == "average" and sorted(model.network_weights_) == [4, 10, 25]
    np.testing.assert_array_equal(model.meta_params_, alone.meta_params_)


def test_the_networks_weight_scales_its_correction_of_the_base_model():
    X, y, g = linear_with_intercepts(20, 10, seed=9)
    model = ReptileRegressor(base_estimator=LinearRegression(), **SMALL).meta_fit(X, y, groups=g)
    assert model.base_mode_ == "residuals" and sorted(model.network_weights_) == [4, 10, 25]
    Xs, ys, Xq, _ = new_groups(*linear_with_intercepts(3, 10, seed=10), k=4)
    preds = {}
    for weight in (0.0, 0.5, 1.0):
        model.network_weights_ = {4: weight, 10: 1.0, 25: 1.0}
        preds[weight] = model.few_shot_predict(Xs, ys, Xq)
        np.testing.assert_allclose(
            model.fit(Xs[1], ys[1]).predict(Xq[1]), preds[weight][1], rtol=1e-5, atol=1e-6
        )
    # Weight 0 is the pooled model plus the BLUP offset; 0.5 halves the network's correction.
    np.testing.assert_allclose(preds[0.0], statisticians(model, Xs, ys, Xq), rtol=1e-6)
    np.testing.assert_allclose(preds[0.5], (preds[0.0] + preds[1.0]) / 2, rtol=1e-5)
    assert np.abs(preds[1.0] - preds[0.0]).max() > 1e-3  # else this test could not tell


def test_auto_drops_a_base_model_that_the_network_outweighs_everywhere(monkeypatch):
    import skreptile._estimators.statistician as statistician

    real = statistician.choose_weight

    def network_wins(network, mixed, splits, nested):
        weight, errors, by_weight = real(network, mixed, splits, nested)
        return 1.0, by_weight[1.0], by_weight

    monkeypatch.setattr(statistician, "choose_weight", network_wins)
    X, y, g = linear_with_intercepts(20, 10, seed=11)
    params = dict(SMALL, n_meta_iter=200, early_stopping=False)
    model = ReptileRegressor(base_estimator="auto", **params).meta_fit(X, y, groups=g)
    for attr in ("base_estimator_", "base_mode_", "network_weights_", "random_intercept_"):
        assert attr not in model.__dict__, attr
    assert "held-out error, network" in model.base_scores_  # what decided it is kept
    alone = ReptileRegressor(base_estimator=None, **params).meta_fit(X, y, groups=g)
    Xs, ys, Xq, _ = new_groups(*linear_with_intercepts(3, 10, seed=12), k=4)
    np.testing.assert_array_equal(
        model.few_shot_predict(Xs, ys, Xq), alone.few_shot_predict(Xs, ys, Xq)
    )


def test_auto_averages_with_a_linear_mixed_model_where_slopes_differ_by_group():
    # Every group its own slopes: no pooled regressor beats the mean by 5%, but the linear
    # mixed model's random slopes do, and "auto" keeps it beside the network.
    rng = np.random.default_rng(13)
    groups = np.repeat(np.arange(40), 20)
    X = rng.normal(size=(800, 2))
    slopes = rng.normal(scale=2.0, size=(40, 2))[groups]
    y = (X * slopes).sum(axis=1) + 0.3 * rng.normal(size=800)
    model = ReptileRegressor(base_estimator="auto", random_state=0, device="cpu", n_meta_iter=300)
    model.meta_fit(X, y, groups=groups)
    scores = model.base_scores_
    assert min(scores["ridge"], scores["hist_gradient_boosting"]) > 0.95 * scores["support mean"]
    assert [k for k in scores if "averaged" in k] == [
        "held-out error, network averaged with linear_mixed_model"
    ]
    assert model.base_mode_ == "average"
    assert isinstance(model.base_estimator_, LinearMixedEffects)
    assert model.random_intercept_ is None
    # Its predictions for a new group are the statistician's plus the network's weight times
    # the difference, the statistician's being the BLUP of the group's intercept and slopes.
    Xn = rng.normal(size=(2, 30, 2))
    yn = (Xn * rng.normal(scale=2.0, size=(2, 1, 2))).sum(axis=2)
    Xs, ys, Xq = Xn[:, :10], yn[:, :10], Xn[:, 10:]
    mixed = np.stack(
        [
            model.base_estimator_.predict_group(q, model.base_estimator_.group_effects(a, b))
            for a, b, q in zip(Xs, ys, Xq)
        ]
    )
    weight = model.network_weights_[10]
    # clone and pickle keep the linear mixed model, so a copy predicts the same.
    chosen = model.few_shot_predict(Xs, ys, Xq)
    for again in (clone(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_allclose(again.few_shot_predict(Xs, ys, Xq), chosen, rtol=1e-6)
        np.testing.assert_allclose(again.fit(Xs[0], ys[0]).predict(Xq[0]), chosen[0], rtol=1e-5)
    model.network_weights_ = {4: 0.0, 10: 0.0, 25: 0.0}
    np.testing.assert_allclose(model.few_shot_predict(Xs, ys, Xq), mixed, rtol=1e-6, atol=1e-9)
    assert 0.0 <= weight <= 1.0
    # The mixed model alone recovers slopes of a new group from 10 rows far better than the
    # pooled mean: its error is below a tenth of the targets' variance.
    assert np.mean((mixed - yn[:, 10:]) ** 2) < 0.1 * yn[:, 10:].var()


def test_auto_scores_the_weights_with_models_that_never_saw_the_held_out_groups(monkeypatch):
    # Every candidate pooled model asserts that it never predicts a row it was fitted on: the
    # cross-fitting, the weights chosen on the held-out groups (a fit on the meta-training
    # rows only) and the refit on every row (used for new groups only) must all respect it.
    import skreptile._estimators.pooled_base as pooled_base

    monkeypatch.setattr(pooled_base, "CANDIDATES", {"detector": OwnRowsDetector})
    X, y, g = linear_with_intercepts(20, 10, seed=14)
    params = dict(SMALL, n_meta_iter=200, early_stopping=False)
    model = ReptileRegressor(base_estimator="auto", **params).meta_fit(X, y, groups=g)
    assert "held-out error, network averaged with detector" in model.base_scores_
    assert isinstance(model.base_estimator_, OwnRowsDetector)  # the partner kept
    assert len(model.base_estimator_.seen_) == 200  # refitted on every row at the end
    Xs, ys, Xq, _ = new_groups(*linear_with_intercepts(3, 10, seed=15), k=4)
    assert model.few_shot_predict(Xs, ys, Xq).shape == (3, 6)
