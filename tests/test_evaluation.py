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
