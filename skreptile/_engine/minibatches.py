"""Inner-loop minibatches of meta-training, built on the host in numpy.

The meta-training loop consumes arrays of shape
``(n_iters, inner_steps, meta_batch_size, batch, n_features)``: every minibatch
of a chunk of meta-iterations, so that the device receives one copy per chunk
rather than one per step.  The tasks of meta-iteration ``t`` and the order of
their points come from the generator :meth:`TaskSource.iteration` keys by
``t``, so a chunk holds the same minibatches however the run is cut into
chunks, calls (``warm_start``) or resumptions.  Tasks with fewer points than
the batch size use all their points at every step; when tasks then differ in
size, batches are zero-padded and a per-point weight masks the padding.
"""

import math

import numpy as np

# Upper bound on the floats of one chunk of minibatches moved to the device.
CHUNK_FLOATS = 1 << 21
MAX_CHUNK_ITERS = 256


def minibatch_indices(rng, n_tasks, n_points, n_steps, batch_size):
    """Point indices ``(n_tasks, n_steps, batch)`` drawn in shuffled passes.

    As in the original Reptile demo, each pass over a task is a random
    permutation cut into consecutive minibatches.
    """
    epochs = math.ceil(n_steps * batch_size / n_points)
    keys = rng.random((n_tasks, epochs, n_points))
    order = keys.argsort(axis=-1).reshape(n_tasks, epochs * n_points)
    return order[:, : n_steps * batch_size].reshape(n_tasks, n_steps, batch_size)


def _effective_batch(batch_size, n_points):
    return n_points if batch_size is None else min(batch_size, n_points)


def task_minibatches(rng, tasks, n_steps, batch_size):
    """Minibatches of every task: stacked ``(x, y)`` of shape ``(n_tasks, n_steps, batch, .)``
    for tasks of equal sizes, else a list of ``(x (n_steps, batch, .), y)`` per task.
    """
    if isinstance(tasks, tuple):
        X, y = tasks
        n_tasks, n_points = X.shape[:2]
        idx = minibatch_indices(
            rng, n_tasks, n_points, n_steps, _effective_batch(batch_size, n_points)
        )
        rows = np.arange(n_tasks)[:, None, None]
        return X[rows, idx], y[rows, idx]
    out = []
    for X, y in tasks:
        idx = minibatch_indices(rng, 1, len(X), n_steps, _effective_batch(batch_size, len(X)))[0]
        out.append((X[idx], y[idx]))
    return out


def chunk_iterations(meta_batch_size, n_steps, batch_size, n_features, n_outputs):
    """Meta-iterations per chunk, bounded by ``CHUNK_FLOATS``."""
    per_iter = meta_batch_size * n_steps * (batch_size or 64) * (n_features + n_outputs)
    return max(1, min(MAX_CHUNK_ITERS, CHUNK_FLOATS // per_iter))


def assemble_chunk(minibatches, meta_batch_size):
    """Lay the minibatches of several meta-iterations out for the loop.

    Parameters
    ----------
    minibatches : tuple of ndarray or list of (x, y)
        The tasks of the chunk's meta-iterations in order, as
        :func:`task_minibatches` gives them.

    Returns
    -------
    x, y : ndarray of shape (n_iters, n_steps, meta_batch_size, batch, n_features/n_outputs)
    weight : float or ndarray of shape (n_iters, n_steps, meta_batch_size, batch, 1)
        Weight of every point in its task's loss.
    """
    if isinstance(minibatches, tuple):
        xb, yb = minibatches
        n_iters = len(xb) // meta_batch_size
        return (
            _to_layout(xb, n_iters, meta_batch_size),
            _to_layout(yb, n_iters, meta_batch_size),
            1.0 / float(xb.shape[2]),
        )
    flat = minibatches
    n_iters = len(flat) // meta_batch_size
    widths = np.array([x.shape[1] for x, _ in flat])
    if (widths == widths[0]).all():
        xb = np.stack([x for x, _ in flat])
        yb = np.stack([y for _, y in flat])
        weight = 1.0 / float(widths[0])
    else:
        n_steps, widest = flat[0][0].shape[0], int(widths.max())
        xb = np.zeros((len(flat), n_steps, widest, flat[0][0].shape[2]))
        yb = np.zeros((len(flat), n_steps, widest, flat[0][1].shape[2]))
        weight = np.zeros((len(flat), n_steps, widest, 1))
        for t, ((x, y), width) in enumerate(zip(flat, widths)):
            xb[t, :, :width], yb[t, :, :width] = x, y
            weight[t, :, :width] = 1.0 / width
        weight = _to_layout(weight, n_iters, meta_batch_size)
    return (
        _to_layout(xb, n_iters, meta_batch_size),
        _to_layout(yb, n_iters, meta_batch_size),
        weight,
    )


def _to_layout(arr, n_iters, meta_batch_size):
    """(tasks, steps, batch, f) -> (iters, steps, meta_batch, batch, f), contiguous."""
    shaped = arr.reshape(n_iters, meta_batch_size, *arr.shape[1:])
    return np.ascontiguousarray(shaped.transpose(0, 2, 1, 3, 4))


# Stream of the keyed generator that orders the points of device-drawn tasks
# (the samplers' own streams are small integers).
ORDER_STREAM = 0x4F524452


def keyed_chunk(
    draw, random, device, first_iter, n_iters, meta_batch_size, slots, n_steps, batch_size
):
    """A chunk drawn on the device: ``x, y`` of the loop's layout, and the point weight.

    Parameters
    ----------
    draw : callable
        ``draw(task_ids) -> (X, y)``, float32 tensors ``(n, n_points, f)`` on the device
        of ``task_ids``.
    random : KeyedRandom
        Orders the points of every task (shuffled passes, as :func:`minibatch_indices`).
    device : torch.device
        Where the chunk is drawn.
    first_iter, n_iters : int
        The chunk's meta-iterations.
    meta_batch_size : int
    slots : (int, int)
        The tasks ``[lo, hi)`` of every meta-batch to draw (a rank's share).
    n_steps, batch_size : int

    Returns
    -------
    x, y : tensor of shape (n_iters, n_steps, hi - lo, batch, n_features/n_outputs)
    weight : float
    """
    import torch

    lo, hi = slots
    iters = torch.arange(first_iter, first_iter + n_iters, dtype=torch.int64, device=device)
    slot = torch.arange(lo, hi, dtype=torch.int64, device=device)
    # Global task ids: the same task whatever the chunks, the resumption or the ranks.
    ids = (iters[:, None] * meta_batch_size + slot[None, :]).reshape(-1)
    X, y = draw(ids)
    n_points = X.shape[1]
    batch = _effective_batch(batch_size, n_points)
    epochs = math.ceil(n_steps * batch / n_points)
    order = random.permutations(ORDER_STREAM, ids, epochs, n_points).reshape(len(ids), -1)
    idx = order[:, : n_steps * batch].reshape(len(ids), n_steps * batch)
    xb = torch.gather(X, 1, idx[:, :, None].expand(-1, -1, X.shape[2]))
    yb = torch.gather(y, 1, idx[:, :, None].expand(-1, -1, y.shape[2]))
    shape = (n_iters, hi - lo, n_steps, batch)
    xb = xb.reshape(*shape, X.shape[2]).transpose(1, 2).contiguous()
    yb = yb.reshape(*shape, y.shape[2]).transpose(1, 2).contiguous()
    return xb, yb, 1.0 / float(batch)
