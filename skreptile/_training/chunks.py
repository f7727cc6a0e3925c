"""The tasks of a meta-training run as device tensors, a chunk of meta-iterations at a time.

The scaling statistics of a fresh run, then the inner minibatches of every
meta-iteration: drawn on the host from any task sampler (every rank draws all
the tasks of a draw and keeps its share), or, for a sampler that draws on the
device (``draw_on``), built there from the tasks' global ids.
"""

import numpy as np
import torch

from .._engine import (
    Scaling,
    assemble_chunk,
    chunk_iterations,
    keyed_chunk,
    task_minibatches,
)
from .._engine.keyed_random import KeyedRandom
from ..tasks._base import ITERATIONS_PER_DRAW, draws_on_device
from .prefetch import prefetch

# Tasks over which the scaling statistics are gathered (all of a finite list).
N_STATS_TASKS = 256


def statistics(hooks, source, family):
    """The scaling of a fresh run, from tasks of their own stream (not ``n_meta_iter``)."""
    inputs, targets = hooks.scaling_modes(family.input_shape)
    # Without scaling, one task tells the shapes.
    tasks = source.statistics_tasks(N_STATS_TASKS if inputs or targets else 1)
    X = np.concatenate([X for X, _ in tasks])
    Y = np.concatenate([y for _, y in tasks])
    inputs, targets = hooks.scaling_modes(family.input_shape)  # the image shape is known now
    return Scaling.fit(X, Y, inputs=inputs, targets=targets)


def chunks(settings, source, scaling, device, start, n_meta_iter, signature, slots=None):
    """Device tensors of inner minibatches, a chunk of meta-iterations at a time.

    ``slots = (lo, hi)``: only those tasks of every meta-batch (a rank's share
    in a data-parallel run).  On the host path every rank draws all the tasks of a
    draw, so that task ``j`` of an iteration is the same whatever the number of
    ranks, and moves only its own tasks to the device; a sampler that draws on the
    device draws each task from its global id, so a rank draws only its own.
    """
    T, S, B = settings.meta_batch_size, settings.inner_steps, settings.inner_batch_size
    per_chunk = chunk_iterations(T, S, B, *signature)
    if draws_on_device(source.sampler, device):
        yield from _device_chunks(
            settings, source, scaling, device, start, n_meta_iter, per_chunk, slots
        )
        return
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    iteration = start
    while iteration < n_meta_iter:
        draw = iteration // ITERATIONS_PER_DRAW
        draw_end = min(n_meta_iter, (draw + 1) * ITERATIONS_PER_DRAW)
        n_used = (draw_end - draw * ITERATIONS_PER_DRAW) * T
        tasks, rng = source.draw_for(draw, T, draw_end - draw * ITERATIONS_PER_DRAW)
        # A batched sampler draws all the draw's tasks; only the tasks this run uses
        # are cut into minibatches (the generator fills its draws in order, so
        # their minibatches are those of the whole draw's).
        tasks = tuple(a[:n_used] for a in tasks) if isinstance(tasks, tuple) else tasks[:n_used]
        minibatches = task_minibatches(rng, tasks, S, B)
        while iteration < draw_end:
            n = min(per_chunk, draw_end - iteration)
            first = (iteration - draw * ITERATIONS_PER_DRAW) * T
            part = (
                tuple(a[first : first + n * T] for a in minibatches)
                if isinstance(minibatches, tuple)
                else minibatches[first : first + n * T]
            )
            x, y, weight = assemble_chunk(part, T)
            if slots is not None:
                mine = lambda a: np.ascontiguousarray(a[:, :, slots[0] : slots[1]])  # noqa: E731
                x, y = mine(x), mine(y)
                weight = weight if isinstance(weight, float) else mine(weight)
            iteration += n
            yield (
                as_tensor(scaling.x(x)),
                as_tensor(scaling.y(y)),
                weight if isinstance(weight, float) else as_tensor(weight),
            )


def _device_chunks(settings, source, scaling, device, start, n_meta_iter, per_chunk, slots):
    """The chunks of a sampler that draws on the device: nothing on the host grows with the
    meta-batch, and a rank draws only the tasks of its ``slots``."""
    T = settings.meta_batch_size
    slots = (0, T) if slots is None else slots
    random, sampler = KeyedRandom(source.seed), source.sampler
    # The scaling's affine maps in float32 on the device.
    x_mean, x_scale, y_mean, y_scale = (
        torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)
        for a in scaling.as_tuple()
    )
    draw = lambda ids: sampler.draw_tasks(random, ids, device)  # noqa: E731
    iteration = start
    while iteration < n_meta_iter:
        n = min(per_chunk, n_meta_iter - iteration)
        x, y, weight = keyed_chunk(
            draw, random, device, iteration, n, T, slots,
            settings.inner_steps, settings.inner_batch_size,
        )  # fmt: skip
        iteration += n
        yield (x - x_mean) / x_scale, (y - y_mean) / y_scale, weight


def for_run(settings, source, scaling, device, start, n_meta_iter, signature, slots=None):
    """The :func:`chunks` of a run, drawn ahead on a thread where that pays.

    Host-drawn chunks for an accelerator: the next one is drawn on a thread
    while the device computes (on the CPU the thread would take cores from the
    computation; device-drawn chunks are queued kernels already).  The caller
    closes the iterator, which stops the thread on an early stop or an interrupt.
    """
    device = torch.device(device)
    ahead = device.type != "cpu" and not draws_on_device(source.sampler, device)
    if ahead and device.type == "cuda" and device.index is None:
        # The current CUDA device is per thread: name this thread's for the other one.
        device = torch.device("cuda", torch.cuda.current_device())
    made = chunks(settings, source, scaling, device, start, n_meta_iter, signature, slots)
    return prefetch(made) if ahead else made
