"""A failed or interrupted warm start leaves every learned array as it was (issue 24, item 1)."""

import numpy as np
import pytest
from conftest import assert_unchanged, interrupting_meta_lr_at, learned_snapshot

import skreptile._engine.outer as engine_module
from skreptile import ReptileRegressor, SineTaskSampler
from skreptile.tasks import TaskSampler

R = dict(device="cpu", random_state=0)


def _fitted():
    sampler = SineTaskSampler(random_state=0)
    return ReptileRegressor(
        hidden_layer_sizes=(32, 32), n_meta_iter=300, inner_lr=0.5, **R
    ).meta_fit(sampler), sampler


def test_a_diverging_warm_start_leaves_the_weights_as_they_were():
    model, sampler = _fitted()
    before = learned_snapshot(model)
    # A warm start keeps the run's halved inner_lr (issue 24, item 3); a larger
    # inner_lr set by the user is taken as it is, and diverges.
    with pytest.raises(FloatingPointError, match="diverged"):
        model.set_params(n_meta_iter=600, warm_start=True, inner_lr=0.6).meta_fit(sampler)
    assert np.isfinite(model.meta_params_).all()
    assert_unchanged(before, model)


class FailsAt(TaskSampler):
    """Sine tasks, until the ``n``-th call of ``sample_batch``."""

    def __init__(self, n, random_state=0):
        self.n, self.random_state, self.calls = n, random_state, 0

    def sample_batch(self, rng, n_tasks):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("the data store went away")
        return SineTaskSampler().sample_batch(rng, n_tasks)


def test_a_sampler_error_or_an_interrupt_in_a_warm_start_changes_nothing(monkeypatch):
    params = dict(hidden_layer_sizes=(16,), n_meta_iter=130, meta_batch_size=4, **R)
    model = ReptileRegressor(**params).meta_fit(FailsAt(10**9))
    before = learned_snapshot(model)
    model.set_params(n_meta_iter=400, warm_start=True)
    with pytest.raises(RuntimeError, match="went away"):
        model.meta_fit(FailsAt(3))  # after one draw of 64 iterations has been trained on
    assert_unchanged(before, model)
    monkeypatch.setattr(engine_module, "meta_lr_at", interrupting_meta_lr_at(200))
    with pytest.warns(RuntimeWarning, match="interrupted"), pytest.raises(KeyboardInterrupt):
        model.meta_fit(FailsAt(10**9))
    assert_unchanged(before, model)
