"""Held-out evaluation: adaptation as fit does it, baselines on the same points, honest CIs."""

import matplotlib
import numpy as np
import pytest
from scipy import stats
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.dummy import DummyRegressor
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, Ridge

from skreptile import GroupTaskSampler, ReptileRegressor, SineTaskSampler
from skreptile.evaluation import (
    FewShotResults,
    default_baselines,
    evaluate_few_shot,
    plot_few_shot,
    split_support_query,
)

matplotlib.use("Agg")

FAST = dict(n_meta_iter=100, meta_batch_size=4, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def sine_model():
    return ReptileRegressor(**FAST).meta_fit(SineTaskSampler(random_state=0))


def _sine_tasks(n, seed=1):
    X, y = SineTaskSampler().sample_batch(np.random.default_rng(seed), n)
    return list(zip(X, y))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_adaptation_matches_fit_then_predict(optimizer):
    model = ReptileRegressor(inner_optimizer=optimizer, adapt_lr=0.02, **FAST)
    model.meta_fit(SineTaskSampler(random_state=0))
    rng = np.random.default_rng(0)
    # Support sets of different sizes exercise the padded, masked path.
    tasks = []
    for n_support in (3, 7, 10):
        X, y = _sine_tasks(1, seed=n_support)[0]
        idx = rng.permutation(50)
        tasks.append(
            (X[idx[:n_support]], y[idx[:n_support]], X[idx[n_support:]], y[idx[n_support:]])
        )
    results = evaluate_few_shot(model, tasks, adapt_steps=[0, 3, 12])
    for row, steps in zip(results.model_errors, [0, 3, 12]):
        expected = [
            np.mean((model.set_params(adapt_steps=steps).fit(Xs, ys).predict(Xq) - yq) ** 2)
            for Xs, ys, Xq, yq in tasks
        ]
        np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-6)


def test_multi_output_targets():
    def sampler(rng):
        x = rng.uniform(-1, 1, size=(12, 1))
        a = rng.uniform(-1, 1)
        return x, np.column_stack([a * x[:, 0], -a * x[:, 0] + 1])

    model = ReptileRegressor(**FAST).meta_fit(sampler)
    tasks = [sampler(np.random.default_rng(s)) for s in range(5)]
    results = evaluate_few_shot(model, tasks, n_support=4, adapt_steps=[2], random_state=0)
    split = split_support_query(tasks, 4, random_state=0)
    expected = [
        np.mean((model.set_params(adapt_steps=2).fit(Xs, ys).predict(Xq) - yq) ** 2)
        for Xs, ys, Xq, yq in split
    ]
    np.testing.assert_allclose(results.model_errors[0], expected, rtol=1e-4, atol=1e-6)


class Recorder(RegressorMixin, BaseEstimator):
    """Remembers the points every clone was fitted on."""

    seen = []

    def fit(self, X, y):
        Recorder.seen.append((X.copy(), y.copy()))
        self.mean_ = y.mean()
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_)


def test_baselines_are_fitted_on_the_same_support_points(sine_model):
    Recorder.seen = []
    tasks = _sine_tasks(6)
    results = evaluate_few_shot(
        sine_model,
        tasks,
        n_support=5,
        baselines=[Recorder(), LinearRegression(), Recorder()],
        adapt_steps=[1],
        random_state=3,
    )
    split = split_support_query(tasks, 5, random_state=3)
    assert list(results.baseline_errors) == ["Recorder", "LinearRegression", "Recorder #2"]
    assert len(Recorder.seen) == 12
    for (X, y), (Xs, ys, _, _) in zip(Recorder.seen, split * 2):
        np.testing.assert_array_equal(X, Xs)
        np.testing.assert_array_equal(y, ys)
    # The mean of the support as a prediction, scored on the query points.
    expected = [np.mean((yq - ys.mean()) ** 2) for _, ys, _, yq in split]
    np.testing.assert_allclose(results.errors("Recorder"), expected)


def test_confidence_intervals_and_paired_differences():
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, size=50), rng.gamma(2.5, size=50)
    res = FewShotResults(None, [], None, {"a": a, "b": b}, "mse", 0.9)
    row = res.summary()[0]
    low, high = stats.t.interval(0.9, 49, loc=a.mean(), scale=stats.sem(a))
    assert row["mean"] == pytest.approx(a.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    diff = res.compare("a", "b")
    low, high = stats.t.interval(0.9, 49, loc=(a - b).mean(), scale=stats.sem(a - b))
    assert (diff["mean"], diff["ci_low"], diff["ci_high"]) == pytest.approx(
        ((a - b).mean(), low, high)
    )
    assert diff["ratio"] == pytest.approx(a.mean() / b.mean())
    assert res.best_baseline() == ("a" if a.mean() < b.mean() else "b")


def test_summary_table_and_frame(sine_model):
    results = evaluate_few_shot(
        sine_model,
        _sine_tasks(8),
        n_support=10,
        adapt_steps=(0, 4),
        baselines={"mean": DummyRegressor()},
        metric="rmse",
        random_state=0,
    )
    frame = results.to_frame()
    assert list(frame["method"]) == ["ReptileRegressor"] * 2 + ["mean"]
    assert list(frame.columns) == ["method", "adapt_steps", "mean", "ci_low", "ci_high", "n_tasks"]
    assert (frame["ci_low"] < frame["mean"]).all() and (frame["mean"] < frame["ci_high"]).all()
    text = str(results)
    assert "95% CI" in text and "rmse" in text and "mean" in text
    assert results.errors("ReptileRegressor", 4).shape == (8,)
    with pytest.raises(KeyError, match="adapt_steps=7"):
        results.errors("ReptileRegressor", 7)
    with pytest.raises(KeyError, match="Unknown method"):
        results.errors("Ridge")


def test_model_without_meta_fit_is_fitted_from_scratch_per_task():
    tasks = _sine_tasks(3)
    model = ReptileRegressor(hidden_layer_sizes=(8,), device="cpu", random_state=0)
    results = evaluate_few_shot(model, tasks, n_support=10, adapt_steps=[5], random_state=0)
    split = split_support_query(tasks, 10, random_state=0)
    expected = [
        np.mean((model.set_params(adapt_steps=5).fit(Xs, ys).predict(Xq) - yq) ** 2)
        for Xs, ys, Xq, yq in split
    ]
    np.testing.assert_allclose(results.model_errors[0], expected, rtol=1e-5)


def test_group_sampler_tasks_and_frozen_baselines():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(60, 1))
    g = np.repeat(np.arange(6), 10)
    y = x[:, 0] * (1 + g)
    frozen = FrozenEstimator(Ridge().fit(x, y))  # trained elsewhere, not refitted per task
    results = evaluate_few_shot(
        None,
        GroupTaskSampler(x, y, g),
        n_support=3,
        baselines={"frozen": frozen, "per-task": LinearRegression()},
        random_state=0,
    )
    assert results.n_tasks == 6 and results.model_errors is None
    assert results.errors("per-task").max() < 1e-20  # exact lines from 3 points
    assert results.errors("frozen").min() > 1e-3


def test_split_support_query():
    tasks = [
        (np.arange(12.0)[:, None], np.arange(12.0)),
        (np.arange(7.0)[:, None], -np.arange(7.0)),
    ]
    split = split_support_query(tasks, 4, random_state=0)
    for (X, _), (Xs, ys, Xq, _) in zip(tasks, split):
        assert len(Xs) == 4 and len(Xq) == len(X) - 4
        assert sorted(np.concatenate([Xs[:, 0], Xq[:, 0]])) == list(X[:, 0])
        np.testing.assert_array_equal(np.abs(ys), np.abs(Xs[:, 0]))
    again = split_support_query(tasks, 4, random_state=0)
    np.testing.assert_array_equal(split[0][0], again[0][0])
    with pytest.raises(ValueError, match="Task 1 has 7 points: n_support=7 leaves none"):
        split_support_query(tasks, 7)
    with pytest.raises(ValueError, match="n_support"):
        split_support_query(tasks, 0)


def test_errors_are_clear(sine_model):
    tasks = _sine_tasks(3)
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate_few_shot(None, tasks, n_support=5)
    with pytest.raises(TypeError, match="pass other estimators as baselines"):
        evaluate_few_shot(Ridge(), tasks, n_support=5)
    with pytest.raises(ValueError, match="metric"):
        evaluate_few_shot(sine_model, tasks, n_support=5, metric="r2")
    with pytest.raises(ValueError, match="pass n_support"):
        evaluate_few_shot(sine_model, tasks)
    with pytest.raises(ValueError, match="adapt_steps"):
        evaluate_few_shot(sine_model, tasks, n_support=5, adapt_steps=[-1])
    wide = [(np.ones((8, 2)), np.ones(8))]
    with pytest.raises(
        ValueError, match="Task 0 has 2 features, but ReptileRegressor is expecting 1"
    ):
        evaluate_few_shot(sine_model, wide, n_support=4)


def test_diverging_adaptation_scores_infinity_with_a_warning(sine_model):
    model = sine_model.set_params(adapt_lr=1e4)
    try:
        with pytest.warns(RuntimeWarning, match="Adaptation diverged on .* tasks after 8 steps"):
            results = evaluate_few_shot(
                model, _sine_tasks(4), n_support=10, adapt_steps=[0, 8], random_state=0
            )
    finally:
        model.set_params(adapt_lr=None)
    assert np.isfinite(results.model_errors[0]).all()
    assert np.isinf(results.model_errors[1]).all()
    assert np.isinf(results.summary()[1]["mean"])


def test_plot_draws_the_curve_and_one_line_per_baseline(sine_model):
    import matplotlib.pyplot as plt

    results = evaluate_few_shot(
        sine_model,
        _sine_tasks(5),
        n_support=10,
        adapt_steps=[0, 2, 8],
        baselines=[Ridge(), DummyRegressor()],
        random_state=0,
    )
    fig, ax = plt.subplots()
    assert plot_few_shot(results, ax=ax) is ax
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["ReptileRegressor", "Ridge", "DummyRegressor"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [0, 2, 8])
    plt.close(fig)


# ------------------------------------------------------------ classification
FAST_C = dict(device="cpu", random_state=0)
CENTRES = np.random.default_rng(0).normal(scale=3.0, size=(30, 4))


def _blob_task(rng, n_way=5, shots=3):
    """An N-way task of Gaussian blobs around class centres, labels 0..N-1."""
    labels = np.repeat(np.arange(n_way), shots)
    chosen = rng.choice(len(CENTRES), n_way, replace=False)
    return CENTRES[chosen[labels]] + 0.3 * rng.normal(size=(len(labels), 4)), labels


@pytest.fixture(scope="module")
def five_way_model():
    from skreptile import ReptileClassifier

    model = ReptileClassifier(hidden_layer_sizes=(16,), n_meta_iter=20, adapt_steps=4, **FAST_C)
    return model.meta_fit(_blob_task)


def _accuracy_by_fit(model, task, steps):
    Xs, ys, Xq, yq = task
    return np.mean(model.set_params(adapt_steps=steps).fit(Xs, ys).predict(Xq) == yq)


@pytest.mark.parametrize("n_way", [2, 3, 5])
def test_fewer_ways_than_meta_training_predict_alike_everywhere(five_way_model, n_way):
    model, rng = five_way_model, np.random.default_rng(n_way)
    tasks = []
    for _ in range(3):
        X, y = _blob_task(rng, n_way, shots=4)
        names = np.array(["ant", "bee", "cat", "dog", "eel"])[y]  # any labels
        tasks.append((X[::2], names[::2], X[1::2], names[1::2]))
    model.set_params(adapt_steps=4)
    batched = model.few_shot_predict(*[[t[i] for t in tasks] for i in range(3)])
    for (Xs, ys, Xq, _), pred in zip(tasks, batched):
        np.testing.assert_array_equal(model.fit(Xs, ys).predict(Xq), pred)
        assert model.predict_proba(Xq).shape == (len(Xq), n_way)
        assert set(pred) <= set(ys)
    results = evaluate_few_shot(model, tasks, adapt_steps=[0, 4])
    for row, steps in zip(results.model_errors, [0, 4]):
        np.testing.assert_allclose(row, [_accuracy_by_fit(model, t, steps) for t in tasks])
    model.set_params(adapt_steps=4)


def test_tasks_of_different_ways_and_unequal_shots_in_one_call(five_way_model):
    model, rng = five_way_model, np.random.default_rng(7)
    X2, y2 = _blob_task(rng, 2, shots=4)
    X5, y5 = _blob_task(rng, 5, shots=2)
    # 3 examples of class 0 and 1 of class 1; query points of both classes.
    uneven = np.array([0, 1, 2, 4])
    rest = np.setdiff1d(np.arange(8), uneven)
    tasks = [
        (X2[uneven], y2[uneven], X2[rest], y2[rest]),
        (X5[::2], y5[::2], X5[1::2], y5[1::2]),
    ]
    assert np.bincount(tasks[0][1]).tolist() == [3, 1]
    preds = model.few_shot_predict(*[[t[i] for t in tasks] for i in range(3)])
    for (Xs, ys, Xq, _), pred in zip(tasks, preds):
        np.testing.assert_array_equal(model.fit(Xs, ys).predict(Xq), pred)
    results = evaluate_few_shot(model, tasks, adapt_steps=[4], baselines="auto")
    np.testing.assert_allclose(
        results.model_errors[0], [_accuracy_by_fit(model, t, 4) for t in tasks]
    )
    model.set_params(adapt_steps=4)
    assert all(np.isfinite(results.errors(name)).all() for name in results.baseline_errors)


def test_more_ways_than_outputs_are_refused_naming_the_limit(five_way_model):
    X, y = _blob_task(np.random.default_rng(3), 6, shots=2)
    message = "has 6 classes, .* meta-learned for 5-way tasks: .* at most 5 classes"
    with pytest.raises(ValueError, match=message):
        five_way_model.fit(X, y)
    with pytest.raises(ValueError, match="Task 0 " + message):
        five_way_model.few_shot_predict([X], [y], [X])
    with pytest.raises(ValueError, match="Task 0 " + message):
        evaluate_few_shot(five_way_model, [(X, y, X, y)], adapt_steps=[0])


def _centroid_task(offset):
    """Labels by the nearest class mean: nearest centroid is exact, 1-NN is not.

    Class "a" has 3 support points around its mean, "b" one; the query point
    at 1.6 is nearer b's mean (3) than a's (0), but nearer a's point at 1.
    """
    support = np.array([[-1.0, 0], [0, 0], [1, 0], [3, 0]]) + offset
    query = np.array([[1.6, 0], [-0.5, 0], [2.5, 0], [1.4, 0]]) + offset
    return support, np.array(["a", "a", "a", "b"]), query, np.array(["b", "a", "b", "a"])


def test_default_baselines_score_what_they_should():
    tasks = [_centroid_task(offset) for offset in np.random.default_rng(0).normal(size=(5, 2))]
    results = evaluate_few_shot(None, tasks, baselines=default_baselines(classifier=True))
    np.testing.assert_array_equal(results.errors("nearest centroid"), 1.0)
    np.testing.assert_array_equal(results.errors("1-NN"), 0.75)
    names = [row["method"] for row in results.summary()]
    assert names == ["1-NN", "nearest centroid", "logistic regression"]
    assert "logistic regression" in str(results)
    regression = default_baselines(classifier=False)
    assert list(regression) == ["support mean", "ridge"]
    assert (
        default_baselines(classifier=True)["1-NN"] is not default_baselines(classifier=True)["1-NN"]
    )


def test_auto_baselines_on_images_see_flat_rows_and_one_shot_log_loss_is_finite():
    from skreptile import ReptileClassifier

    rng = np.random.default_rng(1)

    def image_task(rng):
        X, y = _blob_task(rng, 3, shots=2)
        return X.reshape(-1, 1, 2, 2), y

    model = ReptileClassifier(hidden_layer_sizes=(8,), n_meta_iter=5, **FAST_C)
    model.meta_fit(image_task)
    tasks = []
    for _ in range(3):
        X, y = image_task(rng)
        tasks.append((X[::2], y[::2], X[1::2], y[1::2]))  # one shot, three ways
    for metric in ("accuracy", "log_loss"):
        results = evaluate_few_shot(model, tasks, adapt_steps=[0], baselines="auto", metric=metric)
        flat = [(Xs.reshape(3, -1), ys, Xq.reshape(3, -1), yq) for Xs, ys, Xq, yq in tasks]
        alone = evaluate_few_shot(
            None, flat, baselines=default_baselines(classifier=True), metric=metric
        )
        assert list(results.baseline_errors) == ["1-NN", "nearest centroid", "logistic regression"]
        for name, errors in alone.baseline_errors.items():
            assert np.isfinite(errors).all(), (metric, name)
            np.testing.assert_allclose(results.errors(name), errors)


def test_auto_regression_baselines():
    tasks = _sine_tasks(4)
    model = ReptileRegressor(hidden_layer_sizes=(8,), n_meta_iter=5, **FAST_C)
    model.meta_fit(SineTaskSampler(random_state=0))
    results = evaluate_few_shot(
        model, tasks, n_support=5, adapt_steps=[0], baselines="auto", random_state=0
    )
    split = split_support_query(tasks, 5, random_state=0)
    expected = [np.mean((yq - ys.mean()) ** 2) for _, ys, _, yq in split]
    np.testing.assert_allclose(results.errors("support mean"), expected)
    assert np.isfinite(results.errors("ridge")).all()


def test_a_baseline_that_cannot_fit_a_task_is_named_with_the_task():
    tasks = [_centroid_task(0.0), _centroid_task(1.0)]
    Xs, ys, Xq, yq = tasks[1]
    tasks[1] = (Xs[:3], ys[:3], Xq, yq)  # one class in the support set
    baselines = {"my logistic": default_baselines(classifier=True)["logistic regression"]}
    with pytest.raises(
        ValueError, match="Baseline 'my logistic' failed on task 1 .*1 class.*at least 2 classes"
    ):
        evaluate_few_shot(None, tasks, baselines=baselines)
    with pytest.raises(ValueError, match="model is None. Pass default_baselines"):
        evaluate_few_shot(None, tasks, baselines="auto")
    with pytest.raises(ValueError, match="baselines must be 'auto'"):
        evaluate_few_shot(None, tasks, baselines="all")
