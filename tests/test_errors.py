"""Bad input gets a clear error, and a failed meta_fit leaves the estimator as it was."""

import numpy as np
import pytest

import skreptile._engine.outer as engine_module
from skreptile import ReptileRegressor, SineTaskSampler, TaskError

FAST = dict(n_meta_iter=20, meta_batch_size=2, device="cpu", random_state=0)


def _good_task(n=10, d=1):
    x = np.linspace(-1, 1, n * d).reshape(n, d)
    return x, x.sum(axis=1)


@pytest.mark.parametrize(
    "bad_task, message",
    [
        ((np.array([[1.0], [np.nan], [2.0]]), np.ones(3)), "Task 1: .*NaN"),
        ((np.ones((3, 1)), np.array([1.0, np.inf, 0.0])), "Task 1: .*infinity"),
        ((np.ones((0, 1)), np.ones(0)), "Task 1: .*0 sample"),
        ((np.ones(5), np.ones(5)), "Task 1: .*Expected 2D array"),
        ((np.ones((5, 1)), np.ones(4)), "Task 1: .*different numbers of points \\(5 and 4\\)"),
        ((np.ones((5, 2)), np.ones(5)), "Task 1 has 2 features, but earlier tasks have 1"),
        ((np.ones((1, 1)), np.ones(1)), "Task 1 has 1 point"),
        ((np.ones((5, 1)), np.ones((5, 2))), "Task 1 has 2 outputs"),
        ((np.ones((5, 1)), np.ones((5, 1, 1))), "Task 1: .*"),
        (None, "Task 1: a task sampler must return a pair \\(X, y\\), got NoneType"),
        ((np.ones((5, 1)),), "Task 1: .*pair.*length 1"),
    ],
)
def test_bad_tasks_from_a_sequence_are_named(bad_task, message):
    with pytest.raises(TaskError, match=message):
        ReptileRegressor(**FAST).meta_fit([_good_task(), bad_task])


def test_bad_task_from_a_callable_is_named_by_its_draw():
    calls = []

    def sampler(rng):
        calls.append(1)
        if len(calls) == 4:
            return np.ones((5, 1)), np.full(5, np.nan)
        return _good_task()

    with pytest.raises(TaskError, match="Task 3: .*NaN"):
        ReptileRegressor(**FAST).meta_fit(sampler)


def test_bad_batched_sampler_output_is_reported():
    class Broken(SineTaskSampler):
        def sample_batch(self, rng, n_tasks):
            X, y = super().sample_batch(rng, n_tasks)
            y[2, 5] = np.nan
            return X, y

    with pytest.raises(TaskError, match="Task 2: y contains NaN"):
        ReptileRegressor(**FAST).meta_fit(Broken(random_state=0))

    class WrongShape(SineTaskSampler):
        def sample_batch(self, rng, n_tasks):
            X, y = super().sample_batch(rng, n_tasks)
            return X[:, :, 0], y

    with pytest.raises(TaskError, match="sample_batch must return X of shape"):
        ReptileRegressor(**FAST).meta_fit(WrongShape(random_state=0))


@pytest.mark.parametrize("sampler", [42, "tasks", object()])
def test_something_that_is_not_a_sampler(sampler):
    with pytest.raises(TypeError, match="task_sampler must be"):
        ReptileRegressor(**FAST).meta_fit(sampler)


def test_empty_sequence_of_tasks():
    with pytest.raises(TaskError, match="empty"):
        ReptileRegressor(**FAST).meta_fit([])


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(n_meta_iter=-1), "n_meta_iter"),
        (dict(meta_lr=0), "meta_lr"),
        (dict(activation="softsign"), "activation"),
        (dict(inner_optimizer="rmsprop"), "inner_optimizer"),
        (dict(hidden_layer_sizes=(64, 0)), "hidden_layer_sizes"),
        (dict(device="tpu"), "device"),
    ],
)
def test_bad_parameters_are_reported_at_meta_fit_not_init(params, message):
    model = ReptileRegressor(**{**FAST, **params})  # no error yet
    with pytest.raises(ValueError, match=message):
        model.meta_fit([_good_task()])


def test_unavailable_cuda_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        ReptileRegressor(**{**FAST, "device": "cuda"}).meta_fit([_good_task()])


def test_fit_checks_its_data():
    model = ReptileRegressor(**FAST).meta_fit([_good_task(d=2)])
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.array([[1.0, np.nan]]), np.ones(1))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        model.fit(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match="X has 3 features, but ReptileRegressor is expecting 2"):
        model.fit(np.ones((3, 3)), np.ones(3))
    with pytest.raises(ValueError, match="Expected 2D array"):
        model.fit(np.ones(3), np.ones(3))


def test_diverging_meta_training_raises_and_leaves_the_model_unchanged():
    model = ReptileRegressor(**FAST).meta_fit(SineTaskSampler(random_state=0))
    before = model.meta_params_.copy()
    model.set_params(inner_lr=1e6, standardize=False)
    with pytest.raises(FloatingPointError, match="diverged.*inner_lr=1000000"):
        model.meta_fit(SineTaskSampler(random_state=0))
    np.testing.assert_array_equal(model.meta_params_, before)
    assert model.inner_lr == 1e6  # the parameters are the user's, untouched


def test_keyboard_interrupt_leaves_the_estimator_exactly_as_it_was(monkeypatch):
    # On main, Ctrl-C before the first meta-iteration of a second meta_fit replaced
    # the previous initialisation with a random one, while warning it was kept.
    params = dict(FAST, n_meta_iter=20)
    model = ReptileRegressor(**params).meta_fit(SineTaskSampler(random_state=0))
    model.fit(*_good_task(n=12))
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(model).items()}
    real_meta_lr_at = engine_module.meta_lr_at

    def interrupt_at(iteration):
        def meta_lr_at(meta_lr, schedule, i, n_meta_iter):
            if i == iteration:
                raise KeyboardInterrupt
            return real_meta_lr_at(meta_lr, schedule, i, n_meta_iter)

        return meta_lr_at

    for iteration in (0, 7):
        monkeypatch.setattr(engine_module, "meta_lr_at", interrupt_at(iteration))
        with pytest.warns(RuntimeWarning, match="left as it was"), pytest.raises(KeyboardInterrupt):
            model.set_params(inner_lr=0.05).meta_fit(SineTaskSampler(random_state=1))
        model.set_params(inner_lr=0.1)
        assert set(vars(model)) == set(before)
        for key, value in before.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(model, key), value)
        np.testing.assert_array_equal(
            model.predict(np.zeros((2, 1))), model.predict(np.zeros((2, 1)))
        )


def test_diverging_adaptation_warns_instead_of_returning_garbage_silently():
    from sklearn.exceptions import ConvergenceWarning

    model = ReptileRegressor(**FAST).meta_fit(SineTaskSampler(random_state=0))
    X = np.linspace(-5, 5, 10)[:, None]
    y = 4 * np.sin(X[:, 0])
    model.set_params(adapt_lr=0.05).fit(X, y)  # a sane step: no warning
    with pytest.warns(ConvergenceWarning, match="adapt_lr=50.0"):
        try:
            model.set_params(adapt_lr=50.0, adapt_steps=3).fit(X, y)
        except FloatingPointError:
            pytest.fail("three steps should grow the loss, not overflow it")
    with pytest.raises(FloatingPointError, match="adapt_lr=1e\\+20"):
        model.set_params(adapt_lr=1e20, adapt_steps=50).fit(X, y)
