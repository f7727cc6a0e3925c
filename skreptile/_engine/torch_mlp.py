"""Functional networks evaluated for many tasks at once.

Reptile adapts one copy of the weights per task.  Instead of a Python loop over
tasks, all copies live in one buffer and the forward and backward passes run on
every task together.  Two networks implement the same small interface:

* :class:`BatchedMLP`: the default multi-layer perceptron, with a hand-written
  backward pass on ``bmm``.  For the tiny networks meta-learning uses,
  autograd's per-operation bookkeeping costs more than the arithmetic.
* :class:`~skreptile._engine.torch_module.BatchedModule` (its own module): any
  ``torch.nn.Module``, batched over tasks with ``torch.func.vmap`` and
  ``torch.func.grad``.

The meta-parameters ``theta`` are one flat vector (layer by layer, each weight
as ``(fan_in, fan_out)``).  The per-task copies live in a
:class:`~skreptile._engine.backend.Workspace`:
flat buffers for parameters and gradients, so that optimiser steps are single
tensor operations, laid out as one contiguous ``(n_tasks, ...)`` block per
weight so that ``bmm`` reads and writes them without copies.
"""

import math

import torch
from torch import nn

from .activations import ACTIVATIONS
from .backend import Backend, Workspace

__all__ = ["CACHE_BLOCK_BYTES", "BatchedMLP", "Workspace"]


class BatchedMLP(Backend):
    """A fully connected network computed for many tasks at once.

    Parameters
    ----------
    layer_sizes : sequence of int
        Sizes of every layer, inputs first and outputs last.
    activation : {"identity", "logistic", "tanh", "relu"}
        Non-linearity after every hidden layer; the output layer is linear.
    """

    # Tasks may be adapted in cache-sized blocks (see threads.task_blocks), and
    # blocks on several threads at once: a step is a few large torch calls,
    # which release the GIL.
    blockable = True
    block_threads = True

    def __init__(self, layer_sizes, activation):
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        self.activation = activation
        # Shapes of the parameter tensors in theta's order: W0, b0, W1, b1, ...
        self._shapes = []
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            self._shapes += [(fan_in, fan_out), (1, fan_out)]
        self._numels = [a * b for a, b in self._shapes]
        self.n_params = sum(self._numels)
        self._largest = max(a * b for a, b in self._shapes[::2])

    # -- the meta-parameters ------------------------------------------------
    def init_params(self, generator, dtype=torch.float32):
        """Draw initial weights as ``torch.nn.Linear`` does (uniform in +-1/sqrt(fan_in))."""
        parts = []
        for (fan_in, fan_out), (_, n_bias) in zip(self._shapes[::2], self._shapes[1::2]):
            bound = 1.0 / math.sqrt(fan_in)
            # nn.Linear draws its weight as (fan_out, fan_in): draw in that order
            # and transpose, so that a seeded generator gives torch's weights.
            weight = torch.empty(fan_out, fan_in, dtype=dtype).uniform_(
                -bound, bound, generator=generator
            )
            bias = torch.empty(n_bias, dtype=dtype).uniform_(-bound, bound, generator=generator)
            parts += [weight.t().reshape(-1), bias]
        return torch.cat(parts)

    def _split(self, theta):
        return [c.view(shape) for c, shape in zip(torch.split(theta, self._numels), self._shapes)]

    def to_torch_module(self, theta):
        """An equivalent ``torch.nn.Sequential`` holding the flat weights ``theta``."""
        tensors = self._split(theta.detach().cpu())
        layers = []
        n_layers = len(self.layer_sizes) - 1
        for i in range(n_layers):
            weight, bias = tensors[2 * i], tensors[2 * i + 1]
            linear = nn.Linear(*weight.shape)
            with torch.no_grad():
                linear.weight.copy_(weight.t())
                linear.bias.copy_(bias[0])
            layers.append(linear)
            if i < n_layers - 1:
                layers.append(ACTIVATIONS[self.activation].layer())
        return nn.Sequential(*layers)

    def work(self, n_tasks, n_points):
        """Multiply-adds of the largest matrix product of one step, on the CPU.

        Tasks run in cache-sized blocks on the CPU (:meth:`block_size`), so a
        product covers at most one block of them.
        """
        n_tasks = min(n_tasks, self.block_size(n_points, "cpu"))
        return n_tasks * n_points * self.largest_product()

    def largest_product(self):
        """``fan_in * fan_out`` of the widest layer: multiply-adds a point of its product."""
        return self._largest

    # -- per-task copies ----------------------------------------------------
    def _views(self, flat, n_tasks):
        sizes = [n_tasks * n for n in self._numels]
        return [c.view(n_tasks, *shape) for c, shape in zip(torch.split(flat, sizes), self._shapes)]

    def workspace(self, n_tasks, theta):
        """Buffers for ``n_tasks`` copies of weights shaped like ``theta``."""
        params = theta.new_empty(n_tasks * self.n_params)
        grad = torch.empty_like(params)
        return Workspace(
            n_tasks, params, grad, self._views(params, n_tasks), self._views(grad, n_tasks)
        )

    def view(self, ws, start, stop, scratch=None):
        """The tasks ``start:stop`` of ``ws`` as a workspace sharing its memory (no flat buffers).

        ``scratch``: the dict of reusable buffers to use, one per thread when
        blocks run on several threads (:mod:`skreptile._engine.threads`); by default
        that of ``ws``.
        """
        sub = Workspace(
            stop - start,
            None,
            None,
            [view[start:stop] for view in ws.param_views],
            [view[start:stop] for view in ws.grad_views],
        )
        sub.scratch = ws.scratch if scratch is None else scratch
        return sub

    def block_size(self, n_points, device):
        """Tasks adapted together so that their weights and activations stay in cache.

        A step reads and writes every task's weights several times; once the
        slots of a meta-batch outgrow the CPU's caches, every pass goes to
        memory and a larger meta-batch becomes slower per task (width 128:
        6,099 tasks/s at 64 tasks, 3,952 at 256).  On the CPU, tasks are
        therefore adapted in blocks of about ``CACHE_BLOCK_BYTES``, each block
        through all its steps before the next; on a GPU all at once.
        """
        if torch.device(device).type != "cpu":
            return None
        widths = sum(fan_out for _, fan_out in self._shapes[::2])
        per_task = 4 * (self.n_params + 2 * n_points * widths)
        return max(1, CACHE_BLOCK_BYTES // per_task)

    def broadcast(self, theta, ws):
        """Set every task's weights to ``theta``."""
        for view, part in zip(ws.param_views, self._split(theta)):
            view.copy_(part.expand_as(view))

    def task_mean(self, ws):
        """The mean over tasks of the weights, as a flat vector like ``theta``."""
        if ws.n_tasks == 1:
            return ws.params
        return torch.cat([view.mean(0).reshape(-1) for view in ws.param_views])

    def task_sum(self, ws, out):
        """The sum over tasks of the weights, into the flat vector ``out`` (returned)."""
        for view, part in zip(ws.param_views, self._split(out)):
            torch.sum(view, 0, out=part)
        return out

    def add_task_sum(self, ws, total):
        """``total += `` the sum over tasks of the weights, as :meth:`task_sum` computes it."""
        for view, part in zip(ws.param_views, self._split(total)):
            part.add_(view[0] if ws.n_tasks == 1 else view.sum(0))

    def task_params(self, ws, index):
        """The flat weights of one task."""
        return torch.cat([view[index].reshape(-1) for view in ws.param_views])

    def all_task_params(self, ws):
        """Every task's flat weights, ``(n_tasks, n_params)``."""
        return torch.cat([view.reshape(ws.n_tasks, -1) for view in ws.param_views], dim=1)

    def set_task_params(self, ws, rows):
        """Set every task's weights from ``rows`` of shape ``(n_tasks, n_params)``."""
        for view, part in zip(ws.param_views, torch.split(rows, self._numels, dim=1)):
            view.copy_(part.reshape(view.shape))

    # -- the output layer (prototype heads, see prototypes.py) --------------
    def head_slice(self):
        """The output layer's ``W`` and ``b`` in the flat weights: their last values."""
        fan_in, fan_out = self._shapes[-2]
        return slice(self.n_params - (fan_in + 1) * fan_out, self.n_params)

    def features(self, theta, x):
        """Penultimate features ``(n_tasks, n_points, d)`` of ``x`` at the single weights ``theta``."""
        parts = self._split(theta)
        activate_ = ACTIVATIONS[self.activation].torch_forward_
        h = x.to(theta.dtype)
        for i in range(len(parts) // 2 - 1):
            h = activate_(torch.matmul(h, parts[2 * i]) + parts[2 * i + 1])
        return h

    def set_heads(self, ws, W, b):
        """Set every task's output layer: ``W`` ``(n_tasks, n_out, d)``, ``b`` ``(n_tasks, n_out)``."""
        ws.param_views[-2].copy_(W.transpose(1, 2))
        ws.param_views[-1].copy_(b[:, None, :])

    # -- computation --------------------------------------------------------
    def forward(self, views, x, keep_hidden=False):
        """Outputs ``(n_tasks, n_points, n_out)`` for inputs ``(n_tasks, n_points, n_in)``."""
        hidden = [x]
        h = x
        last = len(views) // 2 - 1
        activate_ = ACTIVATIONS[self.activation].torch_forward_
        for i in range(last + 1):
            h = torch.baddbmm(views[2 * i + 1], h, views[2 * i])
            if i < last:
                h = activate_(h)
            hidden.append(h)
        return hidden if keep_hidden else h

    def forward_tasks(self, ws, x):
        """Outputs of every task's network on that task's inputs ``(n_tasks, n_points, n_in)``."""
        return self.forward(ws.param_views, x)

    def predict(self, theta, x):
        """Outputs of the single network ``theta`` on ``x`` of shape (n_points, n_in)."""
        views = [t.unsqueeze(0) for t in self._split(theta)]
        return self.forward(views, x.unsqueeze(0))[0]

    def _scratch(self, ws, x):
        """Preallocated activations and their gradients for inputs shaped like ``x``.

        The inner loop runs the same shapes thousands of times; writing into the
        same buffers avoids an allocation per operation per step.
        """
        key = (tuple(x.shape[:2]), x.dtype, x.device)
        scratch = ws.scratch.get(key)
        if scratch is None:
            n_tasks, n_points = x.shape[:2]
            widths = [fan_out for _, fan_out in self._shapes[::2]]
            scratch = (
                [x.new_empty(n_tasks, n_points, w) for w in widths],
                [x.new_empty(n_tasks, n_points, w) for w in widths],
            )
            ws.scratch[key] = scratch
        return scratch

    def _forward_into_scratch(self, ws, x, y, weight, loss):
        """The forward pass into scratch buffers, and d(loss)/d(outputs).

        Returns the activations of every layer, the buffers of their
        gradients, and the gradient of the loss at the outputs.
        """
        views = ws.param_views
        outs, grads = self._scratch(ws, x)
        last = len(outs) - 1
        activate_ = ACTIVATIONS[self.activation].torch_forward_
        h = x
        for i in range(last + 1):
            h = torch.baddbmm(views[2 * i + 1], h, views[2 * i], out=outs[i])
            if i < last:
                activate_(h)
        return outs, grads, loss.output_grad(outs[last], y, weight, out=grads[last])

    def gradient(self, ws, x, y, weight, loss):
        """Write every task's d(loss)/d(weights) into ``ws.grad``; return the outputs.

        The loss of each task depends only on that task's weights, so one
        backward pass of the summed loss gives every task's own gradient.  The
        returned outputs live in a scratch buffer overwritten by the next call.
        """
        return self._backward(ws, x, y, weight, loss, None)

    def sgd_step(self, ws, x, y, weight, loss, lr):
        """One plain SGD step on every task's weights, fused with the gradient; the outputs.

        As :meth:`gradient` followed by ``params -= lr * grad``, but each layer
        is updated in place (``W <- W - lr h^T g`` by one ``baddbmm``) as soon
        as the gradient flowing to the layer below has been computed from its
        old weights: no gradient buffer is written or read back.
        """
        return self._backward(ws, x, y, weight, loss, lr)

    def _ones(self, ws, n_tasks, n_points, like):
        key = ("ones", n_tasks, n_points, like.dtype, like.device)
        ones = ws.scratch.get(key)
        if ones is None:
            ones = ws.scratch[key] = like.new_ones(n_tasks, 1, n_points)
        return ones

    def _backward(self, ws, x, y, weight, loss, lr):
        """The forward and backward passes: gradients into ``ws.grad`` (``lr`` None) or SGD in place.

        The one backward pass of the perceptron on torch.  Each layer's
        gradient flowing to the layer below is computed from its weights
        before they change; then either its weight gradient is written
        (``bmm``, and the bias's by a sum), or, with a step size, the weights
        are updated in place by ``baddbmm_``.
        """
        views = ws.param_views
        outs, grads, grad = self._forward_into_scratch(ws, x, y, weight, loss)
        last = len(outs) - 1
        backward_ = ACTIVATIONS[self.activation].torch_backward_
        ones = None if lr is None else self._ones(ws, x.shape[0], x.shape[1], x)
        for i in range(last, -1, -1):
            inputs = outs[i - 1] if i > 0 else x
            back = None
            if i > 0:
                back = torch.bmm(grad, views[2 * i].transpose(1, 2), out=grads[i - 1])
            if lr is None:
                torch.bmm(inputs.transpose(1, 2), grad, out=ws.grad_views[2 * i])
                torch.sum(grad, dim=1, keepdim=True, out=ws.grad_views[2 * i + 1])
            else:
                views[2 * i].baddbmm_(inputs.transpose(1, 2), grad, alpha=-lr)
                views[2 * i + 1].baddbmm_(ones, grad, alpha=-lr)
            if i > 0:
                grad = backward_(back, outs[i - 1])
        return outs[last]


# Bytes of weights and activations of the tasks adapted together on the CPU
# (see BatchedMLP.block_size).  Small enough for a block to stay in the caches
# of its core (L2 and its share of L3) through all its steps, large enough that
# every torch call of a step works on several tasks of a wide network.
# Measured on a 2-core AMD EPYC (1 MB L2 a core, 32 MB L3), meta-training
# tasks/s at 64 and 256 tasks a meta-batch, 1 / 2 / 4 / 8 MB blocks:
# width 128: 7,185 / 7,555 / 8,491 / 6,027 (64 tasks);
# width 256: 1,577 / 2,778 / 2,728 / 2,188 (64 tasks);
# width 512: 491 / 497 / 763 / 644 (64 tasks) and 603 / 651 / 919 / 687 (256);
# few_shot_predict of 2,000 ten-point tasks: 3,582 / 4,339 / 4,922 / 4,964.
CACHE_BLOCK_BYTES = 4 << 20
