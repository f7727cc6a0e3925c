"""The Reptile loops: inner adaptation and outer interpolation, on torch tensors.

Nothing here knows about scikit-learn or numpy; the estimators hand it tensors
already on the right device.  Every loop runs without host synchronisation
(no ``.item()``) except for an occasional finiteness check.
"""

import torch


class InnerOptimizer:
    """Plain SGD or Adam (with ``beta1 = 0``, as in the Reptile paper) on task rows.

    The state of Adam is one buffer of the parameters' shape, reset for every
    task, so that each task's adaptation starts from the same point.
    """

    def __init__(self, kind, lr, params, beta2=0.999, eps=1e-8):
        self.kind = kind
        self.lr = float(lr)
        self.beta2 = beta2
        self.eps = eps
        self._second_moment = torch.zeros_like(params) if kind == "adam" else None

    def reset(self):
        """Forget the state of the previous tasks."""
        if self._second_moment is not None:
            self._second_moment.zero_()

    def step(self, params, grad, step_index):
        """Update ``params`` in place from ``grad``; ``step_index`` counts from 0."""
        if self._second_moment is None:
            params.add_(grad, alpha=-self.lr)
            return
        v = self._second_moment
        v.mul_(self.beta2).addcmul_(grad, grad, value=1.0 - self.beta2)
        bias_correction = 1.0 - self.beta2 ** (step_index + 1)
        denom = (v / bias_correction).sqrt_().add_(self.eps)
        params.addcdiv_(grad, denom, value=-self.lr)


def adapt(net, loss, ws, x, y, weight, n_steps, optimizer, loss_sums=None, on_step=None):
    """Run ``n_steps`` gradient steps on the per-task weights of workspace ``ws`` in place.

    ``x`` is either ``(n_tasks, n_points, n_in)``, used at every step (full-batch
    adaptation), or ``(n_steps, n_tasks, batch, n_in)``, one minibatch a step;
    ``y`` and ``weight`` follow the same layout.  ``loss_sums``, a device tensor
    of two values, accumulates the mean task loss at the first and at the last
    step, from the outputs the gradient computes anyway (no host sync).
    ``on_step(step, ws)``, when given, is called before every step and after
    the last (``step == n_steps``), e.g. to predict along the way.
    """
    optimizer.reset()
    per_step = x.dim() == 4
    for step in range(n_steps):
        if on_step is not None:
            on_step(step, ws)
        xs, ys, w = x, y, weight
        if per_step:
            xs, ys = x[step], y[step]
            w = weight if isinstance(weight, float) else weight[step]
        outputs = net.gradient(ws, xs, ys, w, loss)
        if loss_sums is not None:
            if step == 0:
                loss_sums[0].add_(loss.value(outputs, ys, w).mean())
            if step == n_steps - 1:
                loss_sums[1].add_(loss.value(outputs, ys, w).mean())
        optimizer.step(ws.params, ws.grad, step)
    if on_step is not None:
        on_step(n_steps, ws)
    return ws


class MetaDiverged(FloatingPointError):
    """Raised when the meta-learned weights stop being finite."""


def meta_lr_at(meta_lr, schedule, iteration, n_meta_iter):
    """Outer step size at ``iteration``: linear anneal to 0, as in the paper, or constant."""
    if schedule == "linear":
        return meta_lr * (1.0 - iteration / n_meta_iter)
    return meta_lr


def meta_train(
    net,
    loss,
    theta,
    chunks,
    *,
    n_meta_iter,
    meta_batch_size,
    meta_lr,
    meta_lr_schedule,
    inner_steps,
    inner_optimizer,
    inner_lr,
    start_iter=0,
    check_every=100,
    on_iteration=None,
    loss_sums=None,
):
    """Meta-train ``theta`` (a flat parameter vector) in place with Reptile.

    ``chunks`` yields ``(x, y, weight)`` with ``x`` of shape
    ``(n_iters_in_chunk, inner_steps, meta_batch_size, batch, n_in)``: the inner
    minibatches of several meta-iterations, moved to the device in one copy.
    ``theta`` always holds the weights after the last completed meta-iteration,
    so an interruption leaves it usable.  Returns the number of meta-iterations
    completed.  ``loss_sums`` is passed on to :func:`adapt`.
    """
    ws = net.workspace(meta_batch_size, theta)
    optimizer = InnerOptimizer(inner_optimizer, inner_lr, ws.params)
    iteration = start_iter
    for x, y, weight in chunks:
        for k in range(x.shape[0]):
            w = weight if isinstance(weight, float) else weight[k]
            net.broadcast(theta, ws)
            adapt(net, loss, ws, x[k], y[k], w, inner_steps, optimizer, loss_sums)
            step = meta_lr_at(meta_lr, meta_lr_schedule, iteration, n_meta_iter)
            # Serial Reptile is theta + eps * (phi - theta); batched Reptile moves
            # towards the mean of the adapted weights.  lerp_ does either in one op.
            theta.lerp_(net.task_mean(ws), step)
            iteration += 1
            if on_iteration is not None:
                on_iteration(iteration)
            if iteration % check_every == 0 or iteration == n_meta_iter:
                if not bool(torch.isfinite(theta).all()):
                    raise MetaDiverged(iteration)
            if iteration >= n_meta_iter:
                return iteration
    return iteration
