import os

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist workers share the cores: one torch thread each.  Oversubscribed
    # threads on tiny networks run many times slower (measured: the suite took
    # 7.7 minutes with -n 2 on two busy cores).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # Some code paths tune torch's thread count; keep tests independent of order.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def sine_support_and_query(n_tasks, seed, n_support=10):
    """New sine tasks: 10 support points and the 50-point grid as query."""
    from skreptile import SineTaskSampler

    rng = np.random.default_rng(seed)
    X, y = SineTaskSampler().sample_batch(rng, n_tasks)
    idx = np.argsort(rng.random((n_tasks, X.shape[1])), axis=1)[:, :n_support]
    rows = np.arange(n_tasks)[:, None]
    return X[rows, idx], y[rows, idx], X, y
