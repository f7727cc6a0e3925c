"""Held-out sine tasks shared by the benchmarks, so that every method sees the same ones."""

import numpy as np

from skreptile import SineTaskSampler


def held_out_sine_tasks(n_tasks=1000, n_support=10, seed=20240601):
    """``(X_support, y_support, X_query, y_query)`` stacked over ``n_tasks`` new sine tasks.

    The query points are the task's 50-point grid, as in the demo.
    """
    rng = np.random.default_rng(seed)
    X, y = SineTaskSampler().sample_batch(rng, n_tasks)
    idx = np.argsort(rng.random((n_tasks, X.shape[1])), axis=1)[:, :n_support]
    rows = np.arange(n_tasks)[:, None]
    return X[rows, idx], y[rows, idx], X, y


def mean_and_ci(errors):
    errors = np.asarray(errors)
    return errors.mean(), 1.96 * errors.std(ddof=1) / np.sqrt(len(errors))
