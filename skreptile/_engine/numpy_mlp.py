"""Lean numpy engines for small perceptrons: one task, or a small meta-batch.

``fit`` on ten points runs 32 gradient steps of a 1-64-64-1 network: some
130,000 multiply-adds a step, a few microseconds of arithmetic.  Through torch,
each of the twenty-odd operations of a step costs 3 to 5 microseconds of
dispatch; numpy's cost about 1.  This engine computes the same steps on 2-D
numpy arrays, with the weights laid out once so that the operations are as few
as possible:

* ``theta`` is stored layer by layer as ``W (fan_in, fan_out)`` followed by
  ``b (1, fan_out)``: each layer's block *is* the matrix ``[W; b]`` of shape
  ``(fan_in + 1, fan_out)``.  Inputs carry a trailing column of ones, so a
  layer is one matrix product and the gradient of weights and bias one more.
* The step size and the loss's scale are folded into one BLAS ``sgemm`` per
  layer that adds ``alpha g A^T`` to the weights in place: no weight gradient
  is stored and no separate optimiser pass runs.
* The loss at the start, for :func:`~skreptile._training.selftune.check_adaptation`, comes
  from the first step's outputs; only the loss at the end costs a forward pass.

Only plain SGD on the CPU takes this path (:class:`NumpyMLP`, chosen by
:func:`skreptile._engine.choice.choose_backend`); its steps run in the one
inner-step loop, :func:`skreptile._engine.inner.run_steps`, as every backend's
do.  Results agree with the torch path to float32 rounding.

The inner loop of meta-training has the same problem with a meta-batch of a
few tasks: :mod:`skreptile._engine.numpy_tasks` runs it on stacked 3-D numpy
arrays.
"""

import threading

import numpy as np
import torch
from scipy.linalg.blas import sgemm

from .activations import ACTIVATIONS
from .backend import Backend


class LeanMLP:
    """SGD steps of one perceptron on one task, in numpy.

    Activations are kept transposed, one column a point: layer ``i``'s inputs
    are ``A_i = [h_i^T; 1]`` of shape ``(fan_in + 1, n_points)``, so that a
    layer's outputs are written by one product straight into the first rows of
    the next layer's inputs and the activation runs in place on contiguous
    memory (numpy is several times slower on strided arrays).  The inputs of
    all hidden layers lie in one buffer, so that the activations' derivatives
    of every layer take one pass.

    A step is some fifteen calls, each a microsecond or two: three products
    forward, the loss gradient, the derivatives, and per layer the gradient
    flowing back and one BLAS ``sgemm`` that updates the weights in place,
    ``[W; b]^T <- [W; b]^T + alpha g A^T`` (``beta = 1``, ``alpha`` the
    step size times the loss's scale), so that no weight gradient is ever
    stored and no separate update pass runs.

    Parameters
    ----------
    layer_sizes : tuple of int
    activation : str
    n_points : int
        Columns of every input the buffers are made for.
    """

    def __init__(self, layer_sizes, activation, n_points):
        dtype = np.float32
        self.layer_sizes = layer_sizes
        self.activation = activation
        pairs = list(zip(layer_sizes[:-1], layer_sizes[1:]))
        hidden_rows = [fan_in + 1 for fan_in, _ in pairs[1:]]
        self.inputs = np.ones((layer_sizes[0] + 1, n_points), dtype)
        self.hidden = np.ones((sum(hidden_rows), n_points), dtype)
        self.derivative = np.empty_like(self.hidden)
        self.a, self.d = [self.inputs], [None]
        start = 0
        for rows in hidden_rows:
            self.a.append(self.hidden[start : start + rows])
            self.d.append(self.derivative[start : start + rows - 1])
            start += rows
        self.out = np.empty((layer_sizes[-1], n_points), dtype)
        self.diff = np.empty_like(self.out)
        self.back = [None] + [np.empty((fan_in, n_points), dtype) for fan_in, _ in pairs[1:]]

    def layers(self, params):
        """Views ``[W; b]`` of shape ``(fan_in + 1, fan_out)`` into the flat ``params``."""
        return self.layers_of(self.layer_sizes, params)

    @staticmethod
    def layers_of(layer_sizes, params):
        """The ``[W; b]`` views of flat ``params`` for a network of ``layer_sizes``."""
        views, start = [], 0
        for fan_in, fan_out in zip(layer_sizes[:-1], layer_sizes[1:]):
            end = start + (fan_in + 1) * fan_out
            views.append(params[start:end].reshape(fan_in + 1, fan_out))
            start = end
        return views

    def stepper(self, params, x, y, alpha, loss_name):
        """``(step, loss)`` closures: one SGD step on the flat ``params`` in place, and the loss.

        ``params`` are C-ordered float32, ``x`` ``(n_points, n_in)``, ``y``
        ``(n_out, n_points)`` (transposed), ``alpha`` the negative step size
        times the loss gradient's scale.  ``step(x, y, weight, measure)``
        (whose data are those given here) returns the loss
        of the step's outputs (the weights before it), a mean over the
        points, when ``measure``; ``loss()`` that of the current weights.
        Everything a step touches is looked up here, once: a step is about 15
        numpy calls of a microsecond or two, and Python's own lookups would
        add a third.
        """
        layers = self.layers(params)
        # sgemm writes into c only when c is Fortran-ordered float32, else into
        # a copy it returns, and the update would be lost: the transposes of
        # the C-ordered views always are, which is checked here.
        layers_t = [w.T for w in layers]
        if not all(w.flags.f_contiguous and w.dtype == np.float32 for w in layers_t):
            raise ValueError(
                "LeanMLP needs C-ordered float32 weights: sgemm would update a copy of "
                "Fortran-ordered or float64 ones, leaving the weights unchanged."
            )
        self.inputs[:-1] = x.T
        last = len(layers) - 1
        forward = [(layers_t[i], self.a[i], self.a[i + 1][:-1]) for i in range(last)]
        backward = [
            (layers[i][:-1], layers_t[i], self.a[i].T, self.back[i], self.d[i])
            for i in range(last, 0, -1)
        ]
        last_t, last_inputs, out, diff = layers_t[last], self.a[last], self.out, self.diff
        first_t, inputs_t = layers_t[0], self.inputs.T
        hidden, derivatives = self.hidden, self.derivative
        n, weight = x.shape[0], 1.0 / x.shape[0]
        squared, activation = loss_name == "squared_error", self.activation
        activate = ACTIVATIONS[activation].numpy_forward
        derive = ACTIVATIONS[activation].numpy_derivative
        dot, subtract, multiply = np.dot, np.subtract, np.multiply

        def loss():
            for w_t, a, z in forward:
                dot(w_t, a, out=z)
                activate(z, z)
            dot(last_t, last_inputs, out=out)
            if squared:
                g = subtract(out, y, out=diff)
                return float(np.vdot(g, g)) / (n * len(g))
            return _cross_entropy_grad(out, y, weight, diff)[0]

        def step(x, y_, weight_, measure):  # the data are those bound above
            # The forward pass and the loss as in loss(), inline: one call a step fewer.
            for w_t, a, z in forward:
                dot(w_t, a, out=z)
                activate(z, z)
            dot(last_t, last_inputs, out=out)
            if squared:
                g = subtract(out, y, out=diff)
                value = float(np.vdot(g, g)) / (n * len(g)) if measure else None
            else:
                value, g = _cross_entropy_grad(out, y, weight, diff)
            if derive is not None:
                derive(hidden, derivatives)
            for w, w_t, a_t, back, derivative in backward:
                dot(w, g, out=back)  # before w changes
                sgemm(alpha, g.T, a_t, 1.0, w_t, 1, 0, 1)  # w_t += alpha g a^T, in place
                if derive is not None:
                    multiply(back, derivative, out=back)
                g = back
            sgemm(alpha, g.T, inputs_t, 1.0, first_t, 1, 0, 1)
            return value

        return step, loss


# Buffers of the last networks each thread adapted: fit is called over and over
# with the same shapes, and building them costs a tenth of a small fit.  Per
# thread, so that fits in several threads never share a buffer.
_buffers = threading.local()


def _lean_mlp(layer_sizes, activation, n):
    cache = _buffers.__dict__.setdefault("nets", {})
    key = (tuple(layer_sizes), activation, n)
    net = cache.get(key)
    if net is None:
        if len(cache) >= 8:
            cache.clear()
        net = cache[key] = LeanMLP(layer_sizes, activation, n)
    return net


def _cross_entropy_grad(out, y, weight, diff):
    """Summed cross-entropy and ``softmax(out) - y`` (into ``diff``).

    Arrays are ``(n_out, n)``, or ``(n_tasks, n_out, n)`` for stacked tasks
    (the value is then the sum of the tasks' losses).
    """
    np.subtract(out, out.max(axis=-2, keepdims=True), out=diff)
    log_total = np.log(np.exp(diff).sum(axis=-2, keepdims=True))
    value = -float(((diff - log_total) * y).sum()) * weight
    np.subtract(diff, log_total, out=diff)
    np.exp(diff, out=diff)
    np.subtract(diff, y, out=diff)
    return value, diff


def predict_one(activation, layers, x):
    """Outputs of the network ``layers`` (float64 ``[W; b]`` blocks) on ``x`` ``(n, n_in)``."""
    with np.errstate(all="ignore"):
        return _predict_one(activation, layers, x)


def _predict_one(activation, layers, x):
    a = np.empty((x.shape[1] + 1, len(x)))
    a[:-1] = x.T
    a[-1] = 1.0
    last = len(layers) - 1
    for i, wb in enumerate(layers):
        if i == last:
            return np.dot(wb.T, a).T
        nxt = np.empty((wb.shape[1] + 1, len(x)))
        z = np.dot(wb.T, a, out=nxt[:-1])
        ACTIVATIONS[activation].numpy_forward(z, z)
        nxt[-1] = 1.0
        a = nxt
    return a


class NumpyMLP(Backend):
    """The perceptron's backend for one task on the CPU, in numpy: ``fit`` and ``predict``.

    Its workspace is one task's flat float32 weights with the buffers of a
    :class:`LeanMLP`; plain SGD only.  :meth:`predict` takes the float64
    ``[W; b]`` blocks of :meth:`LeanMLP.layers_of`.
    """

    kind = "numpy"
    blockable = False

    def __init__(self, net):
        self.layer_sizes, self.activation = net.layer_sizes, net.activation
        self.n_params = net.n_params

    def workspace(self, n_tasks, theta, n_points=None):
        """One task's weights, a float32 copy of ``theta``, and buffers for ``n_points`` points."""
        if n_tasks != 1:
            raise ValueError(f"NumpyMLP adapts one task at a time, not {n_tasks}.")
        ws = _OneTask()
        ws.params = np.array(theta, dtype=np.float32, copy=True)
        ws.engine = _lean_mlp(self.layer_sizes, self.activation, n_points)
        return ws

    def broadcast(self, theta, ws):
        ws.params[...] = theta

    def view(self, ws, start, stop, scratch=None):
        raise ValueError("NumpyMLP's workspace holds one task: it has no slices.")

    def stepper(self, ws, loss, optimizer, x=None, y=None):
        """Plain SGD on the full batch ``x`` ``(n, n_in)``, ``y`` ``(n, n_out)``, bound here."""
        if optimizer.kind != "sgd" or x is None or x.ndim != 2:
            raise ValueError("NumpyMLP runs plain SGD on one task's full batch only.")
        # d(loss)/d(outputs) = scale * (outputs - y) for both losses.
        weight = 1.0 / len(x)
        scale = 2.0 * weight / y.shape[1] if loss.name == "squared_error" else weight
        step, ws.loss = ws.engine.stepper(
            ws.params, x, np.ascontiguousarray(y.T), -optimizer.lr * scale, loss.name
        )
        return step

    def fuses(self, optimizer):
        return True

    def task_losses(self, ws, x, y, weight, loss):
        """The loss (a mean over the points) at the current weights, of the data bound by :meth:`stepper`."""
        return ws.loss()

    def forward_tasks(self, ws, x):
        layers = LeanMLP.layers_of(self.layer_sizes, ws.params.astype(np.float64))
        return predict_one(self.activation, layers, x)[None]

    def predict(self, theta, x):
        """Outputs of the float64 ``[W; b]`` blocks ``theta`` on ``x`` ``(n, n_in)``, in float64."""
        return predict_one(self.activation, theta, x)

    def task_mean(self, ws):
        return torch.from_numpy(ws.params)

    def task_sum(self, ws, out):
        out[...] = ws.params
        return out

    def add_task_sum(self, ws, total):
        np.add(total, ws.params, out=total)

    def block_size(self, n_points, device):
        return None

    def work(self, n_tasks, n_points):
        """0: numpy runs on the calling thread, whose torch threads are then set to one."""
        return 0


def numpy_mlp(net):
    """The :class:`NumpyMLP` of the perceptron ``net``, made once (it holds no state)."""
    backend = net.__dict__.get("_numpy_mlp")
    if backend is None:
        backend = net._numpy_mlp = NumpyMLP(net)
    return backend


class _OneTask:
    """NumpyMLP's workspace: ``params`` (flat float32), ``engine`` (a LeanMLP), ``loss``."""

    n_tasks = 1
