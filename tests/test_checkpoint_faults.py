"""Checkpoints, step-size back-off and faults (issue 24, items 2, 3, 5, 6 and 7's checkpoint part).

Each test drives ``meta_fit`` and edits files with numpy, json and zipfile
only, so that it runs (and fails) against a skreptile without these fixes.
"""

import errno
import json
import os
import zipfile

import numpy as np
import pytest
from conftest import edit_checkpoint, interrupting_meta_lr_at

import skreptile._engine.outer as engine_module
from skreptile import ReptileRegressor, SineTaskSampler

R = dict(device="cpu", random_state=0)
# The reproducer: diverges at inner_lr 0.5 and 0.25, succeeds after two halvings.
BACKS_OFF = dict(hidden_layer_sizes=(32, 32), n_meta_iter=300, inner_lr=0.5, **R)
FAST = dict(hidden_layer_sizes=(16,), meta_batch_size=4, n_meta_iter=20, monitor_interval=5, **R)


def _sine():
    return SineTaskSampler(random_state=0)


def _interrupted(monkeypatch, path, at=7, sampler=None, **params):
    """A checkpoint left by a run interrupted (Ctrl-C) at meta-iteration ``at``."""
    with monkeypatch.context() as m, pytest.warns(RuntimeWarning, match="interrupted"):
        m.setattr(engine_module, "meta_lr_at", interrupting_meta_lr_at(at))
        with pytest.raises(KeyboardInterrupt):
            ReptileRegressor(checkpoint_path=path, **params).meta_fit(sampler or _sine())
    assert os.path.exists(path)


def _no_training(monkeypatch):
    def meta_train(*args, **kwargs):
        raise AssertionError("meta-training ran")

    monkeypatch.setattr(engine_module, "meta_train", meta_train)


# ----------------------------------------------- item 2: checkpoints and back-off
def test_a_checkpointed_run_backs_off_as_the_same_run_without_checkpoints(tmp_path):
    plain = ReptileRegressor(**BACKS_OFF).meta_fit(_sine())
    assert plain.step_size_info_["backoffs"] == 2  # the reproducer still backs off twice
    path = tmp_path / "meta.ckpt"
    checkpointed = ReptileRegressor(checkpoint_path=path, checkpoint_interval=10, **BACKS_OFF)
    checkpointed.meta_fit(_sine())
    np.testing.assert_array_equal(checkpointed.meta_params_, plain.meta_params_)
    assert checkpointed.step_size_info_ == plain.step_size_info_
    # And a rerun does not fail on what the first one left.
    again = ReptileRegressor(checkpoint_path=path, checkpoint_interval=10, **BACKS_OFF)
    np.testing.assert_array_equal(again.meta_fit(_sine()).meta_params_, plain.meta_params_)


def test_no_checkpoint_holds_non_finite_weights(tmp_path, monkeypatch):
    written = []
    real = np.savez

    def savez(f, **arrays):
        header = json.loads(str(arrays["__header__"]))
        written.append(arrays[header["theta"]["__nd__"]].copy())
        real(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    path = tmp_path / "meta.ckpt"
    ReptileRegressor(checkpoint_path=path, checkpoint_interval=10, **BACKS_OFF).meta_fit(_sine())
    assert len(written) > 20  # every attempt's checkpoints were seen
    assert all(np.isfinite(theta).all() for theta in written)


def test_a_nan_checkpoint_of_an_older_run_is_refused_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    _interrupted(monkeypatch, path, **FAST)

    def poison(header, arrays):
        arrays[header["theta"]["__nd__"]][:] = np.nan

    edit_checkpoint(path, poison)
    # Not "the step sizes are likely too large": the file is named, and what to do.
    with pytest.raises(ValueError, match="NaN") as info:
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(_sine())
    assert str(path) in str(info.value) and "delete it" in str(info.value)


# ------------------------------------------ item 3: the back-off is carried forward
def test_a_warm_start_of_a_backed_off_run_keeps_its_step_size():
    backed_off = ReptileRegressor(**BACKS_OFF).meta_fit(_sine())
    small = ReptileRegressor(**dict(BACKS_OFF, inner_lr=0.125)).meta_fit(_sine())
    # The restart after two halvings is the run at a quarter of the step size.
    np.testing.assert_array_equal(backed_off.meta_params_, small.meta_params_)
    for model in (backed_off, small):
        model.set_params(n_meta_iter=400, warm_start=True).meta_fit(_sine())
    assert np.isfinite(backed_off.meta_params_).all()
    np.testing.assert_array_equal(backed_off.meta_params_, small.meta_params_)
    assert backed_off.inner_lr_ == 0.125 and backed_off.step_size_info_["backoffs"] == 2


def test_a_resumed_backed_off_run_keeps_its_step_size(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    # Interrupted at 250, in the third attempt (the first two diverge by 100 and 200).
    _interrupted(monkeypatch, path, at=250, checkpoint_interval=10, **BACKS_OFF)
    resumed = ReptileRegressor(checkpoint_path=path, checkpoint_interval=10, **BACKS_OFF)
    resumed.meta_fit(_sine())
    plain = ReptileRegressor(**BACKS_OFF).meta_fit(_sine())
    np.testing.assert_array_equal(resumed.meta_params_, plain.meta_params_)
    assert resumed.step_size_info_ == plain.step_size_info_


# ------------------------------------------------------ item 5: kept, full disks
def test_the_checkpoint_is_kept_after_meta_fit_and_gives_the_model_back(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    fitted = ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(_sine())
    assert path.exists()
    # The process died before the model was saved: the same call gives it back untrained.
    with monkeypatch.context() as m:
        _no_training(m)
        again = ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(_sine())
    np.testing.assert_array_equal(again.meta_params_, fitted.meta_params_)
    assert (again.adapt_steps_, again.adapt_lr_, again.n_meta_iter_) == (
        fitted.adapt_steps_,
        fitted.adapt_lr_,
        fitted.n_meta_iter_,
    )
    # Other parameters: refused, saying why it is there and how to remove it.
    with pytest.raises(ValueError, match="completed meta_fit.*os.remove"):
        ReptileRegressor(checkpoint_path=path, **dict(FAST, n_meta_iter=30)).meta_fit(_sine())
    # A warm start continues the estimator, as without a checkpoint.
    fitted.set_params(n_meta_iter=30, warm_start=True).meta_fit(_sine())
    straight = ReptileRegressor(**dict(FAST, n_meta_iter=20)).meta_fit(_sine())
    straight.set_params(n_meta_iter=30, warm_start=True).meta_fit(_sine())
    np.testing.assert_array_equal(fitted.meta_params_, straight.meta_params_)


def test_a_full_disk_names_the_checkpoint_and_the_room_it_needs(tmp_path, monkeypatch):
    def full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    path = tmp_path / "meta.ckpt"
    model = ReptileRegressor(checkpoint_path=path, checkpoint_interval=5, **FAST)
    with pytest.raises(OSError, match="No space left") as info:
        model.meta_fit(_sine())
    assert str(path) in str(info.value) and "MB" in str(info.value)
    assert os.listdir(tmp_path) == []  # no temporary file left behind
    assert not hasattr(model, "meta_params_")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_device_as_checkpoint_path_is_refused_without_advising_to_delete_it():
    with pytest.raises(ValueError, match="not a regular file") as info:
        ReptileRegressor(checkpoint_path="/dev/full", **FAST).meta_fit(_sine())
    assert "delete" not in str(info.value)


# ---------------------------------------------- item 6: what a header may hold
def _set_scale(index, value):
    def edit(header, arrays):
        arrays[header["scaling"]["__tuple__"][index]["__nd__"]][:] = value

    return edit


TAMPERED = {
    "iteration far beyond n_meta_iter": lambda h, a: h.update(iteration=10**12),
    "iteration beyond n_meta_iter": lambda h, a: h.update(iteration=21),
    "infinite y_scale": _set_scale(3, np.inf),
    "NaN y_scale": _set_scale(3, np.nan),
    "zero y_scale": _set_scale(3, 0.0),
    "negative x_scale": _set_scale(1, -1.0),
    "infinite x_mean": _set_scale(0, np.inf),
    "NaN loss sums": lambda h, a: a[h["loss_sums"]["__nd__"]].fill(np.nan),
    "history beyond the iteration": lambda h, a: h["history"]["meta_iter"].__setitem__(-1, 10**6),
}


@pytest.mark.parametrize("tamper", TAMPERED, ids=list(TAMPERED))
def test_a_tampered_header_value_is_refused(tmp_path, monkeypatch, tamper):
    path = tmp_path / "meta.ckpt"
    _interrupted(monkeypatch, path, **FAST)
    edit_checkpoint(path, TAMPERED[tamper])
    with pytest.raises(ValueError, match="malformed") as info:
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(_sine())
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_an_archive_with_an_added_member_is_refused_before_reading_it(
    tmp_path, monkeypatch, compression
):
    path = tmp_path / "meta.ckpt"
    _interrupted(monkeypatch, path, **FAST)
    # 64 MB of zeros: a few kB deflated, the whole of it stored.
    size = 64 * 2**20 if compression == zipfile.ZIP_DEFLATED else 2**20
    with zipfile.ZipFile(path, "a", compression=compression) as archive:
        archive.writestr("a9.npy", bytes(size))
    read = []
    real = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        read.append(getattr(name, "filename", name))
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(ValueError, match="a9") as info:
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(_sine())
    assert str(path) in str(info.value)
    assert "a9.npy" not in read


def test_a_sampler_seeded_with_a_generator_is_not_resumed_into_other_tasks(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    params = dict(FAST, checkpoint_interval=5)
    straight = ReptileRegressor(**params).meta_fit(
        SineTaskSampler(random_state=np.random.default_rng(0))
    )
    # The user's sampler, interrupted and given again to resume: its generator moved on.
    sampler = SineTaskSampler(random_state=np.random.default_rng(0))
    _interrupted(monkeypatch, path, at=12, sampler=sampler, **params)
    resumed = ReptileRegressor(checkpoint_path=path, **params)
    try:
        resumed.meta_fit(sampler)
    except ValueError as exc:  # refused: the message says why and what to do
        assert "Generator" in str(exc) and "integer" in str(exc)
        assert str(path) in str(exc)
    else:  # or resumed to the run it continues
        np.testing.assert_array_equal(resumed.meta_params_, straight.meta_params_)


def test_an_optimiser_state_of_another_meta_batch_size_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    params = dict(FAST, inner_optimizer="adam")
    _interrupted(monkeypatch, path, **params)

    def drop_a_row(header, arrays):
        key = header["optimizer"]["v"]["__nd__"]
        arrays[key] = arrays[key][:-1]

    edit_checkpoint(path, drop_a_row)
    with pytest.raises(ValueError, match="malformed.*meta_batch_size=4") as info:
        ReptileRegressor(checkpoint_path=path, **params).meta_fit(_sine())
    assert str(path) in str(info.value)
