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
