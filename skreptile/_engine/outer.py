"""The one Reptile outer loop: meta-training on any backend.

Every loop runs without host synchronisation (no ``.item()``) except for an
occasional finiteness check.
"""

import contextlib

import torch

from . import captured
from .choice import choose_backend
from .inner import adapt_from
from .prototypes import task_heads
from .threads import one_blas_thread


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
    head_init=None,
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
    large meta-batch run on that many threads (see
    :func:`~skreptile._engine.inner.adapt_from`).  The backend of each chunk's
    inner loops is :func:`~skreptile._engine.choice.choose_backend`'s choice.
    On CUDA, with tasks of equal sizes, one meta-iteration is captured in a
    CUDA graph and replayed (:mod:`skreptile._engine.captured`), with the
    same results; where capture does not apply or fails, every iteration
    runs eagerly.  Returns the number of meta-iterations completed.

    ``head_init="prototypes"`` (the classifier's): every task's inner loop
    starts with its output layer set from the class prototypes of all its
    points of the iteration (:func:`~skreptile._engine.prototypes.task_heads`,
    first order), and the output layer of ``theta`` gets no outer update:
    every adaptation replaces it, and the mean of heads fitted to tasks whose
    labels are drawn in a random order carries nothing to learn.  Such
    iterations are not captured in CUDA graphs.
    """
    iteration = start_iter
    inner_losses = loss_sums if reducer is None else reducer.loss_step
    blas_held = False
    capture = None  # the captured iteration; False once refused
    with contextlib.ExitStack() as held:
        for x, y, weight in chunks:
            backend = choose_backend(
                net,
                "meta_train",
                theta.device,
                optimizer=optimizer,
                n_points=x.shape[-2],
                dtype=theta.dtype,
                equal_sizes=isinstance(weight, float),
                data_parallel=reducer is not None,
                loss_name=loss.name,
            )
            if backend.kind == "numpy" and not blas_held:
                # The numpy engine runs BLAS products inside blocks: one BLAS
                # thread each, held once for the rest of the run.
                held.enter_context(one_blas_thread())
                blas_held = True
            if capture is None and head_init == "prototypes":
                capture = False  # the heads are computed between broadcast and steps
            if capture is None:
                capture = (
                    captured.prepare(
                        backend,
                        loss,
                        ws,
                        theta,
                        optimizer,
                        inner_steps,
                        weight,
                        x[0],
                        y[0],
                        inner_losses is not None,
                        reducer is not None,
                    )
                    or False
                )
            table = None
            if (
                capture
                and capture.state != "failed"
                and capture.key == captured.key_of(x[0], y[0], weight)
            ):
                # The step sizes of the chunk's iterations, moved to the device in one copy.
                steps = [
                    meta_lr_at(meta_lr, meta_lr_schedule, iteration + k, n_meta_iter)
                    for k in range(x.shape[0])
                ]
                table = captured.constants_table(optimizer, steps, inner_steps, theta)
            for k in range(x.shape[0]):
                if table is not None and capture.run(x[k], y[k], table[k], inner_losses):
                    iteration += 1
                    if _after(iteration, theta, on_iteration, check_every, n_meta_iter):
                        return iteration
                    continue
                w = weight if isinstance(weight, float) else weight[k]
                if ws.rng is not None:
                    ws.rng.manual_seed(dropout_seed + iteration)
                heads = head = None
                if head_init == "prototypes":
                    heads = task_heads(net, theta, x[k], y[k], w)
                    head = theta[net.head_slice()].clone()
                mean = adapt_from(
                    backend,
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
                    heads=heads,
                )
                if reducer is not None:  # every rank's tasks: ws holds this rank's adapted slots
                    mean = reducer.mean(ws)
                step = meta_lr_at(meta_lr, meta_lr_schedule, iteration, n_meta_iter)
                # Serial Reptile is theta + eps * (phi - theta); batched Reptile moves
                # towards the mean of the adapted weights.  lerp_ does either in one op.
                theta.lerp_(mean, step)
                if head is not None:  # no outer update of the output layer (see above)
                    theta[net.head_slice()] = head
                iteration += 1
                if _after(iteration, theta, on_iteration, check_every, n_meta_iter):
                    return iteration
    return iteration


def _after(iteration, theta, on_iteration, check_every, n_meta_iter):
    """The end of a meta-iteration: callbacks, the occasional finiteness check; True when done."""
    if on_iteration is not None:
        on_iteration(iteration)
    if iteration % check_every == 0 or iteration == n_meta_iter:
        if not bool(torch.isfinite(theta).all()):
            raise MetaDiverged(iteration)
    return iteration >= n_meta_iter
