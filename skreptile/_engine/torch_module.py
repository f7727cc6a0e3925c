"""Any ``torch.nn.Module`` evaluated for many tasks at once, with ``torch.func``.

The counterpart of :class:`~skreptile._engine.torch_mlp.BatchedMLP` for custom
modules: the same :class:`~skreptile._engine.backend.Backend` interface
(workspaces of per-task weights, gradients, blocks of tasks), with ``torch.func.vmap`` over ``functional_call`` and
``torch.func.grad`` in place of the perceptron's hand-written passes.
"""

import contextlib
import copy
import threading
import zlib

import torch
from torch import nn

from . import torch_mlp as _networks
from .backend import Backend, Workspace
from .device import seeded_global_rng

# Layers that draw random numbers in training mode, from torch's global
# generator (no torch layer accepts a generator of its own).
_RANDOM_LAYERS = (nn.modules.dropout._DropoutNd, nn.RReLU)


def _seed_of(theta):
    """A seed determined by the weights ``theta`` (for the dropout masks of an adaptation)."""
    return zlib.crc32(theta.detach().cpu().numpy().tobytes())


class BatchedModule(Backend):
    """Any ``torch.nn.Module`` evaluated per task with ``torch.func``.

    Parameters
    ----------
    module : torch.nn.Module
        The network; its parameters give the shapes and the initialisation.
        Its batch normalisation layers are changed in place to use the
        statistics of the batch only, never running ones: every task is new,
        and running statistics cannot be updated per task under ``vmap``.

    Notes
    -----
    Modes: gradient steps (meta-training and adaptation) run the module in
    training mode, so that dropout is active; outputs (:meth:`forward_tasks`,
    :meth:`predict`) run it in evaluation mode.  Batch normalisation uses batch
    statistics in both.

    Threads: ``torch.func.functional_call`` puts the weights it is given into
    the module it calls for the duration of the call, and puts the module's
    own back afterwards.  Two threads calling the same module would compute
    with each other's weights, or with the module's initial ones that one of
    them has just restored.  So ``module`` itself is never called: each call
    borrows a private copy, in the mode it needs, from a pool that grows to
    the number of threads computing at once.

    Randomness: dropout under ``vmap`` draws different masks per task
    (``randomness="different"``) from torch's global generator, which is
    seeded for each step from a generator of the workspace (itself seeded by
    the weights the adaptation starts from) and restored afterwards: the same
    ``random_state`` gives the same result.
    """

    def __init__(self, module):
        torch.func.replace_all_batch_norm_modules_(module)
        self.module = module
        named = list(module.named_parameters())
        self._names = [name for name, _ in named]
        self._shapes = [tuple(p.shape) for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self.n_params = sum(self._numels)
        self._buffers = dict(module.named_buffers())
        self._random = any(isinstance(m, _RANDOM_LAYERS) for m in module.modules())
        self._pools = {True: [], False: []}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        state["_pools"] = {True: [], False: []}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _borrow(self, training):
        """A copy of the module, in training mode or not, for this call only."""
        with self._lock:
            pool = self._pools[training]
            copy_ = pool.pop() if pool else None
        if copy_ is None:
            copy_ = copy.deepcopy(self.module).train(training)
        try:
            yield copy_
        finally:
            with self._lock:
                self._pools[training].append(copy_)

    def init_params(self, generator=None, dtype=torch.float32):
        """The module's own initial parameters, flattened."""
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).to(dtype)

    def to_torch_module(self, theta):
        """A copy of the module holding the flat weights ``theta``, in evaluation mode."""
        module = copy.deepcopy(self.module).cpu().eval()
        with torch.no_grad():
            for p, value in zip(module.parameters(), self._unflatten(theta.detach().cpu())):
                p.copy_(value)
        return module

    # -- the output layer (prototype heads, see prototypes.py) --------------
    def _head(self):
        """``(name, weight slice, bias slice)`` of the final ``nn.Linear``, found once.

        The final layer is the last submodule holding parameters of its own;
        it must be an ``nn.Linear`` with a bias (checked here) whose outputs
        are the module's (checked on the first features computed).
        """
        head = self.__dict__.get("_head_found")
        if head is not None:
            return head
        owners = [
            (name, m)
            for name, m in self.module.named_modules()
            if any(True for _ in m.parameters(recurse=False))
        ]
        name, last = owners[-1] if owners else ("", None)
        what = type(self.module).__name__
        if not isinstance(last, nn.Linear) or last.bias is None:
            raise ValueError(
                f"head_init='prototypes' sets the final torch.nn.Linear layer (with a bias) "
                f"from class prototypes, but the last layer with parameters of {what} is "
                f"{type(last).__name__ if last is not None else 'absent'}"
                + (f" ({name!r})" if name else "")
                + (" without a bias" if isinstance(last, nn.Linear) else "")
                + "; use head_init='meta' for this module."
            )
        prefix = f"{name}." if name else ""
        starts = dict(zip(self._names, [sum(self._numels[:i]) for i in range(len(self._names))]))
        w0, b0 = starts[prefix + "weight"], starts[prefix + "bias"]
        if b0 != w0 + last.weight.numel():
            raise ValueError(f"{what}: the weight and bias of {name!r} are not stored together.")
        head = self._head_found = (name, slice(w0, b0), slice(b0, b0 + last.bias.numel()))
        return head

    def head_slice(self):
        """The final Linear's weight and bias in the flat weights."""
        _, w, b = self._head()
        return slice(w.start, b.stop)

    def features(self, theta, x):
        """Inputs of the final Linear ``(n_tasks, n_points, d)`` for ``x`` at the weights ``theta``.

        Evaluation mode, every task on its own (batch statistics are per task);
        on the first call, the module's outputs are checked to be that Linear's.
        """
        name, w, b = self._head()
        parent_name, _, child = name.rpartition(".")
        params = dict(zip(self._names, self._unflatten(theta)))
        head = [params.pop(n) for n in (f"{name}.weight", f"{name}.bias")]
        buffers = {k: v.to(theta.device) for k, v in self._buffers.items()}
        with self._borrow(False) as module:
            parent = module.get_submodule(parent_name)
            linear = getattr(parent, child)
            setattr(parent, child, nn.Identity())
            try:
                z = torch.vmap(
                    lambda xt: torch.func.functional_call(module, (params, buffers), (xt,))
                )(x)
            finally:
                setattr(parent, child, linear)
        z = z.reshape(*x.shape[:2], -1)
        if not self.__dict__.get("_head_checked"):
            full = torch.vmap(lambda xt: self._call(theta, xt))(x[:1])
            if full.shape[-1] != head[0].shape[0] or not torch.allclose(
                full, z[:1] @ head[0].t() + head[1], rtol=1e-4, atol=1e-4
            ):
                raise ValueError(
                    f"head_init='prototypes': the outputs of {type(self.module).__name__} are "
                    f"not those of its last Linear layer {name!r} (something follows it); "
                    "use head_init='meta' for this module."
                )
            self._head_checked = True
        return z

    def set_heads(self, ws, W, b):
        """Set every task's final Linear: ``W`` ``(n_tasks, n_out, d)``, ``b`` ``(n_tasks, n_out)``."""
        _, w, bias = self._head()
        ws.params[:, w].copy_(W.reshape(len(W), -1))
        ws.params[:, bias].copy_(b)

    def _unflatten(self, row):
        return [c.view(shape) for c, shape in zip(torch.split(row, self._numels), self._shapes)]

    def _call(self, row, x, training=False):
        params = dict(zip(self._names, self._unflatten(row)))
        buffers = {k: v.to(row.device) for k, v in self._buffers.items()}
        with self._borrow(training) as module:
            return torch.func.functional_call(module, (params, buffers), (x,))

    # vmap and functional_call spend about a millisecond a call in Python,
    # holding the GIL: block threads would take turns on it.  Blocks run one
    # after another on the calling thread, whose torch threads split each call.
    block_threads = False

    @property
    def blockable(self):
        """Whether tasks may be adapted in blocks: not with random layers (one dropout stream)."""
        return not self._random

    def work(self, n_tasks, n_points):
        """A rough size of one step's work."""
        return n_tasks * n_points * self.n_params

    def block_size(self, n_points, device):
        """Tasks adapted together on the CPU (see :meth:`BatchedMLP.block_size`).

        Per task: the weights, their gradients and the gradients ``vmap``
        returns before they are copied in.  Blocks are four times the
        perceptron's: a call costs about a millisecond of Python, which a
        block must outweigh, and they run on one thread, whose torch threads
        split each call (measured, width 256, two runs minutes apart: 16 MB
        blocks 1.7 to 2 times as many tasks/s as 4 MB ones at 16 to 256 tasks).
        """
        if torch.device(device).type != "cpu":
            return None
        return max(1, 4 * _networks.CACHE_BLOCK_BYTES // (4 * 3 * self.n_params))

    def view(self, ws, start, stop, scratch=None):
        """The tasks ``start:stop`` of ``ws`` as a workspace sharing its memory."""
        sub = Workspace(stop - start, ws.params[start:stop], ws.grad[start:stop])
        sub.scratch = ws.scratch if scratch is None else scratch
        return sub

    def task_sum(self, ws, out):
        """The sum over tasks of the weights, into ``out`` (returned)."""
        return torch.sum(ws.params, 0, out=out)

    def add_task_sum(self, ws, total):
        """``total += `` the sum over tasks of the weights, as :meth:`task_sum` computes it."""
        total.add_(ws.params[0] if ws.n_tasks == 1 else ws.params.sum(0))

    def workspace(self, n_tasks, theta):
        """Buffers for ``n_tasks`` copies of weights shaped like ``theta``: one row a task."""
        params = theta.new_empty(n_tasks, self.n_params)
        ws = Workspace(n_tasks, params, torch.empty_like(params))
        if self._random:
            # One stream of dropout seeds per adaptation, fixed by where it
            # starts: fitting twice gives the same weights, and so does fitting
            # a model that was pickled in between.
            ws.rng = torch.Generator().manual_seed(_seed_of(theta))
        return ws

    def broadcast(self, theta, ws):
        """Set every task's weights to ``theta``."""
        ws.params.copy_(theta.expand_as(ws.params))

    def task_mean(self, ws):
        """The mean over tasks of the weights."""
        return ws.params.mean(0)

    def task_params(self, ws, index):
        """The flat weights of one task."""
        return ws.params[index]

    def all_task_params(self, ws):
        """Every task's flat weights, ``(n_tasks, n_params)``."""
        return ws.params

    def set_task_params(self, ws, rows):
        """Set every task's weights from ``rows`` of shape ``(n_tasks, n_params)``."""
        ws.params.copy_(rows)

    def forward_tasks(self, ws, x):
        """Outputs of every task's network on that task's inputs, in evaluation mode."""
        return torch.vmap(self._call)(ws.params, x)

    def predict(self, theta, x):
        """Outputs of the single network ``theta`` on ``x``, in evaluation mode."""
        return self._call(theta, x)

    def gradient(self, ws, x, y, weight, loss):
        """Write per-task parameter gradients into ``ws.grad`` and return the outputs.

        The module runs in training mode.  With random layers, each task draws
        its own dropout masks from torch's global generator, seeded for this
        step from the workspace's generator and restored afterwards.
        """

        def task_loss(row, xt, yt, wt):
            outputs = self._call(row, xt, training=True)
            return loss.value(outputs, yt, wt), outputs

        per_task = torch.func.grad(task_loss, has_aux=True)
        weight_dim = 0 if torch.is_tensor(weight) else None
        batched = torch.vmap(per_task, in_dims=(0, 0, 0, weight_dim), randomness="different")
        if self._random:
            seed = int(torch.randint(0, 2**62, (), generator=ws.rng))
            with seeded_global_rng(seed, x.device):
                grads, outputs = batched(ws.params, x, y, weight)
        else:
            grads, outputs = batched(ws.params, x, y, weight)
        ws.grad.copy_(grads)
        return outputs
