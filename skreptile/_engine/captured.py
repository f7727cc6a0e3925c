"""One Reptile meta-iteration captured in a CUDA graph, replayed at every iteration.

On a GPU, a meta-iteration of small networks is launch-bound: each inner step
is dozens of tiny kernels, and for a custom module (``torch.func.vmap`` over
``functional_call``) about a millisecond of Python besides.  When the shapes
do not change from one iteration to the next (tasks of equal sizes), the
whole iteration (every inner step, the tasks' mean and the move of ``theta``)
is recorded once in a ``torch.cuda.CUDAGraph`` and then replayed: one launch
per iteration, no Python per step.

A graph replays the same kernels on the same memory with the same scalar
arguments, so everything that changes per iteration lives in *static device
buffers* that are filled before each replay: the iteration's inputs and
targets, the outer step size (a 0-d tensor) and, for Adam, the bias
correction of each inner step (:class:`_StaticAdam`).  The losses of the
first and last steps accumulate in a device buffer, added to the run's sums
after each replay.

Capture is attempted only where it applies (:func:`capture_refusal`): a CUDA
device, tasks of equal sizes, one block of tasks, no data-parallel all-reduce
and no random layers (their dropout seeds are drawn on the host at every
step).  If the warm-up or the capture raises, the run continues eagerly with
unchanged results; why is logged at debug level (logger
``skreptile._engine.captured``) and kept in ``ws.scratch["capture"]``.

The graph comes from :func:`graph_factory`, which tests replace by a fake
that runs on the CPU.
"""

import logging
import math

import torch

from .inner import adapt_from
from .optimizers import ADAM_BETA2, ADAM_EPSILON
from .threads import task_blocks

log = logging.getLogger(__name__)


class CudaGraph:
    """The graph of one meta-iteration on CUDA: warm-up on a side stream, capture, replay."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._graph = torch.cuda.CUDAGraph()

    def warm_up(self, fn):
        """Run ``fn`` once, eagerly, on a side stream (libraries initialise their handles there)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def capture(self, fn):
        """Record ``fn``'s kernels (nothing runs; its allocations go to the graph's own pool)."""
        with torch.cuda.graph(self._graph):
            fn()

    def replay(self):
        """Launch the recorded kernels on the current stream."""
        self._graph.replay()


def graph_factory(device):
    """The graph class for ``device`` (called with it), or None where no graph applies."""
    if torch.device(device).type == "cuda":
        return CudaGraph
    return None


def capture_refusal(backend, ws, optimizer, weight, n_points, data_parallel):
    """Why one meta-iteration cannot be captured (a sentence), or None when it can."""
    if backend.kind != "torch":
        return "the numpy engine runs on the host"
    if not isinstance(weight, float):
        return "tasks of unequal sizes (per-point weights)"
    if data_parallel:
        return "data-parallel meta-training (the all-reduce runs between steps)"
    if ws.rng is not None:
        # The dropout seeds of every step are drawn from ws.rng on the host
        # and set into the global generator: a replay would reuse the masks.
        return "a module with random layers (dropout seeds are drawn on the host)"
    if getattr(optimizer, "kind", None) not in ("sgd", "adam"):
        return "an unknown inner optimiser"
    if len(task_blocks(backend, optimizer, ws.n_tasks, n_points, ws.params.device)) != 1:
        return "tasks adapted in several blocks"
    return None


class _StaticAdam:
    """The paper's Adam (:class:`~skreptile._engine.optimizers.InnerOptimizer`), for a graph.

    Its step size ``lr * sqrt(1 - beta2^t)`` changes at every step, so it is
    read from ``scales`` (one negated value per inner step, filled before each
    replay) rather than passed as a number.  The moments are the optimiser's
    own buffer; its step count is advanced by the caller.
    """

    kind = "adam"

    def __init__(self, optimizer, scales):
        self.lr = optimizer.lr
        self._v = optimizer._v
        self.scales = scales
        self.k = 0

    def step(self, params, grad):
        v = self._v.params
        v.mul_(ADAM_BETA2).addcmul_(grad, grad, value=1.0 - ADAM_BETA2)
        # addcdiv_'s value * grad / denom, with the value a device scalar:
        # the product first, as the CPU kernel forms it.
        params.addcdiv_(grad * self.scales[self.k], v.sqrt().add_(ADAM_EPSILON))
        self.k += 1


def host_constants(optimizer, steps, inner_steps):
    """Per iteration: the outer step, then (Adam) each inner step's negated step size.

    ``steps`` are the outer step sizes of the iterations to come; the Adam
    step counts continue from ``optimizer.t``, ``inner_steps`` per iteration.
    Computed in double precision on the host, as the eager optimiser does.
    """
    rows = []
    for i, step in enumerate(steps):
        row = [step]
        if optimizer.kind == "adam":
            t0 = optimizer.t + i * inner_steps
            row += [
                -optimizer.lr * math.sqrt(1.0 - ADAM_BETA2 ** (t0 + k + 1))
                for k in range(inner_steps)
            ]
        rows.append(row)
    return rows


class CapturedIteration:
    """One meta-iteration of fixed shapes, captured once and replayed.

    Parameters
    ----------
    graph : object
        Has ``warm_up(fn)``, ``capture(fn)`` and ``replay()``
        (:class:`CudaGraph`, or a test's fake).
    backend, loss, ws, theta, optimizer, inner_steps, weight
        As :func:`~skreptile._engine.outer.meta_train` passes them to
        :func:`~skreptile._engine.inner.adapt_from`.
    x, y : Tensor
        One iteration's inputs and targets, for the shapes of the buffers.
    measure : bool
        Whether the losses of the first and last steps are accumulated.
    """

    def __init__(
        self, graph, backend, loss, ws, theta, optimizer, inner_steps, weight, x, y, measure
    ):
        self.graph = graph
        self.backend, self.loss, self.ws, self.theta = backend, loss, ws, theta
        self.optimizer, self.inner_steps, self.weight = optimizer, inner_steps, weight
        self.key = key_of(x, y, weight)
        self._x, self._y = torch.empty_like(x), torch.empty_like(y)
        width = 1 + (inner_steps if optimizer.kind == "adam" else 0)
        self._constants = theta.new_zeros(width)
        self._step = self._constants[0]
        self._sums = theta.new_zeros(2) if measure else None
        self._inner = optimizer
        if optimizer.kind == "adam":
            self._inner = _StaticAdam(optimizer, self._constants[1:])
        self.state = "new"  # then "captured" or "failed"

    def _iteration(self):
        # Runs at warm-up and at capture: everything it reads is a static buffer.
        if self._sums is not None:
            self._sums.zero_()
        if isinstance(self._inner, _StaticAdam):
            self._inner.k = 0
        mean = adapt_from(
            self.backend,
            self.loss,
            self.ws,
            self.theta,
            self._x,
            self._y,
            self.weight,
            self.inner_steps,
            self._inner,
            self._sums,
            1,
            keep_slots=False,
        )
        self.theta.lerp_(mean, self._step)

    def _mutable(self):
        tensors = [self.theta, self.ws.params]
        if self.optimizer.kind == "adam":
            tensors.append(self.optimizer._v.params)
        return tensors

    def _restore(self, saved):
        for tensor, copy in zip(self._mutable(), saved):
            tensor.copy_(copy)

    def _fail(self, stage, exc):
        self.state = "failed"
        self.ws.scratch["capture"] = f"eager: {stage} failed ({type(exc).__name__}: {exc})"
        log.debug("meta-iteration not captured, eager from now: %s", self.ws.scratch["capture"])

    def run(self, x, y, constants, loss_sums):
        """One meta-iteration on ``x``, ``y``; False where it must run eagerly instead.

        ``constants``: the iteration's row of :func:`host_constants`, on the
        device.  The first call runs the iteration eagerly (the warm-up) and
        then captures it; later calls replay.  Any failure leaves ``theta``,
        the slots and the optimiser as they were before the call.
        """
        if self.state == "failed":
            return False
        self._x.copy_(x)
        self._y.copy_(y)
        self._constants.copy_(constants)
        if self.state == "captured":
            self.graph.replay()
            self._count(loss_sums)
            return True
        saved = [t.clone() for t in self._mutable()]
        try:
            self.graph.warm_up(self._iteration)
        except Exception as exc:
            self._restore(saved)
            self._fail("warm-up", exc)
            return False
        self._count(loss_sums)  # the warm-up was this iteration
        done = [t.clone() for t in self._mutable()]
        try:
            self.graph.capture(self._iteration)
        except Exception as exc:
            self._fail("capture", exc)
        # A real capture runs nothing, but a failed one, or a capture that
        # also executes (a fake), must not count as an iteration.
        self._restore(done)
        if self.state != "failed":
            self.state = "captured"
            self.ws.scratch["capture"] = "captured"
            log.debug("meta-iteration captured in a graph")
        return True

    def _count(self, loss_sums):
        # What an eager iteration leaves besides the weights: its losses, Adam's step count.
        if self._sums is not None:
            loss_sums.add_(self._sums)
        if self.optimizer.kind == "adam":
            self.optimizer.t += self.inner_steps


def constants_table(optimizer, steps, inner_steps, like):
    """:func:`host_constants` as one device tensor (one copy a chunk), a row an iteration."""
    rows = host_constants(optimizer, steps, inner_steps)
    return torch.tensor(rows, dtype=like.dtype).to(like.device)


def prepare(backend, loss, ws, theta, optimizer, inner_steps, weight, x, y, measure, data_parallel):
    """The :class:`CapturedIteration` for one iteration's ``x``, ``y``, or None where none applies.

    Records in ``ws.scratch["capture"]`` (and the debug log) why not.
    """
    factory = graph_factory(theta.device)
    reason = "not a CUDA device" if factory is None else None
    if reason is None:
        reason = capture_refusal(backend, ws, optimizer, weight, x.shape[-2], data_parallel)
    if reason is not None:
        ws.scratch["capture"] = f"eager: {reason}"
        log.debug("meta-iteration not captured: %s", reason)
        return None
    graph = factory(theta.device)
    return CapturedIteration(
        graph, backend, loss, ws, theta, optimizer, inner_steps, weight, x, y, measure
    )


def key_of(x, y, weight):
    """What a captured iteration fixes: shapes and types of one iteration's data, the weight."""
    return (tuple(x.shape), tuple(y.shape), x.dtype, y.dtype, weight)
