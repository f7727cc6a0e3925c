"""Functional networks evaluated for many tasks at once.

Reptile adapts one copy of the weights per task.  Instead of a Python loop over
tasks, every copy lives in one row of a ``(n_tasks, n_params)`` tensor and the
forward and backward passes run on all rows together (``bmm``).  Two networks
implement the same small interface:

* :class:`BatchedMLP`: the default multi-layer perceptron, with a hand-written
  backward pass.  For the tiny networks meta-learning uses, autograd's
  per-operation bookkeeping costs more than the arithmetic, so writing the
  gradient out is several times faster.
* :class:`BatchedModule`: any ``torch.nn.Module``, batched over tasks with
  ``torch.func.vmap`` and ``torch.func.grad``.

Both store parameters as one flat vector so that the Reptile interpolation and
the per-task copies are single tensor operations.
"""

import math

import torch
from torch import nn

ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


def _activate(z, activation):
    """Apply ``activation`` in place to the pre-activation ``z``."""
    if activation == "tanh":
        return z.tanh_()
    if activation == "relu":
        return z.relu_()
    if activation == "logistic":
        return z.sigmoid_()
    return z


def _activation_backward(grad, h, activation):
    """Multiply ``grad`` in place by the activation's derivative at output ``h``."""
    if activation == "tanh":
        # d tanh = 1 - tanh^2, written from the stored output to avoid keeping z.
        return grad.mul_(1.0 - h * h)
    if activation == "relu":
        return grad.mul_(h > 0)
    if activation == "logistic":
        return grad.mul_(h * (1.0 - h))
    return grad


class BatchedMLP:
    """A fully connected network whose weights are rows of a flat tensor.

    Parameters
    ----------
    layer_sizes : sequence of int
        Sizes of every layer, inputs first and outputs last.
    activation : {"identity", "logistic", "tanh", "relu"}
        Non-linearity after every hidden layer; the output layer is linear.
    """

    def __init__(self, layer_sizes, activation):
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        self.activation = activation
        # (weight offset, bias offset, fan_in, fan_out) of every layer, the
        # weight stored as (fan_in, fan_out) so that ``x @ W`` needs no transpose.
        self._layout = []
        offset = 0
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            self._layout.append((offset, offset + fan_in * fan_out, fan_in, fan_out))
            offset += fan_in * fan_out + fan_out
        self.n_params = offset

    def init_params(self, generator, dtype=torch.float32):
        """Draw initial weights as ``torch.nn.Linear`` does (uniform in +-1/sqrt(fan_in))."""
        theta = torch.empty(self.n_params, dtype=dtype)
        for w_off, b_off, fan_in, fan_out in self._layout:
            bound = 1.0 / math.sqrt(fan_in)
            # nn.Linear draws the weight as (fan_out, fan_in); draw it in that
            # order and transpose so that seeded weights match a torch model.
            weight = torch.empty(fan_out, fan_in, dtype=dtype).uniform_(
                -bound, bound, generator=generator
            )
            theta[w_off:b_off] = weight.t().reshape(-1)
            theta[b_off : b_off + fan_out].uniform_(-bound, bound, generator=generator)
        return theta

    def to_torch_module(self, theta):
        """Return an equivalent ``torch.nn.Sequential`` holding ``theta`` (for users)."""
        layers = []
        acts = {"identity": nn.Identity, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
        for i, (w_off, b_off, fan_in, fan_out) in enumerate(self._layout):
            linear = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                linear.weight.copy_(theta[w_off:b_off].view(fan_in, fan_out).t())
                linear.bias.copy_(theta[b_off : b_off + fan_out])
            layers.append(linear)
            if i < len(self._layout) - 1:
                layers.append(acts[self.activation]())
        return nn.Sequential(*layers)

    def _views(self, flat):
        """Per-layer (weight, bias) views into a ``(n_tasks, n_params)`` tensor."""
        n = flat.shape[0]
        views = []
        for w_off, b_off, fan_in, fan_out in self._layout:
            weight = flat[:, w_off:b_off].view(n, fan_in, fan_out)
            bias = flat[:, b_off : b_off + fan_out].view(n, 1, fan_out)
            views.append((weight, bias))
        return views

    def forward(self, flat, x, keep_hidden=False):
        """Outputs ``(n_tasks, n_points, n_out)`` for inputs ``(n_tasks, n_points, n_in)``."""
        hidden = [x]
        h = x
        views = self._views(flat)
        last = len(views) - 1
        for i, (weight, bias) in enumerate(views):
            h = torch.baddbmm(bias, h, weight)
            if i < last:
                h = _activate(h, self.activation)
            hidden.append(h)
        return hidden if keep_hidden else h

    def gradient(self, flat, x, y, weight, loss, out):
        """Write d(loss)/d(params) of every task into ``out`` and return the outputs.

        The loss of each task depends only on that task's row of ``flat``, so one
        backward pass of the summed loss gives every task's own gradient.
        """
        hidden = self.forward(flat, x, keep_hidden=True)
        grad = loss.output_grad(hidden[-1], y, weight)
        views = self._views(flat)
        grad_views = self._views(out)
        for i in range(len(views) - 1, -1, -1):
            grad_w, grad_b = grad_views[i]
            torch.bmm(hidden[i].transpose(1, 2), grad, out=grad_w)
            torch.sum(grad, dim=1, keepdim=True, out=grad_b)
            if i > 0:
                grad = torch.bmm(grad, views[i][0].transpose(1, 2))
                grad = _activation_backward(grad, hidden[i], self.activation)
        return hidden[-1]


class BatchedModule:
    """Any ``torch.nn.Module`` evaluated per task with ``torch.func``.

    Parameters
    ----------
    module : torch.nn.Module
        The network; its parameters give the shapes and the initialisation.
    """

    def __init__(self, module):
        self.module = module
        named = [(name, p) for name, p in module.named_parameters()]
        self._names = [name for name, _ in named]
        self._shapes = [tuple(p.shape) for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self.n_params = sum(self._numels)
        self._buffers = {name: b for name, b in module.named_buffers()}

    def init_params(self, generator=None, dtype=torch.float32):
        """The module's own initial parameters, flattened."""
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).to(dtype)

    def to_torch_module(self, theta):
        """Return a copy of the module holding ``theta``."""
        import copy

        module = copy.deepcopy(self.module).cpu()
        with torch.no_grad():
            for p, value in zip(module.parameters(), self._unflatten(theta.cpu())):
                p.copy_(value)
        return module

    def _unflatten(self, row):
        chunks = torch.split(row, self._numels)
        return [c.view(shape) for c, shape in zip(chunks, self._shapes)]

    def _call(self, row, x):
        params = dict(zip(self._names, self._unflatten(row)))
        buffers = {k: v.to(row.device) for k, v in self._buffers.items()}
        return torch.func.functional_call(self.module, (params, buffers), (x,))

    def forward(self, flat, x):
        """Outputs of every task's network on that task's inputs."""
        return torch.vmap(self._call)(flat, x)

    def gradient(self, flat, x, y, weight, loss, out):
        """Write per-task parameter gradients into ``out`` and return the outputs."""

        def task_loss(row, xt, yt, wt):
            outputs = self._call(row, xt)
            return loss.value(outputs, yt, wt), outputs

        per_task = torch.func.grad(task_loss, has_aux=True)
        if torch.is_tensor(weight):
            grads, outputs = torch.vmap(per_task)(flat, x, y, weight)
        else:
            grads, outputs = torch.vmap(per_task, in_dims=(0, 0, 0, None))(flat, x, y, weight)
        out.copy_(grads)
        return outputs
