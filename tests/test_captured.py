"""The captured meta-iteration (skreptile._engine.captured), exercised on the CPU.

A CUDA graph records kernels with their arguments and memory once, then
replays them.  :class:`RecordingGraph` does the same on the CPU: it records
every aten operation that the captured function runs (through a
``TorchDispatchMode``), with its arguments frozen as they were at capture,
and replay re-runs exactly those operations on the same tensors, writing each
result where the recorded one lives.  Python runs only at capture, as on a
GPU, so a value the iteration took from the host instead of a static buffer
(a step size, Adam's step count) would be replayed stale and the results
would differ from eager ones; a host synchronisation (``.item()``) during
capture raises, as it does on CUDA.
"""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from skreptile import nn as sk_nn
from skreptile._engine import captured, outer
from skreptile._engine.losses import LOSSES
from skreptile._engine.optimizers import InnerOptimizer
from skreptile._engine.torch_mlp import BatchedMLP
from skreptile._engine.torch_module import BatchedModule
from skreptile._estimators.images import ImageInput

_SYNC = torch.ops.aten._local_scalar_dense.default


class _Recorder(TorchDispatchMode):
    def __init__(self, ops):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SYNC:
            raise RuntimeError("host synchronisation during graph capture")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _same_memory(a, b):
    return a is b or (
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
    )


class RecordingGraph:
    """A CPU stand-in for a CUDA graph: records aten operations at capture, re-runs them at replay."""

    instances = []

    def __init__(self, device):
        self.ops = []
        self.warm_ups = self.captures = self.replays = 0
        RecordingGraph.instances.append(self)

    def warm_up(self, fn):
        self.warm_ups += 1
        fn()

    def capture(self, fn):
        self.captures += 1
        with _Recorder(self.ops):
            fn()

    def replay(self):
        self.replays += 1
        for func, args, kwargs, out in self.ops:
            new = func(*args, **kwargs)
            for old, fresh in zip(tree_leaves(out), tree_leaves(new)):
                if isinstance(old, torch.Tensor) and not _same_memory(old, fresh):
                    old.copy_(fresh)  # where the graph's later kernels read it


class FailingGraph(RecordingGraph):
    """A graph whose warm-up or capture raises."""

    fail_at = "capture"

    def warm_up(self, fn):
        if self.fail_at == "warm-up":
            fn()  # part of the iteration has run when it fails
            raise RuntimeError("no warm-up")
        super().warm_up(fn)

    def capture(self, fn):
        if self.fail_at == "capture":
            fn()
            raise RuntimeError("operation not permitted when stream is capturing")
        super().capture(fn)


def _chunks(n_chunks, n_iters, inner_steps, n_tasks, batch, x_shape, n_out, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_chunks):
        x = torch.randn(n_iters, inner_steps, n_tasks, batch, *x_shape, generator=g, dtype=dtype)
        labels = torch.randint(0, n_out, (n_iters, inner_steps, n_tasks, batch), generator=g)
        y = torch.nn.functional.one_hot(labels, n_out).to(x.dtype)
        yield x, y, 1.0 / batch


def _train(net, loss, theta, kind, lr, chunks, n_meta_iter, factory, monkeypatch, **kw):
    theta = theta.clone()
    ws = net.workspace(3, theta)
    optimizer = InnerOptimizer(kind, lr, net, ws)
    loss_sums = theta.new_zeros(2)
    seen = []
    monkeypatch.setattr(captured, "graph_factory", lambda device: factory)
    done = outer.meta_train(
        net,
        loss,
        theta,
        chunks,
        optimizer,
        ws,
        n_meta_iter=n_meta_iter,
        meta_lr=0.7,
        meta_lr_schedule="linear",
        inner_steps=3,
        loss_sums=loss_sums,
        on_iteration=lambda i: seen.append((i, theta.clone(), loss_sums.clone())),
        **kw,
    )
    return done, theta, loss_sums, optimizer, ws, seen


def _case(name):
    if name == "mlp-sgd":  # float64: the torch backend's fused SGD step, not numpy's
        net = BatchedMLP((4, 16, 16, 3), "tanh")
        theta = net.init_params(torch.Generator().manual_seed(0), torch.float64)
        return net, theta, "sgd", 0.05, (4,), "squared_error"
    if name == "mlp-adam":
        net = BatchedMLP((4, 16, 3), "relu")
        theta = net.init_params(torch.Generator().manual_seed(0))
        return net, theta, "adam", 0.01, (4,), "cross_entropy"
    with torch.random.fork_rng(devices=[]):  # a fixed initialisation; the global state restored
        torch.manual_seed(0)
        module = sk_nn.ConvNet(64, 3, n_filters=4, n_layers=2)
    # As the classifier passes it: flat features in, images inside.
    net = BatchedModule(ImageInput(module, (1, 8, 8)))
    return net, net.init_params(), "adam", 0.01, (64,), "cross_entropy"


@pytest.mark.parametrize("name", ["mlp-sgd", "mlp-adam", "convnet-adam"])
def test_replayed_iterations_give_the_eager_results(name, monkeypatch):
    net, theta, kind, lr, x_shape, loss_name = _case(name)
    loss = LOSSES[loss_name]
    results = {}
    RecordingGraph.instances.clear()
    for factory in (None, RecordingGraph):
        # 3 chunks of 3 iterations, 8 done: the last chunk is cut short.
        chunks = _chunks(3, 3, 3, 3, 5, x_shape, 3, seed=1, dtype=theta.dtype)
        results[factory] = _train(
            net, loss, theta, kind, lr, chunks, 8, factory, monkeypatch, check_every=4
        )
    (graph,) = RecordingGraph.instances
    assert (graph.warm_ups, graph.captures, graph.replays) == (1, 1, 7)
    assert graph.ops  # something was recorded, so replay did the work
    eager, replayed = results[None], results[RecordingGraph]
    assert replayed[4].scratch["capture"] == "captured"
    assert eager[4].scratch["capture"] == "eager: not a CUDA device"
    assert eager[0] == replayed[0] == 8
    assert [i for i, _, _ in eager[5]] == [i for i, _, _ in replayed[5]] == list(range(1, 9))
    for (_, theta_e, sums_e), (_, theta_r, sums_r) in zip(eager[5], replayed[5]):
        # Every iteration's weights and loss sums, not only the last ones: on the
        # CPU the replayed kernels are the eager ones, so the bits are too.
        assert torch.equal(theta_r, theta_e) and torch.equal(sums_r, sums_e)
    assert not torch.equal(eager[5][0][1], eager[5][-1][1])  # the weights did move
    assert eager[3].t == replayed[3].t == (8 * 3 if kind == "adam" else 0)
    if kind == "adam":
        assert (replayed[3].state()["v"] == eager[3].state()["v"]).all()


@pytest.mark.parametrize("fail_at", ["warm-up", "capture"])
def test_a_failed_capture_falls_back_to_eager_with_the_same_results(fail_at, monkeypatch):
    net, theta, kind, lr, x_shape, loss_name = _case("mlp-adam")
    loss = LOSSES[loss_name]
    monkeypatch.setattr(FailingGraph, "fail_at", fail_at)
    runs = []
    for factory in (None, FailingGraph):
        chunks = _chunks(2, 3, 3, 3, 5, x_shape, 3, seed=2, dtype=theta.dtype)
        runs.append(_train(net, loss, theta, kind, lr, chunks, 6, factory, monkeypatch))
    eager, fallback = runs
    assert fallback[4].scratch["capture"].startswith(f"eager: {fail_at} failed (RuntimeError")
    assert torch.equal(fallback[1], eager[1])
    assert torch.equal(fallback[2], eager[2])
    assert fallback[3].t == eager[3].t
    for (_, theta_e, sums_e), (_, theta_f, sums_f) in zip(eager[5], fallback[5]):
        assert torch.equal(theta_f, theta_e) and torch.equal(sums_f, sums_e)


def test_the_recording_graph_replays_stale_host_values():
    # The fake must be able to fail: a step size passed as a number is frozen at capture.
    theta = torch.zeros(3)
    target = torch.ones(3)
    graph = RecordingGraph("cpu")
    step = [0.5]
    graph.capture(lambda: theta.lerp_(target, step[0]))
    theta.zero_()
    step[0] = 0.25
    graph.replay()
    assert torch.equal(theta, torch.full((3,), 0.5))
    with pytest.raises(RuntimeError, match="host synchronisation"):
        graph.capture(lambda: bool(theta.sum() > 0))


def test_capture_is_refused_where_it_cannot_apply():
    net, theta, *_ = _case("mlp-adam")
    ws = net.workspace(3, theta)
    adam = InnerOptimizer("adam", 0.01, net, ws)
    assert captured.capture_refusal(net, ws, adam, 0.2, 5, False) is None
    assert "unequal" in captured.capture_refusal(net, ws, adam, torch.ones(3, 5, 1), 5, False)
    assert "data-parallel" in captured.capture_refusal(net, ws, adam, 0.2, 5, True)
    # Plain SGD on the CPU adapts many tasks in cache-sized blocks.
    sgd = InnerOptimizer("sgd", 0.01, net, net.workspace(4096, theta))
    wide = net.workspace(4096, theta)
    assert "blocks" in captured.capture_refusal(net, wide, sgd, 0.2, 500, False)
    dropout = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5))
    module = BatchedModule(copy.deepcopy(dropout))
    ws = module.workspace(2, module.init_params())
    assert "random layers" in captured.capture_refusal(module, ws, adam, 0.2, 5, False)
    assert captured.graph_factory("cpu") is None
    assert captured.graph_factory("cuda") is captured.CudaGraph
