"""The Reptile inner loop of a few stacked perceptron tasks with plain SGD, in numpy.

The perceptron with plain SGD on the CPU spends its inner loop in the dispatch
of some twenty small torch operations a step; :class:`LeanTasks` runs the same
steps on stacked numpy arrays, one ``matmul`` per product for all tasks, about
twice as fast for the default recipe.  :class:`NumpyTasks` is its backend for
:func:`skreptile._engine.outer.meta_train`.
"""

import numpy as np
import torch

from .activations import ACTIVATIONS
from .backend import Backend
from .numpy_mlp import _cross_entropy_grad

# Largest product (multiply-adds of one task's layer on one minibatch) for the
# stacked engine.  Below 2**18, OpenBLAS (numpy's BLAS) runs a product on the
# calling thread (interface/gemm.c: m*n*k < SMP_THRESHOLD_MIN *
# GEMM_MULTITHREAD_THRESHOLD = 65536 * 4); above, it would start threads of its
# own, and torch's engine, whose thread count is per calling thread, takes
# over.  BLAS is also held to one thread while meta-training runs
# (threads.one_blas_thread, threadpoolctl), so that MKL and Accelerate, whose
# thresholds differ, keep the numpy engine on its block's thread too.
MAX_PRODUCT = 1 << 18


def stacked_possible(layer_sizes, n_points):
    """Whether :class:`LeanTasks` runs a network of ``layer_sizes`` on ``n_points`` a task."""
    return n_points * max(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:])) <= MAX_PRODUCT


class LeanTasks:
    """The Reptile inner loop of a few stacked tasks with plain SGD, in numpy.

    As :class:`LeanMLP`, with a leading task axis: every task's weights are a
    row of ``params`` ``(n_tasks, n_params)``, whose ``[W; b]`` blocks are
    viewed as ``(n_tasks, fan_in + 1, fan_out)``, and activations are kept
    transposed, ``(n_tasks, fan_in + 1, n_points)`` with a last row of ones.

    Parameters
    ----------
    layer_sizes : tuple of int
    activation : str
    loss_name : {"squared_error", "cross_entropy"}
    n_tasks, n_points : int
        The meta-batch size and the points of each inner minibatch.
    """

    def __init__(self, layer_sizes, activation, loss_name, n_tasks, n_points):
        dtype = np.float32
        pairs = list(zip(layer_sizes[:-1], layer_sizes[1:]))
        n_params = sum((fan_in + 1) * fan_out for fan_in, fan_out in pairs)
        self.activation, self.loss_name = activation, loss_name
        self.n_tasks, self.n_out = n_tasks, layer_sizes[-1]
        self.params = np.empty((n_tasks, n_params), dtype)
        self.grad = np.empty_like(self.params)
        self.layers = self._stacked_layers(pairs, self.params)
        self.layers_t = [w.transpose(0, 2, 1) for w in self.layers]
        self.wgrad = self._stacked_layers(pairs, self.grad)
        self.a = [np.ones((n_tasks, fan_in + 1, n_points), dtype) for fan_in, _ in pairs]
        self.out = np.empty((n_tasks, self.n_out, n_points), dtype)
        self.diff = np.empty_like(self.out)
        self.back = [np.empty((n_tasks, fan_in, n_points), dtype) for fan_in, _ in pairs]
        self.scratch = [np.empty((n_tasks, fan_in, n_points), dtype) for fan_in, _ in pairs]
        self.total = np.empty(n_params, dtype)

    @staticmethod
    def _stacked_layers(pairs, flat):
        views, start = [], 0
        for fan_in, fan_out in pairs:
            end = start + (fan_in + 1) * fan_out
            views.append(flat[:, start:end].reshape(len(flat), fan_in + 1, fan_out))
            start = end
        return views

    def _loss_grad(self, y, weight, measure):
        """The summed loss of the tasks (when ``measure``) and d(loss)/d(outputs) in ``diff``."""
        if self.loss_name == "squared_error":
            g = np.subtract(self.out, y, out=self.diff)
            value = float(np.vdot(g, g)) * weight / self.n_out if measure else None
            g *= 2.0 * weight / self.n_out
            return value, g
        value, g = _cross_entropy_grad(self.out, y, weight, self.diff)
        g *= weight
        return value, g

    def _step(self, lr, g):
        """Every task's ``[W; b] -= lr A g^T``, ``g`` the output gradient (overwritten)."""
        a, layers, wgrad, matmul = self.a, self.layers, self.wgrad, np.matmul
        derive = ACTIVATIONS[self.activation].numpy_derivative
        g *= lr
        for i in range(len(layers) - 1, 0, -1):
            back = matmul(layers[i][:, :-1], g, out=self.back[i])
            matmul(a[i], g.transpose(0, 2, 1), out=wgrad[i])
            if derive is not None:
                derive(a[i][:, :-1], self.scratch[i])
                np.multiply(back, self.scratch[i], out=back)
            g = back
        matmul(a[0], g.transpose(0, 2, 1), out=wgrad[0])
        np.subtract(self.params, self.grad, out=self.params)

    def _forward(self):
        a, layers_t, matmul = self.a, self.layers_t, np.matmul
        last = len(layers_t) - 1
        activate = ACTIVATIONS[self.activation].numpy_forward
        for i in range(last):
            z = matmul(layers_t[i], a[i], out=a[i + 1][:, :-1])
            activate(z, z)
        return matmul(layers_t[last], a[last], out=self.out)

    def stepper(self, lr):
        """``step(x, y, weight, measure)``: one SGD step of every task on its minibatch.

        ``x`` ``(n_tasks, batch, n_in)`` and ``y`` ``(n_tasks, batch, n_out)``
        are the scaled minibatches of this step, ``weight`` the weight of
        every point in its task's loss (``1 / batch``).  Returns the sum of
        the tasks' losses on the step's outputs when ``measure``.
        """
        inputs = self.a[0][:, :-1]

        def step(x, y, weight, measure):
            inputs[...] = x.transpose(0, 2, 1)
            self._forward()
            value, g = self._loss_grad(y.transpose(0, 2, 1), weight, measure)
            self._step(lr, g)
            return value

        return step


class NumpyTasks(Backend):
    """:class:`LeanTasks` as a backend: the meta-training inner loop of the perceptron ``net``.

    Its workspaces are :class:`LeanTasks` engines, one per thread and slice
    size, kept in the per-thread scratch of the meta-batch's torch workspace
    across meta-iterations; the slices (cache-sized blocks) are those of
    ``net``.  Plain SGD, float32, the CPU, and tasks of equal sizes only
    (:func:`~skreptile._engine.choice.choose_backend`).
    """

    kind = "numpy"

    def __init__(self, net, loss_name):
        self.net, self.loss_name = net, loss_name
        self.n_params = net.n_params

    def workspace(self, n_tasks, theta, n_points=None):
        return LeanTasks(
            self.net.layer_sizes, self.net.activation, self.loss_name, n_tasks, n_points
        )

    def slots(self, ws, theta, start, stop, scratch, keep_slots, n_points=None):
        key = ("lean", stop - start, n_points)
        engine = scratch.get(key)
        if engine is None:
            engine = scratch[key] = self.workspace(stop - start, theta, n_points)
        return engine

    def view(self, ws, start, stop, scratch=None):
        raise ValueError("NumpyTasks adapts slices in engines of their own (see slots).")

    def broadcast(self, theta, ws):
        ws.params[:] = theta.numpy() if torch.is_tensor(theta) else theta

    def task_data(self, x):
        return x.numpy()

    def set_heads(self, ws, W, b):
        """Set every task's output layer (its last ``[W; b]`` block) from torch tensors."""
        last = ws.layers[-1]
        last[:, :-1] = W.transpose(1, 2).numpy()
        last[:, -1] = b.numpy()

    def fuses(self, optimizer):
        return True

    def stepper(self, ws, loss, optimizer):
        if optimizer.kind != "sgd":
            raise ValueError("NumpyTasks runs plain SGD only.")
        return ws.stepper(optimizer.lr)

    def task_losses(self, ws, x, y, weight, loss):
        raise ValueError("NumpyTasks measures losses on the steps' outputs only.")

    def forward_tasks(self, ws, x):
        raise ValueError("NumpyTasks computes steps only.")

    def predict(self, theta, x):
        return self.net.predict(theta, x)

    # Losses: floats summed over a slice's tasks, kept in float64 per slice.
    def new_loss_sums(self, like):
        return np.zeros(2)

    def add_losses(self, sums, first, last, n_total):
        if first is not None:
            sums[0] += first / n_total
        if last is not None:
            sums[1] += last / n_total

    def add_loss_sums(self, loss_sums, sums):
        loss_sums.add_(torch.from_numpy(sums).to(loss_sums.dtype))

    # Sums of weights, in float32 numpy; divergence is caught by the finiteness check.
    def task_sum(self, ws, out):
        return ws.params.sum(axis=0, out=out)

    def add_task_sum(self, ws, total):
        with np.errstate(all="ignore"):
            np.add(total, ws.params.sum(axis=0, out=ws.total), out=total)

    def new_sum(self, theta):
        return np.empty(self.n_params, dtype=np.float32)

    def zero_total(self, ws, theta):
        return np.zeros(self.n_params, dtype=np.float32)

    def add_sum(self, total, part):
        with np.errstate(all="ignore"):
            np.add(total, part, out=total)

    def total_mean(self, total, n_tasks):
        return torch.from_numpy(total).div_(n_tasks)

    def task_mean(self, ws):
        total = self.zero_total(None, None)
        self.add_task_sum(ws, total)
        return self.total_mean(total, ws.n_tasks)

    def block_size(self, n_points, device):
        return self.net.block_size(n_points, device)

    def work(self, n_tasks, n_points):
        return self.net.work(n_tasks, n_points)
