"""Self-tuning: step-size back-off, held-out validation tasks, 'auto' adaptation."""

import pickle
import warnings

import numpy as np
import pytest
from conftest import raw_group_table
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from skreptile import GroupTaskSampler, ReptileRegressor, SineTaskSampler


def correlated_table(p=50, n_groups=40, n_rows=30, seed=0):
    """A table of ``p`` strongly correlated, heavy-tailed features and a group offset."""
    rng = np.random.default_rng(seed)
    n = n_groups * n_rows
    z = rng.lognormal(sigma=1.0, size=(n, 1))
    X = z * (1 + 0.1 * rng.normal(size=(n, p)))
    g = np.repeat(np.arange(n_groups), n_rows)
    y = np.log(z[:, 0]) + rng.normal(size=n_groups)[g] + 0.2 * rng.normal(size=n)
    return X, y, g


def test_defaults_do_not_diverge_on_50_correlated_features():
    X, y, g = correlated_table()
    model = ReptileRegressor(random_state=0, n_meta_iter=1000)
    model.meta_fit(GroupTaskSampler(X, y, g))
    assert np.isfinite(model.meta_params_).all()
    # Whole groups were held out: 20% of 40 groups, split 4 ways each.
    assert "validation_loss" in model.history_
    assert np.isfinite(model.best_validation_loss_)
    assert model.adapt_steps_ in (0, 1, 2, 4, 8, 16, 32, 64, 128)
    Xs, ys = X[g == 0][:5], y[g == 0][:5]
    pred = model.fit(Xs, ys).predict(X[g == 0][5:])
    assert np.isfinite(pred).all()


def test_diverging_step_size_backs_off():
    X, y, g = correlated_table(p=5)
    model = ReptileRegressor(
        random_state=0, n_meta_iter=200, inner_lr=20.0, hidden_layer_sizes=(16,)
    )
    model.meta_fit(GroupTaskSampler(X, y, g))
    assert model.step_size_info_["backoffs"] >= 1
    assert model.inner_lr_ == pytest.approx(20.0 * 0.5 ** model.step_size_info_["backoffs"])
    assert np.isfinite(model.meta_params_).all()


def test_held_out_groups_are_not_meta_trained_on():
    X, y, g = correlated_table(p=3, n_groups=20)
    sampler = GroupTaskSampler(X, y, g)
    train, held = sampler._split_groups([0, 5])
    assert train.n_groups_ == 18 and len(held) == 2
    assert not np.isin([0, 5], train.groups_).any()
    np.testing.assert_array_equal(held[0][0], X[g == 0])


def test_auto_adaptation_is_recorded_and_explicit_values_win():
    X, y, g = correlated_table(p=3, n_groups=20)
    model = ReptileRegressor(random_state=0, n_meta_iter=200, hidden_layer_sizes=(16,))
    model.meta_fit(
        GroupTaskSampler(X, y, g),
    )
    assert model.adapt_lr_ > 0 and model.adaptation_scores_
    model.fit(X[:5], y[:5])
    fixed = ReptileRegressor(
        random_state=0, n_meta_iter=200, hidden_layer_sizes=(16,), adapt_steps=3, adapt_lr=0.01
    ).meta_fit(GroupTaskSampler(X, y, g))
    assert fixed._adapt_steps() == 3 and fixed._adapt_lr() == 0.01
    search = GridSearchCV(model, {"adapt_steps": [1, 8]}, cv=2).fit(X[:20], y[:20])
    assert search.best_params_["adapt_steps"] in (1, 8)


def test_early_stopping_auto_is_off_for_infinite_samplers():
    from skreptile import SineTaskSampler

    model = ReptileRegressor(random_state=0, n_meta_iter=200, hidden_layer_sizes=(16,))
    model.meta_fit(SineTaskSampler(random_state=0))
    assert model.n_meta_iter_ == 200
    assert model.adaptation_scores_ is not None  # chosen on fresh held-out sine tasks


def test_validation_fraction_none_keeps_every_task():
    X, y, g = correlated_table(p=3, n_groups=20)
    model = ReptileRegressor(
        random_state=0, n_meta_iter=100, hidden_layer_sizes=(16,), validation_fraction=None
    ).meta_fit(GroupTaskSampler(X, y, g))
    assert "validation_loss" not in model.history_
    assert model.adapt_steps_ == 32


def _preprocessor():
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    return ColumnTransformer(
        [
            ("num", SimpleImputer(add_indicator=True), ["x"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["kind", "grade"]),
        ]
    )


def test_a_raw_table_with_a_preprocessor_fitted_once(monkeypatch):
    frame = raw_group_table()
    train = frame[frame["group"] < 12]
    calls = []
    pre = _preprocessor()
    real_fit = type(pre).fit

    def counting_fit(self, X, y=None, **kw):
        calls.append(len(X))
        return real_fit(self, X, y, **kw)

    monkeypatch.setattr(type(pre), "fit", counting_fit)
    sampler = GroupTaskSampler(train, "y", "group", preprocessor=pre)
    model = ReptileRegressor(random_state=0, n_meta_iter=100, hidden_layer_sizes=(16,))
    model.meta_fit(sampler)
    monkeypatch.undo()
    # Fitted once, on the meta-training rows (features only), and never per task.
    assert calls == [len(train)]
    assert sampler.preprocessor_ is not pre and not hasattr(pre, "transformers_")
    # 2 (x and its missing indicator) + 3 kinds + 2 grades
    assert sampler.n_features_in_ == model.n_features_in_ == 7
    # A new group's raw rows go through the frozen preprocessor in a pipeline.
    new = frame[frame["group"] == 13].drop(columns=["group"])
    pipe = sampler.pipeline(model)
    support, query = new.iloc[:5], new.iloc[5:]
    pred = pipe.fit(support.drop(columns="y"), support["y"]).predict(query.drop(columns="y"))
    assert pred.shape == (len(query),) and np.isfinite(pred).all()
    assert pipe[0].estimator is sampler.preprocessor_


def test_an_unusable_column_is_named():
    frame = raw_group_table()
    with pytest.raises(ValueError, match="Column 'x' of X has .* missing value.*preprocessor="):
        GroupTaskSampler(frame, "y", "group")
    with pytest.raises(ValueError, match="Column 'kind' of X is not numeric.*OneHotEncoder"):
        GroupTaskSampler(frame.fillna(0.0), "y", "group")
    from sklearn.compose import ColumnTransformer

    passthrough = ColumnTransformer([], remainder="passthrough")
    with pytest.raises(ValueError, match="output of preprocessor"):
        GroupTaskSampler(frame, "y", "group", preprocessor=passthrough)


def test_auto_adaptation_backs_off_per_task_and_fit_equals_few_shot_predict():
    # A new group whose inputs lie far outside the meta-training ones: the
    # chosen step size diverges on it; 'auto' halves it for that task alone.
    X, y, g = correlated_table(p=3, n_groups=20)
    # An explicit n_support: one adaptation for every support size (adapt_steps_, adapt_lr_).
    # The network alone (no pooled base model): its adaptation is what is tested.
    model = ReptileRegressor(
        random_state=0, n_meta_iter=200, hidden_layer_sizes=(16,), n_support=10, base_estimator=None
    )
    model.meta_fit(GroupTaskSampler(X, y, g))
    rng = np.random.default_rng(1)
    Xs_far, ys_far = 200.0 * rng.lognormal(size=(5, 3)), rng.normal(size=5)
    Xs_near, ys_near = X[:5], y[:5]
    Xq = X[5:15]
    preds = model.few_shot_predict([Xs_far, Xs_near], [ys_far, ys_near], [Xq, Xq])
    assert np.isfinite(preds).all()
    for Xs, ys, p in ((Xs_far, ys_far, preds[0]), (Xs_near, ys_near, preds[1])):
        np.testing.assert_allclose(model.fit(Xs, ys).predict(Xq), p, rtol=1e-4, atol=1e-4)
    # The near task is not affected by the far one's back-off.
    alone = model.few_shot_predict([Xs_near], [ys_near], [Xq])[0]
    np.testing.assert_allclose(alone, preds[1], rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(Xs_far, ys_far)  # 'auto': the halved step no longer raises the loss
    # An explicit step size is used as given: with the chosen one the far
    # task's loss grows (hence the back-off above), with a larger one it diverges.
    with pytest.warns(ConvergenceWarning, match="increased the loss"):
        model.set_params(adapt_lr=model.adapt_lr_).fit(Xs_far, ys_far)
    model.set_params(adapt_lr=model.adapt_lr_ * 1e3)
    with pytest.raises(FloatingPointError, match="diverged"):
        model.fit(Xs_far, ys_far)


def test_history_records_the_adaptation_steps_of_each_check():
    X, y, g = correlated_table(p=3, n_groups=20)
    model = ReptileRegressor(
        random_state=0, n_meta_iter=200, hidden_layer_sizes=(16,), monitor_interval=50
    ).meta_fit(GroupTaskSampler(X, y, g))
    steps = model.history_["validation_adapt_steps"]
    assert len(steps) == len(model.history_["validation_loss"]) == 4
    assert set(steps) <= {0, 1, 2, 4, 8, 16, 32, 64, 128}


def test_auto_adaptation_is_chosen_per_support_size_and_fit_uses_the_nearest():
    X, y, g = correlated_table(p=3, n_groups=20)
    model = ReptileRegressor(
        random_state=0, n_meta_iter=200, hidden_layer_sizes=(16,), base_estimator=None
    )
    model.meta_fit(GroupTaskSampler(X, y, g))
    rows = model.adaptation_by_support_
    assert rows[:, 0].tolist() == [4, 10, 25]
    chosen = {int(size): (int(steps), float(lr)) for size, steps, lr in rows}
    assert (model.adapt_steps_, model.adapt_lr_) == chosen[10]  # the monitored size
    assert chosen[4] != chosen[10]  # else this test could not tell them apart
    Xq = X[40:60]
    for n_rows, size in ((3, 4), (5, 4), (8, 10), (14, 10), (40, 25)):
        Xs, ys = X[:n_rows], y[:n_rows]
        steps, lr = chosen[size]
        explicit = clone(model).set_params(adapt_steps=steps, adapt_lr=lr)
        expected = explicit.fit(Xs, ys).predict(Xq)
        np.testing.assert_allclose(model.fit(Xs, ys).predict(Xq), expected, rtol=1e-6)
    # Batched prediction on tasks of several sizes: each task with its own size's choice.
    sizes = (3, 14, 5)
    preds = model.few_shot_predict([X[:n] for n in sizes], [y[:n] for n in sizes], [Xq] * 3)
    for n, p in zip(sizes, preds):
        np.testing.assert_allclose(p, model.fit(X[:n], y[:n]).predict(Xq), rtol=1e-4, atol=1e-5)
    # Kept through pickling and clone (it is meta-learned state).
    for again in (pickle.loads(pickle.dumps(model)), clone(model)):
        np.testing.assert_array_equal(again.adaptation_by_support_, rows)


def test_one_adaptation_for_an_explicit_n_support_or_an_infinite_sampler():
    X, y, g = correlated_table(p=3, n_groups=20)
    small = dict(random_state=0, n_meta_iter=100, hidden_layer_sizes=(16,))
    explicit = ReptileRegressor(n_support=6, **small).meta_fit(GroupTaskSampler(X, y, g))
    infinite = ReptileRegressor(**small).meta_fit(SineTaskSampler(random_state=0))
    for model in (explicit, infinite):
        assert not hasattr(model, "adaptation_by_support_")
        assert model._adapt_steps(3) == model._adapt_steps(40) == model.adapt_steps_
