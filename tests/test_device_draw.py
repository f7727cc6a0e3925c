"""Tasks drawn on the training device: keyed random numbers, the sine sampler's
``draw_on``, the loop's device-drawn chunks, resumption (issue 21, items 2 and 3)."""

import threading

import numpy as np
import pytest
import torch
from conftest import interrupting_meta_lr_at

import skreptile._engine.outer as engine_module
import skreptile._training.chunks as chunks_module
from skreptile import ReptileRegressor, SineTaskSampler
from skreptile._engine.keyed_random import KeyedRandom, _hash32
from skreptile._engine.minibatches import keyed_chunk
from skreptile._training.fingerprints import fingerprint_tasks
from skreptile.tasks import TaskSampler
from skreptile.tasks._base import TaskSource, draws_on_device

FAST = dict(meta_batch_size=8, n_meta_iter=60, device="cpu", random_state=0)


def _lowbias32(x):
    """The reference hash, in Python's unbounded integers."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_the_int64_hash_is_lowbias32_on_every_32_bit_word():
    words = np.random.default_rng(0).integers(0, 1 << 32, size=2000).tolist()
    words += [0, 1, 0xFFFFFFFF, 0x80000000]
    assert _hash32(torch.tensor(words)).tolist() == [_lowbias32(w) for w in words]


def test_keyed_bits_of_a_task_do_not_depend_on_the_others_drawn_with_it():
    random = KeyedRandom(12345678901234)
    ids = torch.arange(3 * (1 << 32), 3 * (1 << 32) + 100)  # ids past 32 bits too
    whole = random.bits(7, ids, 9)
    assert whole.min() >= 0 and whole.max() < (1 << 32)
    for part in (ids[::3], ids[50:], ids.flip(0)):
        rows = (part - ids[0]).long()
        assert torch.equal(random.bits(7, part, 9), whole[rows])
    # Other streams, seeds and ids give other words.
    assert not torch.equal(random.bits(8, ids, 9), whole)
    assert not torch.equal(KeyedRandom(1).bits(7, ids, 9), whole)
    assert len(set(whole.reshape(-1).tolist())) > 0.99 * whole.numel()


def test_keyed_uniforms_normals_and_permutations_have_their_distributions():
    random, ids = KeyedRandom(3), torch.arange(20000)
    u = random.uniform(0, ids, 5, 2.0, 4.0)
    assert u.dtype == torch.float32 and u.min() >= 2.0 and u.max() < 4.0
    assert abs(float(u.mean()) - 3.0) < 0.01 and abs(float(u.std()) - 2 / 12**0.5) < 0.01
    z = random.normal(1, ids, 3)
    assert z.shape == (20000, 3)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    perms = random.permutations(2, ids[:500], 2, 7)
    assert torch.equal(perms.sort(-1).values, torch.arange(7).expand(500, 2, 7))
    # Every position takes every value about equally often.
    counts = torch.stack([(perms[:, :, 0] == v).sum() for v in range(7)]).float()
    assert counts.min() > 0.7 * counts.mean()


def _draw(sampler, device="cpu"):
    random = KeyedRandom(0)
    return lambda ids: sampler.draw_tasks(random, ids, torch.device(device))


def test_device_drawn_chunks_do_not_depend_on_chunking_or_the_ranks_split():
    draw, random = _draw(SineTaskSampler(grid=False, noise_std=0.1)), KeyedRandom(0)

    def chunk(first, n, slots):
        return keyed_chunk(draw, random, torch.device("cpu"), first, n, 7, slots, 5, 10)

    x, y, weight = chunk(0, 6, (0, 7))
    assert x.shape == (6, 5, 7, 10, 1) and y.shape == (6, 5, 7, 10, 1) and weight == 0.1
    # Cut into chunks of iterations.
    assert torch.equal(torch.cat([chunk(0, 2, (0, 7))[0], chunk(2, 4, (0, 7))[0]]), x)
    # Split over ranks (slots of every meta-batch).
    halves = [chunk(0, 6, (0, 3)), chunk(0, 6, (3, 7))]
    assert torch.equal(torch.cat([h[0] for h in halves], dim=2), x)
    assert torch.equal(torch.cat([h[1] for h in halves], dim=2), y)
    # Shuffled passes: the first 5 minibatches of a task (50 of its 50 points) visit each once.
    task = x[0, :, 0, :, 0].reshape(-1)
    assert len(set(task.tolist())) == 50


def test_sine_draws_on_the_device_follow_the_sampler_ranges():
    sampler = SineTaskSampler(amplitude_range=(0.5, 3.0), phase_range=(0.0, np.pi))
    X, y = _draw(sampler)(torch.arange(20000))
    assert X.shape == (20000, 50, 1) and y.shape == (20000, 50, 1) and X.dtype == torch.float32
    np.testing.assert_allclose(X[0, :, 0].numpy(), np.linspace(-5, 5, 50), atol=1e-6)
    # y = A sin(x + phi) = A cos(phi) sin(x) + A sin(phi) cos(x): recovered by least squares.
    x = X[0, :, 0].double().numpy()
    basis = np.stack([np.sin(x), np.cos(x)], axis=1)
    coef = np.linalg.lstsq(basis, y[:, :, 0].double().numpy().T, rcond=None)[0]
    amplitude, phase = np.hypot(*coef), np.arctan2(coef[1], coef[0]) % (2 * np.pi)
    assert amplitude.min() > 0.5 - 1e-4 and amplitude.max() < 3.0 + 1e-4
    assert phase.min() > -1e-4 and phase.max() < np.pi + 1e-4
    # Roughly uniform: every tenth of each range holds about a tenth of the tasks.
    for values, (lo, hi) in ((amplitude, (0.5, 3.0)), (phase, (0.0, np.pi))):
        counts = np.histogram(values, bins=10, range=(lo, hi))[0]
        assert np.all(np.abs(counts - 2000) < 200)


def test_draw_on_resolves_per_device_and_user_samplers_keep_the_host_path():
    assert not draws_on_device(SineTaskSampler(), "cpu")
    assert draws_on_device(SineTaskSampler(), torch.device("cuda"))
    assert draws_on_device(SineTaskSampler(draw_on="device"), "cpu")
    assert not draws_on_device(SineTaskSampler(draw_on="host"), torch.device("cuda"))
    with pytest.raises(ValueError, match="draw_on"):
        draws_on_device(SineTaskSampler(draw_on="gpu"), "cpu")

    class Mine(TaskSampler):
        def sample_batch(self, rng, n_tasks):
            return SineTaskSampler().sample_batch(rng, n_tasks)

    assert not draws_on_device(Mine(), torch.device("cuda"))


def test_where_tasks_are_drawn_is_checked_on_resuming_not_the_draw_on_setting(tmp_path):
    # The setting is not fingerprinted ("auto" means either), where the run drew is.
    host = fingerprint_tasks(TaskSource(SineTaskSampler(draw_on="host"), 0))
    assert fingerprint_tasks(TaskSource(SineTaskSampler(draw_on="device"), 0)) == host
    path = tmp_path / "run.ckpt"
    params = dict(FAST, n_meta_iter=20, checkpoint_path=path, checkpoint_interval=5)
    _interrupt_at(9, params, SineTaskSampler(draw_on="device"))  # leaves iteration 5's file
    with pytest.raises(ValueError, match="drew its tasks on the device, but this one draws"):
        ReptileRegressor(**params).meta_fit(SineTaskSampler(draw_on="host"))
    with pytest.raises(ValueError, match="draw_on='device'"):
        ReptileRegressor(**params).meta_fit(SineTaskSampler())  # "auto" on the CPU: the host
    resumed = ReptileRegressor(**params).meta_fit(SineTaskSampler(draw_on="device"))
    whole = ReptileRegressor(**dict(params, checkpoint_path=None))
    np.testing.assert_array_equal(
        resumed.meta_params_, whole.meta_fit(SineTaskSampler(draw_on="device")).meta_params_
    )
    # A host-drawn checkpoint resumes under "auto" on the CPU, which draws on the host.
    path.unlink()  # the completed run's checkpoint, kept until removed
    _interrupt_at(9, params, SineTaskSampler(draw_on="host"))
    resumed = ReptileRegressor(**params).meta_fit(SineTaskSampler())
    whole = ReptileRegressor(**dict(params, checkpoint_path=None)).meta_fit(SineTaskSampler())
    np.testing.assert_array_equal(resumed.meta_params_, whole.meta_params_)


def _interrupt_at(iteration, params, sampler):
    """A run interrupted at ``iteration``: its last checkpoint stays."""
    with pytest.MonkeyPatch.context() as m, pytest.warns(RuntimeWarning, match="interrupted"):
        m.setattr(engine_module, "meta_lr_at", interrupting_meta_lr_at(iteration))
        with pytest.raises(KeyboardInterrupt):
            ReptileRegressor(**params).meta_fit(sampler)
    assert params["checkpoint_path"].exists()


def _held_out_mse(model):
    X, y = SineTaskSampler().sample_batch(np.random.default_rng(99), 40)
    rng, errors = np.random.default_rng(5), []
    for Xt, yt in zip(X, y):
        order = rng.permutation(50)
        model.fit(Xt[order[:10]], yt[order[:10]])
        errors.append(np.mean((model.predict(Xt[order[10:]]) - yt[order[10:]]) ** 2))
    return float(np.mean(errors))


def test_meta_fit_drawing_on_the_device_learns_and_is_deterministic():
    params = dict(FAST, n_meta_iter=400)
    device = ReptileRegressor(**params).meta_fit(SineTaskSampler(draw_on="device"))
    again = ReptileRegressor(**params).meta_fit(SineTaskSampler(draw_on="device"))
    np.testing.assert_array_equal(device.meta_params_, again.meta_params_)
    host = ReptileRegressor(**params).meta_fit(SineTaskSampler(draw_on="host"))
    assert not np.array_equal(device.meta_params_, host.meta_params_)  # other streams
    untrained = ReptileRegressor(**dict(params, n_meta_iter=1)).meta_fit(SineTaskSampler())
    device_mse, host_mse = _held_out_mse(device), _held_out_mse(host)
    assert device_mse < 2 * host_mse and host_mse < 2 * device_mse
    assert device_mse < 0.7 * _held_out_mse(untrained)


def test_on_the_cpu_the_host_path_is_the_default_one():
    default = ReptileRegressor(**FAST).meta_fit(SineTaskSampler())
    host = ReptileRegressor(**FAST).meta_fit(SineTaskSampler(draw_on="host"))
    np.testing.assert_array_equal(default.meta_params_, host.meta_params_)


def test_device_drawing_builds_no_host_array_that_grows_with_the_meta_batch(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the host path ran")

    for name in ("task_minibatches", "assemble_chunk"):
        monkeypatch.setattr(chunks_module, name, forbidden)
    monkeypatch.setattr(TaskSource, "draw_for", forbidden)
    asked = []
    real = SineTaskSampler.sample_batch

    def sample_batch(self, rng, n_tasks):
        asked.append(n_tasks)
        return real(self, rng, n_tasks)

    monkeypatch.setattr(SineTaskSampler, "sample_batch", sample_batch)
    drawn = []
    real_draw = SineTaskSampler.draw_tasks

    def draw_tasks(self, random, task_ids, device):
        drawn.append(len(task_ids))
        return real_draw(self, random, task_ids, device)

    monkeypatch.setattr(SineTaskSampler, "draw_tasks", draw_tasks)
    params = dict(FAST, meta_batch_size=1024, n_meta_iter=3, validation_fraction=None)
    ReptileRegressor(**params).meta_fit(SineTaskSampler(draw_on="device"))
    # Only the fixed 256 tasks of the scaling statistics were drawn on the host.
    assert asked and max(asked) <= chunks_module.N_STATS_TASKS
    assert sum(drawn) == 3 * 1024


def test_device_drawn_runs_resume_and_warm_start_as_uninterrupted(tmp_path, monkeypatch):
    params = dict(FAST, n_meta_iter=40, meta_lr_schedule="constant")
    whole = ReptileRegressor(**params).meta_fit(SineTaskSampler(draw_on="device"))
    warm = ReptileRegressor(**dict(params, n_meta_iter=15, warm_start=True))
    warm.meta_fit(SineTaskSampler(draw_on="device"))
    warm.set_params(n_meta_iter=40).meta_fit(SineTaskSampler(draw_on="device"))
    np.testing.assert_allclose(warm.meta_params_, whole.meta_params_, atol=1e-6)

    path = tmp_path / "run.ckpt"
    with monkeypatch.context() as m, pytest.warns(RuntimeWarning, match="interrupted"):
        m.setattr(engine_module, "meta_lr_at", interrupting_meta_lr_at(23))
        with pytest.raises(KeyboardInterrupt):
            ReptileRegressor(checkpoint_path=path, **params).meta_fit(
                SineTaskSampler(draw_on="device")
            )
    resumed = ReptileRegressor(checkpoint_path=path, **params)
    resumed.meta_fit(SineTaskSampler(draw_on="device"))
    np.testing.assert_allclose(resumed.meta_params_, whole.meta_params_, atol=1e-6)


def test_prefetch_keeps_the_order_raises_the_producers_error_and_stops_on_close():
    from skreptile._training.prefetch import prefetch

    assert list(prefetch(iter(range(20)))) == list(range(20))

    def failing():
        yield 1
        yield 2
        raise ValueError("the store went away")

    got = []
    with pytest.raises(ValueError, match="went away"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]

    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    before = threading.active_count()
    items = prefetch(endless())
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # as an early stop or a KeyboardInterrupt in the consumer does
    assert closed == [True] and threading.active_count() == before
