"""The one inner-step loop, and the adaptations that run it.

:func:`run_steps` is the only loop over inner steps in skreptile: meta-training
(:func:`adapt_from`, one meta-iteration's tasks), ``fit`` (:func:`adapt_one`
on the numpy backend, :func:`adapt_tasks` on torch's), ``few_shot_predict``,
validation and evaluation (:func:`adapt_tasks`) all call it, with the step
kernel of the backend :func:`~skreptile._engine.choice.choose_backend` picked.
:func:`adapt_from` is also the only place where slices of a meta-batch
(cache-sized blocks, :func:`~skreptile._engine.threads.task_blocks`) are run
and their adapted weights combined, in slice order, whatever the backend.
"""

import contextlib

import numpy as np
import torch

from .optimizers import InnerOptimizer
from .prototypes import task_heads
from .threads import net_block_workers, run_blocks, task_blocks


def run_steps(step, x, y, weight, n_steps, per_step, measured=(), on_step=None, ws=None):
    """Run ``n_steps`` inner steps: the one inner-step loop.

    ``step(x, y, weight, measure)`` is a backend's step kernel
    (:meth:`~skreptile._engine.backend.Backend.stepper`), bound to its
    workspace ``ws``.  ``x`` is either used at every step (full batch,
    ``per_step=False``) or holds one minibatch a step along its first axis
    (``per_step=True``); ``y`` and ``weight`` (a float, or a tensor laid out
    as ``x``) follow.  Steps whose number is in ``measured`` return their
    loss; ``on_step(step, ws)``, when given, is called before every step and
    after the last (``step == n_steps``).  Returns the values of the first and
    of the last step (None where not measured).
    """
    first = last = None
    if on_step is None and not per_step:  # fit's case: the loop at its leanest
        for k in range(n_steps):
            value = step(x, y, weight, k in measured)
            if k == 0:
                first = value
        if n_steps:
            last = value
        return first, last
    for k in range(n_steps):
        if on_step is not None:
            on_step(k, ws)
        xs, ys, w = x, y, weight
        if per_step:
            xs, ys = x[k], y[k]
            if not isinstance(weight, float):
                w = weight[k]
        value = step(xs, ys, w, k in measured)
        if k == 0:
            first = value
        if k == n_steps - 1:
            last = value
    if on_step is not None:
        on_step(n_steps, ws)
    return first, last


def _ends(n_steps):
    return (0, n_steps - 1)


def _task_slice(a, per_step, start, stop):
    if isinstance(a, float):
        return a
    return a[:, start:stop] if per_step else a[start:stop]


def adapt(net, loss, ws, x, y, weight, n_steps, optimizer, loss_sums=None, on_step=None):
    """:func:`run_steps` on every task of the workspace ``ws`` of the torch backend ``net``.

    ``x`` is ``(n_tasks, n_points, n_in)`` (full batch) or ``(n_steps,
    n_tasks, batch, n_in)`` (one minibatch a step).  ``loss_sums``, a device
    tensor of two values, accumulates the mean task loss at the first and at
    the last step.  Returns ``ws``.
    """
    step = net.stepper(ws, loss, optimizer)
    measured = () if loss_sums is None else _ends(n_steps)
    first, last = run_steps(step, x, y, weight, n_steps, x.dim() == 4, measured, on_step, ws)
    if loss_sums is not None:
        net.add_losses(loss_sums, first, last, ws.n_tasks)
    return ws


def adapt_measured(backend, ws, loss, optimizer, x, y, weight, n_steps, on_step=None):
    """Full-batch adaptation of the tasks of ``ws`` in place, and their loss before and after.

    The loss at the start comes from the first step's outputs where the
    backend's step computes them at the weights before it (plain SGD on the
    perceptron); otherwise, and with no steps, from a forward pass.
    """
    step = backend.stepper(ws, loss, optimizer, x, y)
    fused = backend.fuses(optimizer)
    before = None
    if n_steps == 0 or not fused:
        before = backend.task_losses(ws, x, y, weight, loss)
    first, _ = run_steps(step, x, y, weight, n_steps, False, (0,) if fused else (), on_step, ws)
    if before is None:
        before = first
    return before, backend.task_losses(ws, x, y, weight, loss)


def adapt_one(backend, loss, theta, x, y, n_steps, lr):
    """Adapt the flat float32 weights ``theta`` to one task by plain SGD, on a numpy backend.

    ``x`` ``(n, n_in)`` and ``y`` ``(n, n_out)`` are scaled float32 arrays,
    the loss the mean over the points.  Returns the adapted weights (a new
    array) and the support loss before and after adaptation (floats).
    """
    ws = backend.workspace(1, theta, len(x))
    optimizer = InnerOptimizer("sgd", lr, backend, ws)
    with np.errstate(all="ignore"):  # a diverging adaptation is reported by the caller
        before, after = adapt_measured(backend, ws, loss, optimizer, x, y, 1.0 / len(x), n_steps)
    return ws.params, before, after


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
    head_init=None,
):
    """Adapt one copy of ``theta`` per task of ``packed`` (full batch) and measure it.

    ``net`` is a torch backend.  ``on_step(step, ws, tasks)``, when given, is
    called before every step and after the last with a workspace of the tasks
    ``tasks`` (a slice of ``packed``'s): the tasks may be adapted in blocks
    (:func:`~skreptile._engine.threads.task_blocks`), on the threads that
    ``n_threads`` allows, so ``on_step`` may be called from several threads
    at once, each time for other tasks.  ``head_init="prototypes"``: every
    task's output layer starts from its support set's class prototypes
    (:mod:`skreptile._engine.prototypes`).

    Returns
    -------
    ws : Workspace
        Every task's adapted weights.
    loss_before, loss_after : Tensor of shape (n_tasks,)
        Each task's support loss at ``theta`` and after adaptation.
    """
    ws = net.workspace(packed.n_tasks, theta)
    net.broadcast(theta, ws)
    if head_init == "prototypes":
        net.set_heads(ws, *task_heads(net, theta, packed.xs, packed.ys, packed.weight))
    inner = InnerOptimizer(optimizer, lr, net, ws, optimizer_state)
    blocks = task_blocks(net, inner, packed.n_tasks, packed.xs.shape[1], packed.xs.device)

    def run_block(start, stop, scratch):
        sub = ws if len(blocks) == 1 else net.view(ws, start, stop, scratch)
        tasks = slice(start, stop)
        hook = None
        if on_step is not None:

            def hook(step, sub):
                on_step(step, sub, tasks)

        w = _task_slice(packed.weight, False, start, stop)
        return adapt_measured(
            net, sub, loss, inner, packed.xs[tasks], packed.ys[tasks], w, n_steps, hook
        )

    with torch.no_grad():
        workers = net_block_workers(net, n_threads, packed.xs.device, len(blocks))
        measured = run_blocks(blocks, run_block, workers)
    return ws, torch.cat([m[0] for m in measured]), torch.cat([m[1] for m in measured])


def adapt_from(
    backend,
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
    heads=None,
):
    """Start every task of ``ws`` from ``theta``, adapt it, and return the tasks' mean weights.

    One Reptile inner loop, on ``backend``.  When the tasks run in
    cache-sized blocks, each block is set to ``theta`` just before its steps,
    which run while it is in cache: a meta-batch whose slots outgrow the
    caches then costs per task what a small one does.  Blocks run on the
    threads that ``n_threads`` allows (:mod:`skreptile._engine.threads`), and
    their sums are added in block order, so the result does not depend on the
    number of threads.

    ``keep_slots=False``: only the mean is wanted, not every task's weights in
    ``ws``.  Each thread then adapts its blocks in a block-sized workspace of
    its own, reused from block to block and from one call to the next, and
    each block's sum is added to the total while still in cache: a meta-batch
    of wide networks never touches the megabytes per task of ``ws``'s slots.
    ``loss_sums`` accumulates the tasks' mean loss at the first and last steps.
    ``heads``: ``(W, b)``, every task's output layer to start from instead
    of ``theta``'s (:func:`~skreptile._engine.prototypes.task_heads`).
    """
    n_tasks, n_points, per_step = ws.n_tasks, x.shape[-2], x.dim() == 4
    blocks = task_blocks(backend, optimizer, n_tasks, n_points, x.device)
    xd, yd = backend.task_data(x), backend.task_data(y)
    wd = weight if isinstance(weight, float) else backend.task_data(weight)
    measured = () if loss_sums is None else _ends(n_steps)
    numpy = backend.kind == "numpy"

    def run_block(start, stop, scratch):
        sub = backend.slots(ws, theta, start, stop, scratch, keep_slots, n_points)
        backend.broadcast(theta, sub)
        if heads is not None:
            backend.set_heads(sub, heads[0][start:stop], heads[1][start:stop])
        xb, yb, wb = xd, yd, wd
        if len(blocks) > 1:
            xb, yb = _task_slice(xd, per_step, start, stop), _task_slice(yd, per_step, start, stop)
            wb = _task_slice(wd, per_step, start, stop)
        step = backend.stepper(sub, loss, optimizer)
        # numpy: divergence is caught by the finiteness check of the outer loop.
        with np.errstate(all="ignore") if numpy else contextlib.nullcontext():
            first, last = run_steps(step, xb, yb, wb, n_steps, per_step, measured)
        sums = None
        if loss_sums is not None:
            sums = backend.new_loss_sums(loss_sums)
            backend.add_losses(sums, first, last, n_tasks)
        return sub, None, sums

    # Each thread's buffers, kept with the workspace across meta-iterations.
    scratches = ws.scratch.setdefault("threads", [])
    if len(blocks) == 1:
        if not scratches:
            scratches.append({})
        sub, _, sums = run_block(0, n_tasks, scratches[0])
        if sums is not None:
            backend.add_loss_sums(loss_sums, sums)
        return backend.task_mean(sub)
    total = backend.zero_total(ws, theta)
    free_sums = ws.scratch.setdefault(("block_sums", backend.kind), [])  # kept sums, pooled

    def keep(result):
        # A block done before its turn: its sum, before the thread reuses the workspace.
        sub, _, sums = result
        try:
            part = free_sums.pop()  # atomic: another thread may have emptied the list
        except IndexError:
            part = backend.new_sum(theta)
        return None, backend.task_sum(sub, part), sums

    def combine(index, result):
        sub, part, sums = result
        if part is None:
            backend.add_task_sum(sub, total)
        else:
            backend.add_sum(total, part)
            free_sums.append(part)
        if loss_sums is not None:
            backend.add_loss_sums(loss_sums, sums)

    workers = net_block_workers(backend, n_threads, x.device, len(blocks))
    run_blocks(blocks, run_block, workers, scratches, combine, keep)
    return backend.total_mean(total, n_tasks)
