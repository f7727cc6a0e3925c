"""Behaviour of ReptileRegressor: meta-learning, adaptation, scaling, determinism."""

import numpy as np
import pytest
from conftest import sine_support_and_query

from skreptile import ReptileRegressor, SineTaskSampler

FAST = dict(n_meta_iter=300, meta_batch_size=4, device="cpu")


def _held_out_mse(model, n_tasks=200, seed=123):
    Xs, ys, Xq, yq = sine_support_and_query(n_tasks, seed)
    errors = [
        np.mean((model.fit(Xs[t], ys[t]).predict(Xq[t]) - yq[t]) ** 2) for t in range(n_tasks)
    ]
    return float(np.mean(errors))


def test_meta_learning_beats_a_random_initialisation_on_new_sine_tasks():
    meta = ReptileRegressor(n_meta_iter=2000, meta_batch_size=8, device="cpu", random_state=0)
    meta.meta_fit(SineTaskSampler(random_state=0))
    scratch = ReptileRegressor(device="cpu", random_state=0)
    meta_mse, scratch_mse = _held_out_mse(meta), _held_out_mse(scratch)
    # Margin: meta-learning must at least halve the error of the same network
    # adapted with the same steps from a random initialisation.
    assert meta_mse < 0.5 * scratch_mse, (meta_mse, scratch_mse)


def test_same_random_state_gives_the_same_model():
    a = ReptileRegressor(random_state=7, **FAST).meta_fit(SineTaskSampler())
    b = ReptileRegressor(random_state=7, **FAST).meta_fit(SineTaskSampler())
    c = ReptileRegressor(random_state=8, **FAST).meta_fit(SineTaskSampler())
    np.testing.assert_array_equal(a.meta_params_, b.meta_params_)
    assert not np.allclose(a.meta_params_, c.meta_params_)
    X = np.linspace(-5, 5, 10)[:, None]
    y = np.sin(X[:, 0])
    np.testing.assert_array_equal(a.fit(X, y).predict(X), b.fit(X, y).predict(X))


def test_sampler_seed_fixes_the_tasks_independently_of_the_model_seed():
    a = ReptileRegressor(random_state=1, **FAST).meta_fit(SineTaskSampler(random_state=5))
    b = ReptileRegressor(random_state=1, **FAST).meta_fit(SineTaskSampler(random_state=6))
    assert not np.allclose(a.meta_params_, b.meta_params_)


def test_fit_always_starts_again_from_the_initialisation():
    model = ReptileRegressor(random_state=0, **FAST).meta_fit(SineTaskSampler(random_state=0))
    X = np.linspace(-5, 5, 10)[:, None]
    first = model.fit(X, 3 * np.sin(X[:, 0])).predict(X)
    model.fit(X, -2 * np.cos(X[:, 0]))
    again = model.fit(X, 3 * np.sin(X[:, 0])).predict(X)
    np.testing.assert_allclose(first, again, rtol=1e-6, atol=1e-6)


def test_fit_without_meta_fit_is_a_working_regressor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 4.0
    model = ReptileRegressor(adapt_steps=300, adapt_lr=0.05, random_state=0, device="cpu")
    assert model.fit(X, y).score(X, y) > 0.95


def test_multi_output_targets():
    def sampler(rng):
        x = rng.uniform(-2, 2, size=(20, 2))
        a = rng.uniform(-1, 1, size=2)
        return x, np.column_stack([x @ a, x @ a * 2 + 1])

    model = ReptileRegressor(random_state=0, **FAST).meta_fit(sampler)
    assert model.n_outputs_ == 2
    X = np.random.default_rng(1).uniform(-2, 2, size=(10, 2))
    Y = np.column_stack([X[:, 0], 2 * X[:, 0] + 1])
    assert model.fit(X, Y).predict(X).shape == (10, 2)
    with pytest.raises(ValueError, match="outputs"):
        model.fit(X, Y[:, 0])


def test_raw_targets_on_a_large_scale_need_no_scaler():
    # Targets around 30 with an offset per task, as real scores are.
    def sampler(rng):
        x = np.linspace(0, 1, 20)[:, None]
        return x, 30 + rng.normal(0, 3) + rng.uniform(2, 6) * x[:, 0]

    params = dict(n_meta_iter=500, meta_batch_size=4, device="cpu", random_state=0)
    model = ReptileRegressor(**params).meta_fit(sampler)
    assert abs(model.y_mean_[0] - 32) < 2
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 20)[:, None]
    errors = []
    for _ in range(20):
        y = 30 + rng.normal(0, 3) + rng.uniform(2, 6) * x[:, 0]
        idx = rng.choice(20, 5, replace=False)
        errors.append(np.mean((model.fit(x[idx], y[idx]).predict(x) - y) ** 2))
    # The targets' own variance across tasks is about 10; adaptation must do far better.
    assert np.mean(errors) < 1.0, np.mean(errors)


def test_tasks_of_different_sizes_are_masked_not_mixed():
    # One meta-iteration over three tasks of 4, 7 and 10 points, full-batch inner
    # steps and meta_lr=1: the result is the mean of the three adapted weights.
    rng = np.random.default_rng(0)
    tasks = [(rng.normal(size=(n, 2)), rng.normal(size=n)) for n in (4, 7, 10)]
    common = dict(
        hidden_layer_sizes=(8,),
        standardize=False,
        device="cpu",
        random_state=0,
        inner_lr=0.1,
        adapt_lr=None,
    )
    model = ReptileRegressor(
        n_meta_iter=1,
        meta_batch_size=3,
        meta_lr=1.0,
        meta_lr_schedule="constant",
        inner_steps=3,
        inner_batch_size=None,
        **common,
    ).meta_fit(tasks)
    init = ReptileRegressor(n_meta_iter=0, **common).meta_fit(tasks)
    adapted = [init.set_params(adapt_steps=3).fit(X, y).params_ for X, y in tasks]
    np.testing.assert_allclose(model.meta_params_, np.mean(adapted, axis=0), atol=1e-6)


def test_torch_module_returns_the_adapted_network():
    import torch

    model = ReptileRegressor(random_state=0, **FAST).meta_fit(SineTaskSampler(random_state=0))
    X = np.linspace(-5, 5, 10)[:, None]
    model.fit(X, np.sin(X[:, 0]))
    module = model.torch_module()
    with torch.no_grad():
        scaled = module(torch.tensor((X - model.x_mean_) / model.x_scale_, dtype=torch.float32))
    np.testing.assert_allclose(
        scaled.numpy()[:, 0] * model.y_scale_[0] + model.y_mean_[0], model.predict(X), atol=1e-5
    )
