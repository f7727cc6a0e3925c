"""Inner-loop minibatches for many meta-iterations, built on the host in numpy.

The meta-training loop consumes arrays of shape
``(n_iters, inner_steps, meta_batch_size, batch, n_features)``: every minibatch
of a chunk of meta-iterations, so that the device receives one copy per chunk
rather than one per step.  Tasks with fewer points than the batch size use all
their points at every step; when tasks of one meta-batch then differ in size
the batches are zero-padded and a per-point weight masks the padding.
"""

import math

import numpy as np


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


def build_minibatches(rng, tasks, n_iters, meta_batch_size, n_steps, batch_size):
    """Arrange drawn tasks into per-step minibatches.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the order in which each task's points are visited.
    tasks : tuple of ndarray or list of (X, y)
        ``n_iters * meta_batch_size`` tasks, stacked or as a list.
    n_iters, meta_batch_size, n_steps : int
        Layout of the result.
    batch_size : int or None
        Points per inner step; None uses every point of a task at every step.

    Returns
    -------
    x, y : ndarray of shape (n_iters, n_steps, meta_batch_size, batch, n_features/n_outputs)
    weight : float or ndarray of shape (n_iters, n_steps, meta_batch_size, batch, 1)
        Weight of every point in its task's loss.
    """
    if isinstance(tasks, tuple):
        X, y = tasks
        n_tasks, n_points = X.shape[:2]
        batch = _effective_batch(batch_size, n_points)
        idx = minibatch_indices(rng, n_tasks, n_points, n_steps, batch)
        rows = np.arange(n_tasks)[:, None, None]
        xb, yb = X[rows, idx], y[rows, idx]
        weight = 1.0 / batch
    else:
        batches = [_effective_batch(batch_size, len(X)) for X, _ in tasks]
        widest = max(batches)
        n_tasks = len(tasks)
        n_features, n_outputs = tasks[0][0].shape[1], tasks[0][1].shape[1]
        xb = np.zeros((n_tasks, n_steps, widest, n_features))
        yb = np.zeros((n_tasks, n_steps, widest, n_outputs))
        weight = np.zeros((n_tasks, n_steps, widest, 1))
        for t, ((X, y), batch) in enumerate(zip(tasks, batches)):
            idx = minibatch_indices(rng, 1, len(X), n_steps, batch)[0]
            xb[t, :, :batch], yb[t, :, :batch] = X[idx], y[idx]
            weight[t, :, :batch] = 1.0 / batch
        if len(set(batches)) == 1:
            weight = 1.0 / widest
        else:
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
