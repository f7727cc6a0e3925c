"""Fault injection (issue 24): every fault, in every way a run starts, loses nothing.

The matrix crosses four faults, each at a chosen meta-iteration,

* ``sampler``: the task sampler raises (its last draw, at iteration 128),
* ``interrupt``: a ``KeyboardInterrupt`` (Ctrl-C) at iteration 130,
* ``diverge``: the weights become NaN at iteration 130,
* ``disk``: the disk fills at a checkpoint write (iteration 144; only with checkpoints),

with eight ways a run goes: fresh or a warm start, with or without checkpoints,
with or without a step-size back-off before the fault.  In every cell either
the estimator is exactly as before (every learned value, compared as arrays)
and running the call again without the fault gives the uninterrupted result,
bit for bit, or the run itself goes on to the uninterrupted result (a
divergence in a fresh run backs off).

A kill test then sends SIGKILL to a checkpointing ``meta_fit`` in a
subprocess at random moments, resumes it each time, and compares the result
with the uninterrupted run.
"""

import errno
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import (
    assert_unchanged,
    finished_checkpoint,
    interrupting_meta_lr_at,
    learned_snapshot,
)

import skreptile
import skreptile._engine.outer as engine_module
from skreptile import ReptileRegressor, SineTaskSampler
from skreptile.tasks import TaskSampler

# Three draws of 64 meta-iterations; no held-out tasks, so that draws are few.
PARAMS = dict(
    hidden_layer_sizes=(8,),
    meta_batch_size=2,
    inner_steps=2,
    n_meta_iter=160,
    monitor_interval=40,
    validation_fraction=None,
    device="cpu",
    random_state=0,
)
WARM_FROM = 96  # a warm start continues a run of 96 meta-iterations
BACKOFF_AT = {False: 100, True: 50}  # the injected divergence of a back-off: fresh, warm
FAULT_AT = 130
INTERVAL = 8

# The draws of the sampler, kept outside it: checkpoints fingerprint its attributes.
DRAWS = {"count": 0, "fail_at": None}


class Sines(TaskSampler):
    """Sine tasks that raise at the ``DRAWS["fail_at"]``-th draw."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def sample_batch(self, rng, n_tasks):
        DRAWS["count"] += 1
        if DRAWS["count"] == DRAWS["fail_at"]:
            raise RuntimeError("the data store went away")
        return SineTaskSampler().sample_batch(rng, n_tasks)


def _diverging(monkeypatch, *at):
    """Make the weights NaN once at each meta-iteration of ``at`` (as a divergence would)."""
    pending = set(at)
    real = engine_module._after

    def _after(iteration, theta, *args):
        if iteration in pending:
            pending.discard(iteration)
            theta.fill_(float("nan"))
        return real(iteration, theta, *args)

    monkeypatch.setattr(engine_module, "_after", _after)


def _full_disk_at(monkeypatch, write):
    """The ``write``-th checkpoint write finds the disk full."""
    real, writes = np.savez, [0]

    def savez(f, **arrays):
        writes[0] += 1
        if writes[0] == write:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    return writes


class Case:
    """One way a run goes: ``warm`` start, ``checkpoint``, a ``backoff`` before the fault."""

    def __init__(self, tmp_path, monkeypatch, warm, checkpoint, backoff):
        self.warm, self.backoff, self.monkeypatch = warm, backoff, monkeypatch
        self.path = tmp_path / "run.ckpt" if checkpoint else None

    def estimator(self):
        """The estimator the call is made on: new, or fitted to WARM_FROM for a warm start."""
        DRAWS.update(count=0, fail_at=None)
        if not self.warm:
            return ReptileRegressor(**PARAMS)
        model = ReptileRegressor(**dict(PARAMS, n_meta_iter=WARM_FROM))
        with self.monkeypatch.context() as m:
            if self.backoff:  # the run it continues backed off: the warm start keeps it
                _diverging(m, BACKOFF_AT[True])
            model.meta_fit(Sines())
        assert model.step_size_info_["backoffs"] == int(self.backoff)
        return model.set_params(n_meta_iter=PARAMS["n_meta_iter"], warm_start=True)

    def call(self, model, monkeypatch, fail_at=None):
        """The ``meta_fit`` of the case (a back-off of a fresh run diverges at 100 first),
        its sampler raising at its ``fail_at``-th draw."""
        model.set_params(checkpoint_path=self.path, checkpoint_interval=INTERVAL)
        if self.backoff and not self.warm:
            _diverging(monkeypatch, BACKOFF_AT[False])
        DRAWS.update(count=0, fail_at=fail_at)
        return model.meta_fit(Sines())


def _uninterrupted(case, tmp_path):
    """The case's result without the fault, and its numbers of draws and checkpoint writes."""
    model = case.estimator()
    with case.monkeypatch.context() as m:
        writes = _full_disk_at(m, write=None)
        case.call(model, m)
    assert model.step_size_info_["backoffs"] == int(case.backoff)
    if case.path is not None:
        assert finished_checkpoint(case.path)
        os.remove(case.path)
    return model, DRAWS["count"], writes[0]


FAULTS = ("sampler", "interrupt", "diverge", "disk")
CELLS = [
    (fault, warm, checkpoint, backoff)
    for fault, warm, checkpoint, backoff in itertools.product(FAULTS, *[(False, True)] * 3)
    if checkpoint or fault != "disk"
]


@pytest.mark.parametrize(
    "fault, warm, checkpoint, backoff",
    CELLS,
    ids=[
        f"{f}-{'warm' if w else 'fresh'}-{'ckpt' if c else 'nockpt'}-{'backoff' if b else 'plain'}"
        for f, w, c, b in CELLS
    ],
)
def test_a_fault_loses_nothing(tmp_path, monkeypatch, fault, warm, checkpoint, backoff):
    case = Case(tmp_path, monkeypatch, warm, checkpoint, backoff)
    reference, n_draws, n_writes = _uninterrupted(case, tmp_path)
    model = case.estimator()
    before = learned_snapshot(model)
    fail_at = None
    with monkeypatch.context() as m:
        if fault == "sampler":
            fail_at = n_draws  # the last draw: iterations 128 to 160
            expected = pytest.raises(RuntimeError, match="went away")
        elif fault == "interrupt":
            m.setattr(engine_module, "meta_lr_at", interrupting_meta_lr_at(FAULT_AT))
            expected = pytest.raises(KeyboardInterrupt)
        elif fault == "diverge":
            _diverging(m, FAULT_AT)
            expected = pytest.raises(FloatingPointError) if warm else None
        else:
            _full_disk_at(m, n_writes - 2)  # the periodic write of iteration 144
            expected = pytest.raises(OSError, match="No space left")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "interrupted": tested elsewhere
            if expected is None:
                case.call(model, m)
            else:
                with expected:
                    case.call(model, m, fail_at)
    if expected is None:
        # A fresh run backs off once more and ends where the run at that step size ends.
        halvings = int(backoff) + 1
        inner_lr = ReptileRegressor().inner_lr * 0.5**halvings
        straight = ReptileRegressor(**dict(PARAMS, inner_lr=inner_lr)).meta_fit(Sines())
        np.testing.assert_array_equal(model.meta_params_, straight.meta_params_)
        assert model.step_size_info_["backoffs"] == halvings
        return
    assert_unchanged(before, model)
    if checkpoint and fault != "diverge":
        # The progress is kept, up to the fault: 128 before the last draw, 130 when
        # interrupted, 136 before the write of 144 failed.
        expected_iteration = {"sampler": 128, "interrupt": FAULT_AT, "disk": 136}[fault]
        assert _saved_iteration(case.path) == expected_iteration
    case.call(model, monkeypatch)  # resumed from the checkpoint, or run again
    np.testing.assert_array_equal(model.meta_params_, reference.meta_params_)
    assert model.history_ == reference.history_
    assert model.step_size_info_ == reference.step_size_info_
    assert (model.adapt_steps_, model.adapt_lr_) == (reference.adapt_steps_, reference.adapt_lr_)


def _saved_iteration(path):
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["__header__"]))["iteration"]


# --------------------------------------------------------------------- kill -9
KILLED_RUN = dict(
    hidden_layer_sizes=(8,),
    meta_batch_size=2,
    inner_steps=2,
    # Long enough that no run ends before its kill (the kills' sleeps add to 1.6 s at
    # most, and a write can take under 2 ms on a quiet disk); the rest runs without writes.
    n_meta_iter=2000,
    monitor_interval=500,
    validation_fraction=None,
    device="cpu",
    checkpoint_interval=1,  # a write every iteration: many kills land inside one
)
KILLS = 5
# Imports once, then forks a child per run (its parameters on a line of stdin), so that
# a kill costs the run's time, not an import.  Torch is not used before forking (one
# thread, no OpenMP pool to inherit).
ZYGOTE = textwrap.dedent(
    """
    import os, sys, torch
    torch.set_num_threads(1)  # as the tests' process, for bit-identical weights
    from skreptile import ReptileRegressor, SineTaskSampler
    for line in sys.stdin:
        params = eval(line)
        pid = os.fork()
        if pid == 0:
            try:
                ReptileRegressor(**params).meta_fit(SineTaskSampler(random_state=0))
            finally:
                os._exit(0)
        print(pid, flush=True)
        print(os.waitpid(pid, 0)[1], flush=True)
    """
)
SEEDS = (1, 2, 3)
KILLS = 4  # per seed


def _temporary_files(directory):
    return [f for f in os.listdir(directory) if f.endswith(".tmp")]


def _kill_runs(zygote, params, directory, rng):
    """Start the run ``KILLS`` times, each resuming the last, and SIGKILL it at random moments.

    Returns the number of runs killed, and of those killed while writing a checkpoint.
    """
    kills = in_writes = 0
    for _ in range(KILLS):
        zygote.stdin.write(repr(params) + "\n")
        zygote.stdin.flush()
        pid = int(zygote.stdout.readline())
        time.sleep(rng.uniform(0.05, 0.4))  # into meta-training, at any point of it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # the run ended first: counted as not killed below
            pass
        status = int(zygote.stdout.readline())
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        kills += killed
        in_writes += killed and bool(_temporary_files(directory))  # a write cut short
    return kills, in_writes


def test_runs_killed_at_random_moments_resume_bit_identically(tmp_path):
    root = os.path.dirname(os.path.dirname(skreptile.__file__))
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=root),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    counts = {}
    try:
        for seed in SEEDS:
            directory = tmp_path / str(seed)
            directory.mkdir()
            params = dict(KILLED_RUN, random_state=seed, checkpoint_path=str(directory / "c"))
            counts[seed] = _kill_runs(zygote, params, directory, random.Random(seed))
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=60)
    for seed in SEEDS:
        directory = tmp_path / str(seed)
        params = dict(KILLED_RUN, random_state=seed, checkpoint_path=str(directory / "c"))
        # The first kill lands in meta-training on any machine (at most 0.4 s into a run of
        # 2000 checkpoint writes); later ones may come after a fast machine has finished,
        # and the resume must be bit-identical either way.
        assert counts[seed][0] >= 1
        assert (directory / "c").exists()
        # The rest without a write every iteration (about 9 ms each): the interval is
        # not part of what must match to resume.
        resumed = ReptileRegressor(**dict(params, checkpoint_interval=100))
        resumed.meta_fit(SineTaskSampler(random_state=0))
        straight = ReptileRegressor(**dict(params, checkpoint_path=None))
        straight.meta_fit(SineTaskSampler(random_state=0))
        np.testing.assert_array_equal(resumed.meta_params_, straight.meta_params_)
        assert resumed.history_ == straight.history_
        # No temporary file of a killed write is left once a run has started again.
        assert _temporary_files(directory) == []
    print("kills, while writing, per seed:", counts)


# ------------------------------------------------------------------------ fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.is_initialized(),
    reason="CUDA is initialised in this process: a forked child cannot use it at all",
)
def test_the_fork_fix_of_the_persistence_guide_works():
    # A parent whose torch ran on two threads (OpenMP's pool is up), then one thread
    # before forking, as the guide says: the child's predict and matrix product finish.
    model = ReptileRegressor(**dict(PARAMS, n_meta_iter=10)).meta_fit(Sines())
    torch.set_num_threads(2)  # restored after the test by conftest
    a = torch.randn(256, 256)
    (a @ a).sum()
    torch.set_num_threads(1)
    x = np.linspace(-5, 5, 4000)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking a threaded process
        pid = os.fork()
    if pid == 0:  # the child: exit at once, whatever happens
        try:
            model.fit(x[:10], np.sin(x[:10, 0])).predict(x)
            (a @ a).sum()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung: torch.set_num_threads(1) before forking did not help")
