"""The Reptile loops, inner adaptation and outer interpolation, on torch tensors.

Nothing here knows about scikit-learn; the estimators hand it tensors already
on the right device.  Small meta-batches of the perceptron on the CPU run their
inner loop on the lean numpy engine (:mod:`skreptile._engine.numpy_mlp`), on the tensors'
own memory.  Every loop runs without host synchronisation
(no ``.item()``) except for an occasional finiteness check.  All adaptation,
in meta-training, ``fit``, batched prediction, validation and evaluation, goes
through :func:`adapt`.
"""

import math

import numpy as np
import torch

from . import numpy_mlp as _lean
from .threads import net_block_workers, run_blocks, task_blocks

ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8


class InnerOptimizer:
    """The inner-loop optimiser of every task slot of a workspace.

    ``"sgd"``: ``w <- w - lr * g``.

    ``"adam"``: the optimiser of the Reptile paper's code (openai/supervised-
    reptile, TensorFlow's ``AdamOptimizer(beta1=0)``): with ``beta1 = 0`` the
    first moment is the gradient itself, and
    ``v <- beta2 v + (1 - beta2) g^2``,
    ``w <- w - lr * sqrt(1 - beta2^t) * g / (sqrt(v) + 1e-8)``.
    As in that code, the optimiser's state (``v`` and the step count ``t``) is
    *not* part of the model's weights: it is kept across tasks and
    meta-iterations (one state per task slot of a meta-batch), and adaptation
    after meta-training starts from the state meta-training ended with.

    Parameters
    ----------
    kind : {"sgd", "adam"}
    lr : float
    net : BatchedMLP or BatchedModule
    ws : Workspace
        The task slots whose weights the optimiser updates.
    state : dict or None
        ``{"v": Tensor (n_params,) or (n_slots, n_params), "t": int}`` to start
        from (one ``v`` broadcast to every slot, or one per slot); None starts afresh.
    """

    def __init__(self, kind, lr, net, ws, state=None):
        self.kind = kind
        self.lr = float(lr)
        self.net = net
        self.t = 0
        self._v = self._done = None
        self._done_t = 0
        if kind == "adam":
            self._v = net.workspace(ws.n_tasks, ws.params)
            self._v.params.zero_()
            if state is not None:
                v = torch.as_tensor(state["v"], dtype=ws.params.dtype, device=ws.params.device)
                if v.dim() == 1:
                    net.broadcast(v, self._v)
                else:
                    net.set_task_params(self._v, v)
                self.t = int(state["t"])

    def step(self, params, grad):
        """Update ``params`` in place from ``grad``."""
        if self._v is None:
            params.add_(grad, alpha=-self.lr)
            return
        self.t += 1
        v = self._v.params
        v.mul_(ADAM_BETA2).addcmul_(grad, grad, value=1.0 - ADAM_BETA2)
        step = self.lr * math.sqrt(1.0 - ADAM_BETA2**self.t)
        params.addcdiv_(grad, v.sqrt().add_(ADAM_EPSILON), value=-step)

    def mark_done(self):
        """Remember the state as of now (the end of a meta-iteration), on the device.

        An interruption inside the next meta-iteration then checkpoints this
        state, not one that is part-way through it.
        """
        if self._v is None:
            return
        if self._done is None:
            self._done = self._v.params.clone()
        else:
            self._done.copy_(self._v.params)
        self._done_t = self.t

    def state(self, per_slot=True, done=False):
        """The state to continue from: per slot, or averaged over slots; None for SGD.

        ``done=True`` gives the state :meth:`mark_done` last remembered.
        """
        if self._v is None:
            return None
        slots, t = self._v, self.t
        if done and self._done is not None:
            slots = self.net.workspace(self._v.n_tasks, self._v.params)
            slots.params.copy_(self._done)
            t = self._done_t
        v = self.net.all_task_params(slots) if per_slot else self.net.task_mean(slots)
        return {"v": v.detach().cpu().numpy().copy(), "t": t}


def _fused_sgd(net, optimizer):
    """Whether steps can run as :meth:`BatchedMLP.sgd_step` (plain SGD, perceptron)."""
    return optimizer.kind == "sgd" and hasattr(net, "sgd_step")


def _task_slice(a, per_step, start, stop):
    if isinstance(a, float):
        return a
    return a[:, start:stop] if per_step else a[start:stop]


def adapt(net, loss, ws, x, y, weight, n_steps, optimizer, loss_sums=None, on_step=None):
    """Run ``n_steps`` gradient steps on the per-task weights of workspace ``ws`` in place.

    ``x`` is either ``(n_tasks, n_points, n_in)``, used at every step (full-batch
    adaptation), or ``(n_steps, n_tasks, batch, n_in)``, one minibatch a step;
    ``y`` and ``weight`` follow the same layout.  ``loss_sums``, a device tensor
    of two values, accumulates the mean task loss at the first and at the last
    step, from the outputs the gradient computes anyway (no host sync).
    ``on_step(step, ws)``, when given, is called before every step and after
    the last (``step == n_steps``), e.g. to predict along the way.

    With plain SGD and the perceptron, each step is one fused pass
    (:meth:`~skreptile._engine.torch_mlp.BatchedMLP.sgd_step`).  All the tasks of
    ``ws`` run together: :func:`adapt_from` cuts a meta-batch into cache-sized
    blocks first.
    """
    per_step = x.dim() == 4
    if on_step is None and _fused_sgd(net, optimizer):
        _sgd_steps(
            net, loss, ws, x, y, weight, n_steps, optimizer.lr, per_step, loss_sums, ws.n_tasks
        )
        return ws
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
        optimizer.step(ws.params, ws.grad)
    if on_step is not None:
        on_step(n_steps, ws)
    return ws


def adapt_from(
    net,
    loss,
    ws,
    theta,
    x,
    y,
    weight,
    n_steps,
    optimizer,
    loss_sums=None,
    n_threads=None,
    keep_slots=True,
):
    """Start every task of ``ws`` from ``theta``, :func:`adapt`, and return the tasks' mean weights.

    One Reptile inner loop.  When the tasks run in cache-sized blocks, each
    block is set to ``theta`` just before its steps, which run while it is in
    cache: a meta-batch whose slots outgrow the caches then costs per task
    what a small one does.  Blocks run on the threads that ``n_threads``
    allows (:mod:`skreptile._engine.threads`), and their sums are added in block
    order, so the result does not depend on the number of threads.

    ``keep_slots=False``: only the mean is wanted, not every task's weights in
    ``ws``.  Each thread then adapts its blocks in a block-sized workspace of
    its own, reused from block to block and from one call to the next, and
    each block's sum is added to the total while still in cache: a meta-batch
    of wide networks never touches the megabytes per task of ``ws``'s slots.
    """
    blocks = task_blocks(net, optimizer, ws.n_tasks, x.shape[-2], x.device)
    if len(blocks) == 1:
        net.broadcast(theta, ws)
        adapt(net, loss, ws, x, y, weight, n_steps, optimizer, loss_sums)
        return net.task_mean(ws)
    per_step = x.dim() == 4
    total = ws.scratch.get("total")
    if total is None:
        total = ws.scratch["total"] = torch.empty_like(theta)
    total.zero_()
    free_sums = ws.scratch.setdefault("block_sums", [])  # sums of early blocks, pooled

    def run_block(start, stop, scratch):
        if keep_slots:
            sub = net.block(ws, start, stop, scratch)
        else:
            sub = scratch.get(("block", stop - start))
            if sub is None:
                sub = scratch[("block", stop - start)] = net.workspace(stop - start, theta)
        net.broadcast(theta, sub)
        xb, yb = _task_slice(x, per_step, start, stop), _task_slice(y, per_step, start, stop)
        wb = _task_slice(weight, per_step, start, stop)
        sums = None if loss_sums is None else torch.zeros_like(loss_sums)
        _sgd_steps(net, loss, sub, xb, yb, wb, n_steps, optimizer.lr, per_step, sums, ws.n_tasks)
        return sub, sums

    def keep(result):
        # A block done before its turn: its sum, before the thread reuses the workspace.
        sub, sums = result
        try:
            block_sum = free_sums.pop()  # atomic: another thread may have emptied the list
        except IndexError:
            block_sum = torch.empty_like(theta)
        return net.task_sum(sub, block_sum), sums

    def combine(index, result):
        part, sums = result
        if torch.is_tensor(part):
            total.add_(part)
            free_sums.append(part)
        else:
            net.add_task_sum(part, total)
        if loss_sums is not None:
            loss_sums.add_(sums)

    workers = net_block_workers(net, n_threads, x.device, len(blocks))
    # Each thread's buffers, kept with the workspace across meta-iterations.
    scratches = ws.scratch.setdefault("threads", [])
    run_blocks(blocks, run_block, workers, scratches, combine, keep)
    return total.div(ws.n_tasks)


def _sgd_steps(net, loss, ws, x, y, weight, n_steps, lr, per_step, loss_sums, n_total):
    """The plain SGD steps of one block of tasks (see :func:`adapt`): fused for the perceptron."""
    fused = hasattr(net, "sgd_step")
    for step in range(n_steps):
        xs, ys, w = x, y, weight
        if per_step:
            xs, ys = x[step], y[step]
            w = weight if isinstance(weight, float) else weight[step]
        if fused:
            outputs = net.sgd_step(ws, xs, ys, w, loss, lr)
        else:
            outputs = net.gradient(ws, xs, ys, w, loss)
            ws.params.add_(ws.grad, alpha=-lr)
        if loss_sums is not None:
            if step == 0:
                loss_sums[0].add_(loss.value(outputs, ys, w).sum() / n_total)
            if step == n_steps - 1:
                loss_sums[1].add_(loss.value(outputs, ys, w).sum() / n_total)


def adapt_tasks(
    net,
    loss,
    theta,
    packed,
    n_steps,
    optimizer,
    lr,
    optimizer_state=None,
    on_step=None,
    n_threads=None,
):
    """Adapt one copy of ``theta`` per task of ``packed`` (full batch) and measure it.

    ``on_step(step, ws, tasks)``, when given, is called before every step and
    after the last with a workspace of the tasks ``tasks`` (a slice of
    ``packed``'s): the tasks may be adapted in blocks (:func:`~skreptile._engine.threads.task_blocks`),
    on the threads that ``n_threads`` allows (:mod:`skreptile._engine.threads`), so
    ``on_step`` may be called from several threads at once, each time for
    other tasks.

    Returns
    -------
    ws : Workspace
        Every task's adapted weights.
    loss_before, loss_after : Tensor of shape (n_tasks,)
        Each task's support loss at ``theta`` and after adaptation.
    """
    ws = net.workspace(packed.n_tasks, theta)
    net.broadcast(theta, ws)
    inner = InnerOptimizer(optimizer, lr, net, ws, optimizer_state)
    n_points = packed.xs.shape[1]
    blocks = task_blocks(net, inner, packed.n_tasks, n_points, packed.xs.device)
    fused = _fused_sgd(net, inner)

    def run_block(start, stop, scratch):
        sub = ws if len(blocks) == 1 else net.block(ws, start, stop, scratch)
        tasks = slice(start, stop)
        xs, ys = packed.xs[tasks], packed.ys[tasks]
        w = _task_slice(packed.weight, False, start, stop)
        before = None
        if n_steps == 0 or not fused:
            before = loss.value(net.forward_tasks(sub, xs), ys, w)
        for step in range(n_steps):
            if on_step is not None:
                on_step(step, sub, tasks)
            if fused:
                # The loss at theta comes from the first step's outputs.
                outputs = net.sgd_step(sub, xs, ys, w, loss, lr)
                if step == 0:
                    before = loss.value(outputs, ys, w)
            else:
                net.gradient(sub, xs, ys, w, loss)
                inner.step(sub.params, sub.grad)
        if on_step is not None:
            on_step(n_steps, sub, tasks)
        return before, loss.value(net.forward_tasks(sub, xs), ys, w)

    with torch.no_grad():
        workers = net_block_workers(net, n_threads, packed.xs.device, len(blocks))
        measured = run_blocks(blocks, run_block, workers)
    return ws, torch.cat([m[0] for m in measured]), torch.cat([m[1] for m in measured])


class MetaDiverged(FloatingPointError):
    """Raised when the meta-learned weights stop being finite."""


def _lean_inner_loop(net, loss, theta, optimizer, reducer, n_threads):
    """The inner loop on the lean numpy engine, when it applies; else None.

    The perceptron with plain SGD on the CPU spends its inner loop in the
    dispatch of some twenty small torch operations a step;
    :class:`~skreptile._engine.numpy_mlp.LeanTasks` runs the same steps on stacked numpy
    arrays, about twice as fast.  A meta-batch larger than a cache-sized block
    runs block by block on the threads ``n_threads`` allows, as
    :func:`adapt_from` does, the blocks' sums added in block order.  Tasks of
    different sizes (zero weights on padding) and data-parallel runs keep the
    torch path.  Returns ``inner_loop(x, y, weight, loss_sums) -> mean
    weights`` (a tensor), or None for a meta-batch whose products are too
    large for it (:func:`~skreptile._engine.numpy_mlp.stacked_possible`).
    """
    if (
        reducer is not None
        or not _fused_sgd(net, optimizer)
        or theta.device.type != "cpu"
        or theta.dtype != torch.float32
    ):
        return None
    theta_array = theta.numpy()

    def inner_loop(x, y, weight, loss_sums):
        n_steps, n_tasks, batch = x.shape[:3]
        if not _lean.stacked_possible(net.layer_sizes, batch):
            return None  # wide layers: torch's engine (see _lean.MAX_PRODUCT)
        xs, ys = x.numpy(), y.numpy()
        blocks = task_blocks(net, optimizer, n_tasks, batch, x.device)

        def run_block(start, stop, scratch):
            key = ("lean", stop - start, batch)
            engine = scratch.get(key)
            if engine is None:
                engine = scratch[key] = _lean.LeanTasks(
                    net.layer_sizes, net.activation, loss.name, stop - start, batch
                )
            sums = None if loss_sums is None else np.zeros(2)
            with np.errstate(all="ignore"):  # divergence is caught by the finiteness check
                block_total = engine.inner_loop(
                    theta_array,
                    xs[:, start:stop],
                    ys[:, start:stop],
                    weight,
                    optimizer.lr,
                    sums,
                    n_tasks,
                )
            return block_total, sums

        total = np.zeros(net.n_params, dtype=np.float32)

        def combine(index, result):
            # In block order: the result does not depend on the number of threads.
            block_total, sums = result
            with np.errstate(all="ignore"):  # divergence is caught by the finiteness check
                np.add(total, block_total, out=total)
            if loss_sums is not None:
                loss_sums.add_(torch.from_numpy(sums).to(loss_sums.dtype))

        def keep(result):  # a block done before its turn: the engine's buffer is reused
            return result[0].copy(), result[1]

        workers = net_block_workers(net, n_threads, x.device, len(blocks))
        run_blocks(blocks, run_block, workers, scratches, combine, keep)
        return torch.from_numpy(total).div_(n_tasks)

    scratches = []  # each thread's engines, kept across meta-iterations
    return inner_loop


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
    optimizer,
    ws,
    *,
    n_meta_iter,
    meta_lr,
    meta_lr_schedule,
    inner_steps,
    start_iter=0,
    check_every=100,
    on_iteration=None,
    loss_sums=None,
    dropout_seed=0,
    reducer=None,
    n_threads=None,
):
    """Meta-train ``theta`` (a flat parameter vector) in place with Reptile.

    ``chunks`` yields ``(x, y, weight)`` with ``x`` of shape
    ``(n_iters_in_chunk, inner_steps, meta_batch_size, batch, n_in)``: the inner
    minibatches of several meta-iterations, moved to the device in one copy.
    ``ws`` holds the task slots and ``optimizer`` their inner optimiser.  The
    step size of iteration ``i`` is that of a run of ``n_meta_iter`` iterations,
    whatever ``start_iter``, so a resumed or warm-started run follows the
    schedule of one uninterrupted run.  ``theta`` always holds the weights after
    the last completed meta-iteration, so an interruption leaves it usable.
    ``reducer``, in a data-parallel run (:mod:`skreptile._training.distributed`), holds
    this rank's share of the meta-batch in ``ws`` and replaces the task mean
    by the mean over every rank's tasks (one all-reduce); the losses of each
    iteration then go through it into ``loss_sums``.  The dropout masks of
    iteration ``i`` (for modules with random layers) are seeded by
    ``dropout_seed + i``, so that they too are those of one uninterrupted run.
    ``n_threads`` is the estimator's parameter: the cache-sized blocks of a
    large meta-batch run on that many threads (see :func:`adapt_from`).
    Returns the number of meta-iterations completed.
    """
    iteration = start_iter
    inner_losses = loss_sums if reducer is None else reducer.loss_step
    lean = _lean_inner_loop(net, loss, theta, optimizer, reducer, n_threads)
    for x, y, weight in chunks:
        for k in range(x.shape[0]):
            w = weight if isinstance(weight, float) else weight[k]
            if ws.rng is not None:
                ws.rng.manual_seed(dropout_seed + iteration)
            mean = None
            if lean is not None and isinstance(w, float):
                mean = lean(x[k], y[k], w, inner_losses)
            if mean is None:
                mean = adapt_from(
                    net,
                    loss,
                    ws,
                    theta,
                    x[k],
                    y[k],
                    w,
                    inner_steps,
                    optimizer,
                    inner_losses,
                    n_threads,
                    keep_slots=reducer is not None,
                )
            if reducer is not None:  # every rank's tasks: ws holds this rank's adapted slots
                mean = reducer.mean(ws)
            step = meta_lr_at(meta_lr, meta_lr_schedule, iteration, n_meta_iter)
            # Serial Reptile is theta + eps * (phi - theta); batched Reptile moves
            # towards the mean of the adapted weights.  lerp_ does either in one op.
            theta.lerp_(mean, step)
            iteration += 1
            if on_iteration is not None:
                on_iteration(iteration)
            if iteration % check_every == 0 or iteration == n_meta_iter:
                if not bool(torch.isfinite(theta).all()):
                    raise MetaDiverged(iteration)
            if iteration >= n_meta_iter:
                return iteration
    return iteration
