"""Data-parallel meta_fit: two gloo processes on the CPU, spawned by the tests.

The processes run tests/_distributed_worker.py; what they fit is compared with
the same estimators fitted here, in one process.  Task j of meta-iteration t is
the same on any number of ranks, so only the order of float summation differs.
"""

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _distributed_worker import (
    FAIL_AFTER_CALLS,
    FAILING,
    LINE,
    Line,
    fit_all,
    fit_device_drawn,
    validation_tasks,
)
from conftest import finished_checkpoint

from skreptile import ReptileRegressor
from skreptile.distributed import ProcessInfo, RankFailedError, init_from_env, is_main_process

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_distributed_worker.py"
TOL = 1e-5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(scenario, outdir, checkpoint=None, world=2, timeout=240):
    """Run ``world`` ranks of the worker; return each rank's pickled results."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        args = [sys.executable, str(WORKER), scenario, str(outdir)]
        args += [] if checkpoint is None else [str(checkpoint)]
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log}"
    results = []
    for rank in range(world):
        with open(Path(outdir) / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def _fail_at_64(path):
    """A one-process run of FAILING whose tasks give out at iteration 64: it leaves a checkpoint.

    (Not a KeyboardInterrupt: that one saves Adam's state in the middle of the
    interrupted iteration, so that even one process resumes only to 1e-3.)
    """
    LINE["fail_after"] = FAIL_AFTER_CALLS
    try:
        with pytest.raises(ValueError, match="went away"):
            ReptileRegressor(checkpoint_path=path, **FAILING).meta_fit(Line())
    finally:
        LINE["fail_after"] = None
    assert path.exists()


def _same_fit(distributed, single):
    """Two fitted estimators agree: weights to TOL, same bookkeeping."""
    assert _max_diff(distributed.meta_params_, single.meta_params_) < TOL
    assert distributed.n_meta_iter_ == single.n_meta_iter_
    assert distributed.history_.keys() == single.history_.keys()
    for key, values in single.history_.items():
        np.testing.assert_allclose(distributed.history_[key], values, rtol=1e-4, atol=1e-6)
    if getattr(single, "inner_optimizer_state_", None) is not None:
        state, expected = distributed.inner_optimizer_state_, single.inner_optimizer_state_
        assert np.shape(state["v"]) == np.shape(expected["v"]) and state["t"] == expected["t"]
        assert _max_diff(state["v"], expected["v"]) < TOL
    for attr in ("best_iteration_", "best_validation_loss_"):
        assert getattr(distributed, attr, None) == pytest.approx(getattr(single, attr, None))


def test_two_processes_give_the_weights_of_one_and_resume_its_checkpoint(tmp_path):
    # A one-process checkpoint after 64 of 96 iterations, resumed by two processes.
    checkpoint = tmp_path / "one.ckpt"
    _fail_at_64(checkpoint)
    ranks = _spawn("fit", tmp_path, checkpoint)
    single = fit_all()
    single["resumed"] = ReptileRegressor(**FAILING).meta_fit(Line())
    for name, expected in single.items():
        first, second = ranks[0][name], ranks[1][name]
        # Identical on every rank, bit for bit, and the single-process fit up to summation order.
        np.testing.assert_array_equal(first.meta_params_, second.meta_params_)
        _same_fit(first, expected)
    assert finished_checkpoint(checkpoint)  # rank 0 kept it, completed, at the end
    # Unpickled here, with no process group, the fitted estimators adapt and predict.
    X, y, X_query, _ = validation_tasks()[0]
    predicted = ranks[1]["validated"].fit(X, y).predict(X_query)
    np.testing.assert_allclose(predicted, single["validated"].fit(X, y).predict(X_query), atol=1e-4)


def test_ranks_drawing_on_the_device_draw_only_their_share(tmp_path):
    ranks = _spawn("device", tmp_path)
    single = fit_device_drawn()
    # Task ids are iteration * 5 + slot; rank 0 holds slots [0, 2), rank 1 [2, 5)
    # (group.share); each draws only those: together, once each, what one process draws.
    assert sorted(ranks[0]["drawn"] + ranks[1]["drawn"]) == single["drawn"]
    assert single["drawn"] == list(range(40 * 5))
    assert {i % 5 for i in ranks[0]["drawn"]} == {0, 1}
    assert {i % 5 for i in ranks[1]["drawn"]} == {2, 3, 4}
    np.testing.assert_array_equal(
        ranks[0]["regressor"].meta_params_, ranks[1]["regressor"].meta_params_
    )
    _same_fit(ranks[0]["regressor"], single["regressor"])


def test_a_failing_rank_stops_the_other_and_two_processes_resume_on_one(tmp_path):
    checkpoint = tmp_path / "two.ckpt"
    ranks = _spawn("fail", tmp_path, checkpoint)
    # Rank 1 raised its own error; rank 0 stopped at once with rank 1's error in its message.
    assert ranks[1]["error"] == ("ValueError", "the task store went away")
    kind, message = ranks[0]["error"]
    assert kind == "RankFailedError"
    assert "rank 1" in message and "ValueError: the task store went away" in message
    # Rank 0 checkpointed iteration 64 (Adam's per-slot state gathered from both
    # ranks); one process resumes it and ends where one uninterrupted process does.
    assert checkpoint.exists()
    resumed = ReptileRegressor(checkpoint_path=checkpoint, **FAILING)
    resumed.meta_fit(Line())
    expected = ReptileRegressor(**FAILING).meta_fit(Line())
    _same_fit(resumed, expected)


def test_outside_a_process_group_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() == ProcessInfo(0, 1, 0, None)
    assert is_main_process()
    error = RankFailedError(3, "ValueError: boom")
    assert error.rank == 3 and "rank 3: ValueError: boom" in str(error)
