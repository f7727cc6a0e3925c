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

Only plain SGD on the CPU takes this path (see
:meth:`~skreptile._estimators.base.BaseReptile._lean_fit_possible`); everything else goes
through :func:`skreptile._engine.loops.adapt_tasks`.  Results agree with that path
to float32 rounding.

The inner loop of meta-training has the same problem with a meta-batch of a
few tasks: :class:`LeanTasks` runs it on stacked 3-D numpy arrays, one
``matmul`` per product for all tasks, about twice as fast as torch for the
default recipe (see :func:`skreptile._engine.loops.meta_train`).
"""

import threading

import numpy as np
from scipy.linalg.blas import sgemm
from scipy.special import expit


def _activate(z, out, activation):
    if activation == "tanh":
        np.tanh(z, out=out)
    elif activation == "relu":
        np.maximum(z, 0.0, out=out)
    elif activation == "logistic":
        expit(z, out=out)
    elif out is not z:
        out[...] = z


def _derivative(h, out, activation):
    """``f'(z)`` into ``out``, from the activation's output ``h``; False for the identity."""
    if activation == "tanh":
        np.multiply(h, h, out=out)
        np.subtract(1.0, out, out=out)
    elif activation == "relu":
        np.greater(h, 0.0, out=out)
    elif activation == "logistic":
        np.subtract(1.0, h, out=out)
        np.multiply(out, h, out=out)
    else:
        return False
    return True


def _activation_backward(back, h, scratch, activation):
    """``back *= f'(z)`` in place, from the activation's output ``h``."""
    if _derivative(h, scratch, activation):
        np.multiply(back, scratch, out=back)


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

    def adapt(self, params, x, y, n_steps, alpha, loss_name):
        """Run ``n_steps`` steps on the flat C-ordered float32 ``params``, in place.

        ``x`` ``(n_points, n_in)``, ``y`` ``(n_out, n_points)`` (transposed),
        ``alpha`` the negative step size times the loss gradient's scale.
        Returns the loss before and after, means over the points.
        """
        layers = self.layers(params)
        # sgemm writes into c only when c is Fortran-ordered float32, else into
        # a copy it returns: the transposes of the C-ordered views always are.
        layers_t = [w.T for w in layers]
        assert all(w.flags.f_contiguous for w in layers_t)
        self.inputs[:-1] = x.T
        last = len(layers) - 1
        # Everything a step touches, looked up once: a step is about 15 numpy
        # calls of a microsecond or two, and Python's own lookups would add a third.
        forward = [(layers_t[i], self.a[i], self.a[i + 1][:-1]) for i in range(last)]
        backward = [
            (layers[i][:-1], layers_t[i], self.a[i].T, self.back[i], self.d[i])
            for i in range(last, 0, -1)
        ]
        last_t, last_inputs, out = layers_t[last], self.a[last], self.out
        first_t, inputs_t = layers_t[0], self.inputs.T
        n, weight = x.shape[0], 1.0 / x.shape[0]
        squared, activation = loss_name == "squared_error", self.activation
        tanh = activation == "tanh"
        dot, subtract, multiply = np.dot, np.subtract, np.multiply
        before = after = None
        for step in range(n_steps + 1):
            for w_t, a, z in forward:
                dot(w_t, a, out=z)
                if tanh:
                    np.tanh(z, out=z)
                else:
                    _activate(z, z, activation)
            dot(last_t, last_inputs, out=out)
            measure = step == 0 or step == n_steps
            if squared:
                g = subtract(out, y, out=self.diff)
                value = float(np.vdot(g, g)) / (n * len(g)) if measure else None
            else:
                value, g = _cross_entropy_grad(out, y, weight, self.diff)
            if step == 0:
                before = value
            if step == n_steps:
                after = value
                break
            scaled = _derivative(self.hidden, self.derivative, activation)
            for w, w_t, a_t, back, derivative in backward:
                dot(w, g, out=back)  # before w changes
                sgemm(alpha, g.T, a_t, 1.0, w_t, 1, 0, 1)  # w_t += alpha g a^T, in place
                if scaled:
                    multiply(back, derivative, out=back)
                g = back
            sgemm(alpha, g.T, inputs_t, 1.0, first_t, 1, 0, 1)
        return before, after


def adapt_one(layer_sizes, activation, loss_name, theta, x, y, n_steps, lr):
    """Adapt the flat float32 weights ``theta`` to one task by ``n_steps`` SGD steps.

    ``x`` ``(n, n_in)`` and ``y`` ``(n, n_out)`` are scaled float32 arrays, and
    the loss is the mean over the points (squared error or cross-entropy), as
    in :mod:`skreptile._engine.losses`.  Returns the adapted weights (a new array)
    and the support loss before and after adaptation.
    """
    net = _lean_mlp(layer_sizes, activation, len(x))
    params = np.array(theta, dtype=np.float32, copy=True)
    # d(loss)/d(outputs) = scale * (outputs - y) for both losses.
    weight = 1.0 / len(x)
    scale = 2.0 * weight / y.shape[1] if loss_name == "squared_error" else weight
    with np.errstate(all="ignore"):  # a diverging adaptation is reported by the caller
        before, after = net.adapt(
            params, x, np.ascontiguousarray(y.T), n_steps, -lr * scale, loss_name
        )
    return params, before, after


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


# Largest product (multiply-adds of one task's layer on one minibatch) for the
# stacked engine.  Below 2**18, OpenBLAS (numpy's BLAS) runs a product on the
# calling thread (interface/gemm.c: m*n*k < SMP_THRESHOLD_MIN *
# GEMM_MULTITHREAD_THRESHOLD = 65536 * 4); above, it starts threads of its own,
# which skreptile cannot pin without changing a process-wide setting, and
# torch's engine, whose thread count is per calling thread, takes over.
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
        g *= lr
        for i in range(len(layers) - 1, 0, -1):
            back = matmul(layers[i][:, :-1], g, out=self.back[i])
            matmul(a[i], g.transpose(0, 2, 1), out=wgrad[i])
            _activation_backward(back, a[i][:, :-1], self.scratch[i], self.activation)
            g = back
        matmul(a[0], g.transpose(0, 2, 1), out=wgrad[0])
        np.subtract(self.params, self.grad, out=self.params)

    def _forward(self):
        a, layers_t, matmul = self.a, self.layers_t, np.matmul
        last = len(layers_t) - 1
        for i in range(last):
            z = matmul(layers_t[i], a[i], out=a[i + 1][:, :-1])
            _activate(z, z, self.activation)
        return matmul(layers_t[last], a[last], out=self.out)

    def inner_loop(self, theta, x, y, weight, lr, loss_sums=None, n_total=None):
        """Adapt a copy of ``theta`` to every task, one minibatch a step; the sum of their weights.

        ``x`` ``(n_steps, n_tasks, batch, n_in)`` and ``y`` ``(n_steps,
        n_tasks, batch, n_out)`` are the scaled minibatches, ``weight`` the
        weight of every point in its task's loss (``1 / batch``).
        ``loss_sums`` (an array of two) accumulates the task losses at the
        first and at the last step divided by ``n_total`` (the tasks of the
        whole meta-batch, of which these may be a block; by default these),
        as :func:`skreptile._engine.loops.adapt` does.  Returns a buffer overwritten
        by the next call.
        """
        self.params[:] = theta
        n_steps = len(x)
        for step in range(n_steps):
            self.a[0][:, :-1] = x[step].transpose(0, 2, 1)
            self._forward()
            measure = loss_sums is not None and step in (0, n_steps - 1)
            value, g = self._loss_grad(y[step].transpose(0, 2, 1), weight, measure)
            if measure:
                mean_loss = value / (n_total or self.n_tasks)
                if step == 0:
                    loss_sums[0] += mean_loss
                if step == n_steps - 1:
                    loss_sums[1] += mean_loss
            self._step(lr, g)
        return self.params.sum(axis=0, out=self.total)


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
        _activate(z, z, activation)
        nxt[-1] = 1.0
        a = nxt
    return a
