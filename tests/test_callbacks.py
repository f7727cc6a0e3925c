"""The public ``callbacks`` parameter: users' code at every monitor interval of ``meta_fit``."""

import math
import pickle

import numpy as np
import pytest
from sklearn.base import clone

from skreptile import ReptileClassifier, ReptileRegressor, SineTaskSampler
from skreptile.callbacks import Callback

FAST = dict(
    hidden_layer_sizes=(16,), n_meta_iter=60, monitor_interval=20, device="cpu", random_state=0
)


class Recorder(Callback):
    """Keeps what it is told (module level, so that it pickles)."""

    def __init__(self):
        self.begin, self.records, self.end = None, [], None

    def on_meta_fit_begin(self, info):
        self.begin = info

    def on_monitor(self, record):
        self.records.append(record)

    def on_meta_fit_end(self, history):
        self.end = history


def _rows(history):
    keys = list(history)
    return [dict(zip(keys, values)) for values in zip(*history.values())]


def _same(a, b):
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def test_a_callback_sees_every_history_entry_as_it_is_recorded():
    recorder = Recorder()
    model = ReptileRegressor(callbacks=[recorder], **FAST).meta_fit(SineTaskSampler(random_state=0))
    assert recorder.begin == {"n_meta_iter": 60, "start_iter": 0}
    assert [r["meta_iter"] for r in recorder.records] == [20, 40, 60]
    assert all(_same(a, b) for a, b in zip(recorder.records, _rows(model.history_)))
    assert recorder.end == model.history_


def test_validation_losses_reach_the_callbacks():
    tasks = SineTaskSampler(random_state=1).sample_batch(np.random.default_rng(1), 30)
    seen = []
    model = ReptileRegressor(callbacks=[seen.append], validation_fraction=0.2, **FAST)
    model.meta_fit(list(zip(*tasks)))
    assert [r["validation_loss"] for r in seen] == model.history_["validation_loss"]
    assert all(np.isfinite(r["validation_loss"]) for r in seen)


def test_callbacks_do_not_change_what_is_learned():
    plain = ReptileRegressor(**FAST).meta_fit(SineTaskSampler(random_state=0))
    watched = ReptileRegressor(callbacks=[Recorder(), lambda record: None], **FAST)
    watched.meta_fit(SineTaskSampler(random_state=0))
    assert np.array_equal(plain.meta_params_, watched.meta_params_)


def test_callbacks_are_cloned_and_pickled_like_any_parameter():
    recorder = Recorder()
    model = ReptileClassifier(callbacks=[recorder])
    copy = clone(model)
    assert isinstance(copy.callbacks[0], Recorder) and copy.callbacks[0] is not recorder
    loaded = pickle.loads(pickle.dumps(model))
    assert isinstance(loaded.callbacks[0], Recorder)


def test_an_object_that_cannot_be_called_is_refused_before_training():
    model = ReptileRegressor(callbacks=[42], **FAST)
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a int.*skreptile.callbacks.Callback"):
        model.meta_fit(SineTaskSampler(random_state=0))
    assert not hasattr(model, "meta_params_")


def test_a_run_resumes_from_its_checkpoint_whatever_the_callbacks(tmp_path):
    path = str(tmp_path / "run.ckpt")
    first = Recorder()

    class Interrupt(Callback):
        def on_monitor(self, record):
            if record["meta_iter"] == 40:
                raise KeyboardInterrupt

    params = dict(FAST, checkpoint_path=path, checkpoint_interval=20)
    model = ReptileRegressor(callbacks=[first, Interrupt()], **params)
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="checkpoint"):
        model.meta_fit(SineTaskSampler(random_state=0))
    second = Recorder()
    model.set_params(callbacks=[second]).meta_fit(SineTaskSampler(random_state=0))
    assert second.begin["start_iter"] == 40  # the last completed meta-iteration
    assert [r["meta_iter"] for r in second.records] == [60]
    whole = ReptileRegressor(**FAST).meta_fit(SineTaskSampler(random_state=0))
    assert np.array_equal(model.meta_params_, whole.meta_params_)
    assert model.history_ == whole.history_
