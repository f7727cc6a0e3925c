"""Checkpoint files: the path checked up front, task fingerprints, stale temporary files,
malformed files.

The tests of the defects drive ``meta_fit`` and edit files with numpy and json
only, so that they run (and fail) against a skreptile without ``_checkpoint``.
"""

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import edit_checkpoint, finished_checkpoint

import skreptile
import skreptile._engine.outer as engine_module
from skreptile import GroupTaskSampler, ReptileRegressor, SineTaskSampler

FAST = dict(meta_batch_size=4, device="cpu", random_state=0, n_meta_iter=20, monitor_interval=5)
ADVICE = "delete it or choose another checkpoint_path"


def _line_sampler(rng):
    x = rng.uniform(-1, 1, size=(12, 1))
    return x, rng.uniform(0.5, 1.5) * x[:, 0] + 1.0


def _other_line_sampler(rng):
    x = rng.uniform(-1, 1, size=(12, 1))
    return x, rng.uniform(0.5, 1.5) * x[:, 0] - 1.0


def _line_tasks(seed, n=6):
    rng = np.random.default_rng(seed)
    return [_line_sampler(rng) for _ in range(n)]


def _table(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 2))
    return X, X[:, 0] + rng.normal(size=60), np.repeat(["a", "b", "c", "d"], 15)


def _interrupt(monkeypatch, path, sampler, at=7, **params):
    """Run meta_fit until a KeyboardInterrupt at meta-iteration ``at``: it leaves a checkpoint."""
    real = engine_module.meta_lr_at

    def interrupt(meta_lr, schedule, iteration, n_meta_iter):
        if iteration == at:
            raise KeyboardInterrupt
        return real(meta_lr, schedule, iteration, n_meta_iter)

    with monkeypatch.context() as m, pytest.warns(RuntimeWarning, match="interrupted"):
        m.setattr(engine_module, "meta_lr_at", interrupt)
        with pytest.raises(KeyboardInterrupt):
            ReptileRegressor(checkpoint_path=path, **dict(FAST, **params)).meta_fit(sampler)
    assert os.path.exists(path)


def _no_training(monkeypatch):
    def meta_train(*args, **kwargs):
        raise RuntimeError("meta-training started")

    monkeypatch.setattr(engine_module, "meta_train", meta_train)


# ------------------------------------------------- (a) the path, checked first
@pytest.mark.parametrize("case", ["missing directory", "a directory", "under a file"])
def test_an_unusable_checkpoint_path_is_refused_before_training(tmp_path, monkeypatch, case):
    if case == "missing directory":
        path, message = tmp_path / "runs" / "meta.ckpt", "does not exist; create it"
    elif case == "a directory":
        path, message = tmp_path, "is a directory; it must name a file"
    else:
        (tmp_path / "notes.txt").write_text("my notes")
        path, message = tmp_path / "notes.txt" / "meta.ckpt", "does not exist; create it"
    _no_training(monkeypatch)
    model = ReptileRegressor(checkpoint_path=path, **FAST)
    with pytest.raises(ValueError, match=message) as info:
        model.meta_fit(SineTaskSampler(random_state=0))
    assert repr(str(path)) in str(info.value)
    assert not hasattr(model, "meta_params_")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes in read-only directories"
)
def test_a_read_only_directory_is_refused_before_training(tmp_path, monkeypatch):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        _no_training(monkeypatch)
        with pytest.raises(ValueError, match="cannot write files in .*writable directory"):
            ReptileRegressor(checkpoint_path=directory / "meta.ckpt", **FAST).meta_fit(
                SineTaskSampler(random_state=0)
            )
    finally:
        directory.chmod(0o700)


def test_an_interrupt_keeps_its_checkpoint_when_the_path_is_fine(tmp_path, monkeypatch):
    # The check writes nothing that stays: only the checkpoint is left.
    _interrupt(monkeypatch, tmp_path / "meta.ckpt", _line_sampler)
    assert os.listdir(tmp_path) == ["meta.ckpt"]


# --------------------------------------------------- (b) the tasks fingerprinted
def test_resuming_with_another_sequence_of_tasks_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    _interrupt(monkeypatch, path, _line_tasks(0))
    with pytest.raises(ValueError, match="other tasks \\(data: .* then, .* now\\)") as info:
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(_line_tasks(1))
    assert "delete the file or choose another checkpoint_path" in str(info.value)
    # The same tasks, even as new arrays, resume.
    ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(
        [(X.copy(), y) for X, y in _line_tasks(0)]
    )
    assert finished_checkpoint(path)  # kept, marked completed


def test_resuming_with_another_sampler_of_the_same_kind_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    _interrupt(monkeypatch, path, SineTaskSampler(random_state=0))
    other = SineTaskSampler(random_state=0, amplitude_range=(0.1, 3.0))
    with pytest.raises(
        ValueError, match="amplitude_range: \\(0.1, 5.0\\) then, \\(0.1, 3.0\\) now"
    ):
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(other)
    with pytest.raises(ValueError, match="random_state: 0 then, 1 now"):
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(SineTaskSampler(random_state=1))
    # Another plain function: told by its name.
    path2 = tmp_path / "line.ckpt"
    _interrupt(monkeypatch, path2, _line_sampler)
    with pytest.raises(ValueError, match="_line_sampler then, function .*_other_line_sampler now"):
        ReptileRegressor(checkpoint_path=path2, **FAST).meta_fit(_other_line_sampler)


def test_resuming_with_another_table_of_groups_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "meta.ckpt"
    _interrupt(monkeypatch, path, GroupTaskSampler(*_table(0), n_points=10))
    with pytest.raises(ValueError, match="other tasks \\(_X: float64 array of shape \\(60, 2\\)"):
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(
            GroupTaskSampler(*_table(1), n_points=10)
        )
    # The same table in a new sampler resumes.
    ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(
        GroupTaskSampler(*_table(0), n_points=10)
    )
    assert finished_checkpoint(path)  # kept, marked completed


def test_task_fingerprints():
    from skreptile import ClassTaskSampler
    from skreptile._training.fingerprints import fingerprint_tasks
    from skreptile.tasks._base import TaskSource

    def fp(sampler):
        return fingerprint_tasks(TaskSource(sampler, 0))

    rng = np.random.default_rng(0)
    X, y = rng.random((40, 16)), np.repeat(np.arange(8), 5)
    a = fp(ClassTaskSampler(X, y, n_way=3, image_shape=(4, 4), augment="rot90"))
    assert a == fp(ClassTaskSampler(X.copy(), y, n_way=3, image_shape=(4, 4), augment="rot90"))
    assert a != fp(ClassTaskSampler(X, y, n_way=2, image_shape=(4, 4), augment="rot90"))
    assert a != fp(ClassTaskSampler(X + 1, y, n_way=3, image_shape=(4, 4), augment="rot90"))
    # A generator's state is not in the checkpoint: it is described as such (issue 24, item 6).
    seeded = fp(SineTaskSampler(random_state=np.random.default_rng(3)))
    assert "random_state" not in fp(SineTaskSampler())
    assert seeded["random_state"] == "Generator (state not saved)"
    # A sampler may say what identifies it.
    sampler = SineTaskSampler()
    sampler.fingerprint = lambda: "sines v2"
    assert fp(sampler)["fingerprint"] == "sines v2"
    # Partial functions: the function and its arguments.
    assert fp(functools.partial(_line_sampler)) != fp(functools.partial(_other_line_sampler))

    class Callable:
        def __init__(self, slope):
            self.slope = slope

        def __call__(self, rng):
            return _line_sampler(rng)

    assert fp(Callable(1.0)) != fp(Callable(2.0))


def test_fingerprints_of_object_arrays_depend_on_values_not_addresses():
    pd = pytest.importorskip("pandas")
    from skreptile._training.fingerprints import fingerprint_tasks
    from skreptile.tasks._base import TaskSource

    X, y, groups = _table(0)

    def fp():
        # Column names and labels as new string objects every time: an object
        # array's bytes are their addresses, which differ between processes.
        names = ["".join(["feat", str(i)]) for i in range(2)]
        frame = pd.DataFrame(X, columns=names)
        frame["g"] = np.array(["".join(["group ", g]) for g in groups], dtype=object)
        return fingerprint_tasks(TaskSource(GroupTaskSampler(frame, y, "g"), 0))

    first = fp()
    assert first["feature_names_in_"].startswith("object array of shape (2,)")
    assert fp() == first


# ------------------------------------------------- (c) stale temporary files
def test_temporary_files_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    path = tmp_path / "meta.ckpt"
    # A process killed (SIGKILL: no cleanup runs) while writing its first checkpoint.
    code = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from skreptile import ReptileRegressor, SineTaskSampler
        real = np.savez
        def savez(f, **arrays):
            real(f, **arrays)
            os.kill(os.getpid(), signal.SIGKILL)
        np.savez = savez
        ReptileRegressor(
            n_meta_iter=20, checkpoint_interval=5, meta_batch_size=4, device="cpu",
            random_state=0, checkpoint_path={str(path)!r},
        ).meta_fit(SineTaskSampler(random_state=0))
        """
    )
    root = os.path.dirname(os.path.dirname(skreptile.__file__))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=dict(os.environ, PYTHONPATH=root)
    )
    assert done.returncode != 0
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".skreptile-ckpt-") and left[0].endswith(".tmp")
    # Files that are not this checkpoint's temporary files stay.
    others = [
        ".skreptile-ckpt-meta.ckpt.old.abc123de.tmp",  # checkpoint "meta.ckpt.old"'s
        ".skreptile-ckpt-other.ckpt.abc123de.tmp",
        "meta.tmp",
        "notes.txt",
    ]
    for name in others:
        (tmp_path / name).write_text("not ours")
    ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(SineTaskSampler(random_state=0))
    # The completed run's checkpoint is kept beside them.
    assert sorted(os.listdir(tmp_path)) == sorted([*others, "meta.ckpt"])


# --------------------------------------------------------- (d) malformed files
def _shorten(name):
    def edit(header, arrays):
        target = header[name] if name == "theta" else header["best"]["theta"]
        arrays[target["__nd__"]] = arrays[target["__nd__"]][:-1]

    return edit


MALFORMED = {
    "missing key": lambda h, a: h.pop("last_record"),
    "wrong type": lambda h, a: h.update(iteration="seven"),
    "negative counter": lambda h, a: h.update(bad_rounds=-3),
    "theta too short": _shorten("theta"),
    "best theta too short": _shorten("best"),
    "wrong signature": lambda h, a: h.update(signature=[2, 1]),
    "bad seed": lambda h, a: h.update(seed=-1),
    "bad optimiser state": lambda h, a: h.update(optimizer={"v": 1, "t": 0}),
    "feature names": lambda h, a: h.update(feature_names=["a", "b", "c"]),
    "ragged history": lambda h, a: h["history"]["train_loss"].pop(),
    "history keys": lambda h, a: h["history"].pop("validation_loss"),
    "array missing": lambda h, a: h.update(theta={"__nd__": "a999"}),
    "unknown format": lambda h, a: h.update(format=99),
    "format not an integer": lambda h, a: h.update(format=[2]),
}


@pytest.mark.parametrize("defect", list(MALFORMED))
def test_a_malformed_checkpoint_is_a_clear_error(tmp_path, monkeypatch, defect):
    path = tmp_path / "meta.ckpt"
    val = [(X[:4], y[:4], X[4:], y[4:]) for X, y in _line_tasks(9, 3)]
    params = dict(FAST, early_stopping=True)
    real = engine_module.meta_lr_at

    def interrupt(meta_lr, schedule, iteration, n_meta_iter):
        if iteration == 12:
            raise KeyboardInterrupt
        return real(meta_lr, schedule, iteration, n_meta_iter)

    with monkeypatch.context() as m, pytest.warns(RuntimeWarning):
        m.setattr(engine_module, "meta_lr_at", interrupt)
        with pytest.raises(KeyboardInterrupt):
            ReptileRegressor(checkpoint_path=path, **params).meta_fit(
                _line_sampler, validation_tasks=val
            )
    edit_checkpoint(path, MALFORMED[defect])
    before = path.read_bytes()
    model = ReptileRegressor(checkpoint_path=path, **params)
    with pytest.raises(ValueError, match=ADVICE) as info:
        model.meta_fit(_line_sampler, validation_tasks=val)
    assert repr(str(path)) in str(info.value)
    assert "malformed" in str(info.value) or "not a readable skreptile checkpoint" in str(
        info.value
    )
    assert path.read_bytes() == before  # left for the user to look at
    assert not hasattr(model, "meta_params_")


@pytest.mark.parametrize("content", ["bad json", "truncated", "text", "npy", "format 2"])
def test_an_unreadable_or_old_checkpoint_is_a_clear_error(tmp_path, monkeypatch, content):
    path = tmp_path / "meta.ckpt"
    sampler = _line_sampler
    _interrupt(monkeypatch, path, sampler)
    if content == "bad json":
        with open(path, "wb") as f:
            np.savez(f, __header__=np.array('{"format": 2, "theta": '))
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "text":
        path.write_text("my notes")
    elif content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(3.0))
    else:
        edit_checkpoint(path, lambda h, a: (h.pop("seed"), h.update(format=2)))
    with pytest.raises(ValueError, match=ADVICE) as info:
        ReptileRegressor(checkpoint_path=path, **FAST).meta_fit(sampler)
    assert repr(str(path)) in str(info.value)
    if content == "format 2":
        assert "earlier version of skreptile" in str(info.value)
