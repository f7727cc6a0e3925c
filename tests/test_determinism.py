"""Results depend on ``random_state`` alone, never on the state of torch's global generators.

On a GPU, a run's global CUDA generator is wherever earlier work left it:
anything skreptile drew from it unseeded would make two runs with the same
``random_state`` differ (issue 21: cross-validation folds on CUDA did).  The
CPU's global generator stands in for it here: a module's initialisation and
its dropout masks are drawn from global generators, so these runs would
differ if skreptile did not seed (and restore) them itself.
"""

import numpy as np
import torch
from torch import nn

from skreptile import ReptileRegressor
from skreptile.tasks import SineTaskSampler


class DropoutNet(nn.Sequential):
    def __init__(self, n_features, n_outputs):
        super().__init__(
            nn.Linear(n_features, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, n_outputs)
        )


def _run(global_seed, module):
    X = np.linspace(-5, 5, 10)[:, None]
    params = {} if module is None else {"module": module}
    model = ReptileRegressor(
        n_meta_iter=6, meta_batch_size=3, inner_steps=2, random_state=3, device="cpu", **params
    )
    # Another state of the global generators, restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed)
        torch.rand(7)
        model.meta_fit(SineTaskSampler(random_state=0)).fit(X, np.sin(X[:, 0]))
    return model


def test_the_global_generators_state_does_not_change_what_is_learned():
    for module in (None, DropoutNet):
        first, second = _run(1, module), _run(2, module)
        np.testing.assert_array_equal(first.meta_params_, second.meta_params_)
        np.testing.assert_array_equal(first.params_, second.params_)
