"""The meta-training monitor: history, progress bar, early stopping, warm start, checkpoints."""

import os

import numpy as np
import pytest
from conftest import finished_checkpoint

import skreptile._engine.outer as engine_module
import skreptile._training.checkpoint as checkpoint_module
from skreptile import ReptileRegressor, SineTaskSampler
from skreptile.evaluation import split_support_query

FAST = dict(meta_batch_size=4, device="cpu", random_state=0)


def _validation(n=12, seed=5):
    X, y = SineTaskSampler().sample_batch(np.random.default_rng(seed), n)
    return split_support_query(list(zip(X, y)), 10, random_state=0)


def _line_sampler(rng):
    """Unscaled line tasks, for runs whose results must not depend on n_meta_iter."""
    x = rng.uniform(-1, 1, size=(12, 1))
    return x, rng.uniform(0.5, 1.5) * x[:, 0] + 1.0


def test_history_records_losses_and_validation():
    # A small adaptation step: early in meta-training, 32 steps of 0.1 can diverge.
    model = ReptileRegressor(n_meta_iter=250, monitor_interval=50, adapt_lr=0.02, **FAST)
    model.meta_fit(SineTaskSampler(random_state=0), validation_tasks=_validation())
    h = model.history_
    assert h["meta_iter"] == [50, 100, 150, 200, 250]
    assert set(h) == {
        "meta_iter",
        "train_loss",
        "adapted_train_loss",
        "validation_loss",
        "validation_adapt_steps",  # the issue-11 record of the adaptation steps
    }
    assert all(len(v) == 5 for v in h.values())
    assert np.isfinite(h["train_loss"]).all() and np.isfinite(h["validation_loss"]).all()
    # Within a meta-iteration the inner steps lower the task loss.
    assert np.mean(h["adapted_train_loss"]) < np.mean(h["train_loss"])
    assert model.n_meta_iter_ == 250
    assert model.best_validation_loss_ == min(h["validation_loss"])
    assert model.best_iteration_ == h["meta_iter"][int(np.argmin(h["validation_loss"]))]
    # The last entry is the validation loss of the final weights, as evaluated afterwards.
    Xs, ys, Xq, yq = zip(*_validation())
    mse = [np.mean((model.fit(a, b).predict(c) - d) ** 2) for a, b, c, d in zip(Xs, ys, Xq, yq)]
    assert h["validation_loss"][-1] == pytest.approx(np.mean(mse), rel=1e-4)


def test_history_without_validation_ends_with_the_last_iteration():
    model = ReptileRegressor(n_meta_iter=130, monitor_interval=50, **FAST)
    model.meta_fit(SineTaskSampler(random_state=0))
    assert model.history_["meta_iter"] == [50, 100, 130]
    assert "validation_loss" not in model.history_
    assert not hasattr(model, "best_iteration_")


def test_verbose_shows_a_progress_bar_with_rate_and_eta(capsys):
    ReptileRegressor(n_meta_iter=60, verbose=1, monitor_interval=20, **FAST).meta_fit(
        SineTaskSampler(random_state=0)
    )
    err = capsys.readouterr().err
    assert "meta_fit" in err and "60/60" in err
    assert "it/s" in err or "s/it" in err  # the rate
    assert "<" in err  # elapsed<remaining
    assert "train_loss=" in err


def test_early_stopping_restores_the_best_weights():
    # Training tasks are lines through (0, 1); validation tasks are lines through
    # (0, -3), scored without adaptation: the more the initialisation learns the
    # training tasks, the worse it does on validation.
    rng = np.random.default_rng(0)
    val = []
    for _ in range(5):
        x = rng.uniform(-1, 1, size=(12, 1))
        y = -x[:, 0] - 3.0
        val.append((x[:4], y[:4], x[4:], y[4:]))
    common = dict(
        FAST,
        standardize=False,
        meta_lr=0.2,
        meta_lr_schedule="constant",
        adapt_steps=0,
        inner_lr=0.05,
        monitor_interval=5,
    )
    model = ReptileRegressor(n_meta_iter=200, early_stopping=True, n_iter_no_change=3, **common)
    model.meta_fit(_line_sampler, validation_tasks=val)
    h = model.history_
    assert model.n_meta_iter_ < 200  # stopped early
    best = int(np.argmin(h["validation_loss"]))
    assert model.best_iteration_ == h["meta_iter"][best]
    assert len(h["meta_iter"]) == best + 1 + 3  # patience of three checks
    # The kept weights are those of meta-iteration best_iteration_: with a callable
    # sampler, a constant step and no scaling, a run that short gives the same.
    short = ReptileRegressor(n_meta_iter=model.best_iteration_, **common).meta_fit(_line_sampler)
    np.testing.assert_allclose(model.meta_params_, short.meta_params_, atol=1e-6)


def test_early_stopping_needs_validation_tasks():
    # Without validation_fraction nothing is held out; with it (the default) an
    # infinite sampler gives fresh held-out tasks, so early stopping works.
    with pytest.raises(ValueError, match="early_stopping=True needs validation tasks"):
        ReptileRegressor(
            n_meta_iter=5, early_stopping=True, validation_fraction=None, **FAST
        ).meta_fit(SineTaskSampler(random_state=0))
    model = ReptileRegressor(n_meta_iter=5, early_stopping=True, monitor_interval=5, **FAST)
    assert np.isfinite(model.meta_fit(SineTaskSampler(random_state=0)).best_validation_loss_)
    with pytest.raises(ValueError, match="validation_tasks must be a sequence"):
        ReptileRegressor(n_meta_iter=5, **FAST).meta_fit(
            SineTaskSampler(random_state=0), validation_tasks=[(np.ones((3, 1)), np.ones(3))]
        )


@pytest.mark.parametrize("sampler", [_line_sampler, SineTaskSampler(random_state=1)])
def test_two_warm_calls_equal_one_call_of_the_total_length(sampler):
    # n_meta_iter is the length of the whole run (as n_estimators in gradient
    # boosting): a warm call continues the run on the schedule of the whole run.
    common = dict(FAST, meta_lr_schedule="constant", monitor_interval=10)
    warm = ReptileRegressor(n_meta_iter=100, warm_start=True, **common).meta_fit(sampler)
    first = warm.meta_params_.copy()
    warm.set_params(n_meta_iter=230).meta_fit(sampler)
    assert warm.n_meta_iter_ == 230 and warm.history_["meta_iter"] == list(range(10, 231, 10))
    assert not np.allclose(first, warm.meta_params_)
    long = ReptileRegressor(n_meta_iter=230, **common).meta_fit(sampler)
    np.testing.assert_allclose(warm.meta_params_, long.meta_params_, atol=1e-6)
    np.testing.assert_allclose(warm.history_["train_loss"], long.history_["train_loss"], rtol=1e-5)
    # Without warm_start, meta_fit starts afresh.
    cold = ReptileRegressor(n_meta_iter=100, **common).meta_fit(sampler)
    cold.meta_fit(sampler)
    np.testing.assert_array_equal(cold.meta_params_, first)
    assert cold.n_meta_iter_ == 100


def test_warm_start_continues_the_linear_schedule_instead_of_restarting_it(monkeypatch):
    # On main, a warm call restarted at meta_lr (1.0: a jump to the mean of the
    # adapted weights).  Now it continues the schedule of the whole run.
    steps = []
    real = engine_module.meta_lr_at

    def record(meta_lr, schedule, iteration, n_meta_iter):
        steps.append(real(meta_lr, schedule, iteration, n_meta_iter))
        return steps[-1]

    monkeypatch.setattr(engine_module, "meta_lr_at", record)
    model = ReptileRegressor(n_meta_iter=4, warm_start=True, meta_batch_size=2, random_state=0)
    model.meta_fit(SineTaskSampler(random_state=0))
    model.set_params(n_meta_iter=8).meta_fit(SineTaskSampler(random_state=0))
    np.testing.assert_allclose(steps, [1.0, 0.75, 0.5, 0.25, 0.5, 0.375, 0.25, 0.125])
    with pytest.raises(ValueError, match="n_meta_iter=5 is the length of the whole run"):
        model.set_params(n_meta_iter=5).meta_fit(SineTaskSampler(random_state=0))


def test_warm_start_checks_the_tasks_shape():
    model = ReptileRegressor(n_meta_iter=5, warm_start=True, **FAST).meta_fit(
        SineTaskSampler(random_state=0)
    )
    with pytest.raises(ValueError, match="warm_start=True: the tasks have 2 features"):
        model.meta_fit([(np.ones((5, 2)), np.ones(5))])


def crash_on_draw(monkeypatch, n):
    """Make SineTaskSampler raise on its n-th draw, like a process killed in meta_fit.

    The class is patched rather than subclassed, so that the sampler of the run
    resumed afterwards is the same as the crashed run's, as the task
    fingerprint of the checkpoint demands.
    """
    real = SineTaskSampler.sample_batch
    calls = []

    def sample_batch(self, rng, n_tasks):
        calls.append(n_tasks)
        if len(calls) == n:
            raise RuntimeError("killed")
        return real(self, rng, n_tasks)

    monkeypatch.setattr(SineTaskSampler, "sample_batch", sample_batch)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    params = dict(
        FAST, n_meta_iter=600, monitor_interval=50, early_stopping=True, n_iter_no_change=50
    )
    val = _validation()
    reference = ReptileRegressor(**params).meta_fit(
        SineTaskSampler(random_state=0), validation_tasks=val
    )
    # Draws: 1 the scaling tasks, then one per block of 64 iterations: draw 5 is
    # block [192, 256).  Checkpoints every 70 iterations: the last, at 140, is mid-block.
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="killed"):
        crash_on_draw(m, 5)
        ReptileRegressor(checkpoint_path=path, checkpoint_interval=70, **params).meta_fit(
            SineTaskSampler(random_state=0), validation_tasks=val
        )
    assert path.exists()
    assert os.listdir(tmp_path) == ["meta.ckpt"]  # no temporary file left
    resumed = ReptileRegressor(checkpoint_path=str(path), checkpoint_interval=70, **params)
    resumed.meta_fit(SineTaskSampler(random_state=0), validation_tasks=val)
    np.testing.assert_array_equal(resumed.meta_params_, reference.meta_params_)
    assert resumed.history_ == reference.history_
    assert resumed.n_meta_iter_ == 600
    assert (resumed.best_iteration_, resumed.best_validation_loss_) == (
        reference.best_iteration_,
        reference.best_validation_loss_,
    )
    assert finished_checkpoint(path)  # a completed meta_fit keeps its checkpoint


def test_interrupted_meta_fit_leaves_a_checkpoint_to_resume_from(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    params = dict(FAST, n_meta_iter=40, monitor_interval=10, random_state=None)
    real = engine_module.meta_lr_at

    def interrupt_at_23(meta_lr, schedule, iteration, n_meta_iter):
        if iteration == 23:
            raise KeyboardInterrupt
        return real(meta_lr, schedule, iteration, n_meta_iter)

    monkeypatch.setattr(engine_module, "meta_lr_at", interrupt_at_23)
    part = ReptileRegressor(checkpoint_path=path, **params)
    with pytest.warns(RuntimeWarning, match="progress is in the checkpoint"):
        with pytest.raises(KeyboardInterrupt):
            part.meta_fit(_line_sampler)
    assert not hasattr(part, "meta_params_") and path.exists()  # the estimator is unchanged
    monkeypatch.setattr(engine_module, "meta_lr_at", real)
    # random_state=None: the seed drawn by the first run is in the checkpoint.
    resumed = ReptileRegressor(checkpoint_path=path, **params).meta_fit(_line_sampler)
    assert resumed.n_meta_iter_ == 40 and resumed.history_["meta_iter"] == [10, 20, 30, 40]
    assert finished_checkpoint(path)
    path.unlink()  # the completed run's kept checkpoint, removed as the guide says
    # Interrupted inside meta-iteration 24 and resumed, a seeded run gives what the
    # same run gives uninterrupted, history included.
    seeded = dict(params, random_state=3)
    monkeypatch.setattr(engine_module, "meta_lr_at", interrupt_at_23)
    with pytest.warns(RuntimeWarning), pytest.raises(KeyboardInterrupt):
        ReptileRegressor(checkpoint_path=path, **seeded).meta_fit(_line_sampler)
    monkeypatch.setattr(engine_module, "meta_lr_at", real)
    resumed = ReptileRegressor(checkpoint_path=path, **seeded).meta_fit(_line_sampler)
    straight = ReptileRegressor(**seeded).meta_fit(_line_sampler)
    np.testing.assert_array_equal(resumed.meta_params_, straight.meta_params_)
    assert resumed.history_ == straight.history_


def test_resuming_with_other_parameters_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    with monkeypatch.context() as m, pytest.raises(RuntimeError):
        # Draws: 1 the fresh held-out tasks (validation_fraction), 2 the scaling
        # tasks, 3 block [0, 64), 4 block [64, 128): at iteration 64, after the
        # checkpoint at 50.
        crash_on_draw(m, 4)
        ReptileRegressor(
            n_meta_iter=300, checkpoint_path=path, checkpoint_interval=50, **FAST
        ).meta_fit(SineTaskSampler(random_state=0))
    other = ReptileRegressor(n_meta_iter=300, inner_lr=0.05, checkpoint_path=path, **FAST)
    with pytest.raises(ValueError, match="other parameters \\(inner_lr: 0.1 then, 0.05 now\\)"):
        other.meta_fit(SineTaskSampler(random_state=0))
    with pytest.raises(ValueError, match="other validation tasks"):
        ReptileRegressor(n_meta_iter=300, checkpoint_path=path, **FAST).meta_fit(
            SineTaskSampler(random_state=0), validation_tasks=_validation()
        )


def test_a_file_that_is_not_a_checkpoint_is_not_overwritten(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    with pytest.raises(ValueError, match="not a readable skreptile checkpoint"):
        ReptileRegressor(n_meta_iter=5, checkpoint_path=path, **FAST).meta_fit(SineTaskSampler())
    assert path.read_text() == "my notes"


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    checkpoint_module.save_checkpoint(path, {"theta": np.arange(3.0), "n": 1})
    real_savez = np.savez

    def failing_savez(f, **arrays):
        real_savez(f, **arrays)
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_module.save_checkpoint(path, {"theta": np.zeros(3), "n": 2})
    monkeypatch.setattr(np, "savez", real_savez)
    state = checkpoint_module.load_checkpoint(path)  # the previous checkpoint, intact
    assert state["n"] == 1 and list(state["theta"]) == [0.0, 1.0, 2.0]
    assert os.listdir(tmp_path) == ["state.npz"]
    # Plain arrays and JSON: loading never needs pickle.
    with np.load(path, allow_pickle=False) as data:
        assert "__header__" in data.files


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(monitor_interval=0), "monitor_interval"),
        (dict(n_iter_no_change=0), "n_iter_no_change"),
        (dict(checkpoint_interval=0), "checkpoint_interval"),
        (dict(checkpoint_path=3), "checkpoint_path"),
        (dict(warm_start="yes"), "warm_start"),
        (dict(early_stopping=1.5), "early_stopping"),
    ],
)
def test_bad_monitor_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        ReptileRegressor(n_meta_iter=5, **FAST, **params).meta_fit(SineTaskSampler())


def test_an_interrupted_adam_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    # The interrupt comes inside meta-iteration 24, after its inner Adam steps:
    # the checkpoint must hold Adam's state as of iteration 23, not part-way.
    path = tmp_path / "adam.ckpt"
    params = dict(FAST, n_meta_iter=40, inner_optimizer="adam", inner_lr=0.01)
    real = engine_module.meta_lr_at

    def interrupt_at_23(meta_lr, schedule, iteration, n_meta_iter):
        if iteration == 23:
            raise KeyboardInterrupt
        return real(meta_lr, schedule, iteration, n_meta_iter)

    with monkeypatch.context() as m, pytest.warns(RuntimeWarning), pytest.raises(KeyboardInterrupt):
        m.setattr(engine_module, "meta_lr_at", interrupt_at_23)
        ReptileRegressor(checkpoint_path=path, **params).meta_fit(_line_sampler)
    resumed = ReptileRegressor(checkpoint_path=path, **params).meta_fit(_line_sampler)
    straight = ReptileRegressor(**params).meta_fit(_line_sampler)
    np.testing.assert_array_equal(resumed.meta_params_, straight.meta_params_)
    assert resumed.inner_optimizer_state_["t"] == straight.inner_optimizer_state_["t"] == 40 * 5
