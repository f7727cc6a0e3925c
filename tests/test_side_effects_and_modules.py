"""No global side effects, thread-safe predictions, and what custom modules may hold.

* After any call, torch's thread count, the denormal mode and the global random
  generators of torch and numpy are as the caller left them, and skreptile
  never changed the process-wide ones on the way.
* Predictions from 8 threads equal serial ones, for every kind of network.
* Batch normalisation and dropout work in both estimators; a module without
  parameters, or with outputs of the wrong shape, is a clear error at meta_fit.
"""

import functools
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from skreptile import (
    ClassTaskSampler,
    ReptileClassifier,
    ReptileRegressor,
    SineTaskSampler,
    cpu_threads,
)
from skreptile._engine.device import _flush_denormal_enabled
from skreptile.evaluation import evaluate_few_shot
from skreptile.nn import ConvNet

FAST = {"device": "cpu", "random_state": 0, "adapt_steps": 5}


# Modules at the top level, so that models holding them pickle.
class TinyNet(nn.Sequential):
    """A custom perceptron for the regressor."""

    def __init__(self, n_features, n_outputs, width=16):
        super().__init__(
            nn.Linear(n_features, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, n_outputs),
        )


class BatchNormNet(nn.Sequential):
    def __init__(self, n_features, n_outputs):
        super().__init__(
            nn.Linear(n_features, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, n_outputs)
        )


class DropoutNet(nn.Sequential):
    def __init__(self, n_features, n_outputs, p=0.3):
        super().__init__(
            nn.Linear(n_features, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, n_outputs)
        )


MODES = []  # (training) of every forward of ModeSpy, filled while tracing


class ModeSpy(nn.Module):
    """A perceptron that records whether each forward ran in training mode."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, 8), nn.Tanh(), nn.Linear(8, n_outputs))

    def forward(self, x):
        MODES.append(self.training)
        return self.net(x)


class NoParameters(nn.Module):
    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.n_outputs = n_outputs

    def forward(self, x):
        return x[..., : self.n_outputs]


class OneTooMany(nn.Linear):
    def __init__(self, n_features, n_outputs):
        super().__init__(n_features, n_outputs + 1)


class FlatOutput(nn.Module):
    """Outputs ``(batch,)`` instead of ``(batch, 1)``."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.linear(x)[..., 0]


class WrongInputs(nn.Linear):
    def __init__(self, n_features, n_outputs):
        super().__init__(n_features + 3, n_outputs)


# ------------------------------------------------------------------ the models
@functools.cache
def _digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _sine_case(module):
    params = {} if module is None else {"module": module}
    model = ReptileRegressor(n_meta_iter=20, **FAST, **params)
    X = np.linspace(-5, 5, 10)[:, None]
    return model, SineTaskSampler(random_state=0), X, np.sin(X[:, 0] + 0.5), X[::2] + 0.25


def _digit_case(module, images):
    X, y = _digits()
    if images:
        X = X.reshape(-1, 1, 8, 8)
    meta, new = y < 5, y >= 5
    params = {} if module is None else {"module": module}
    model = ReptileClassifier(n_meta_iter=10, **FAST, **params)
    sampler = ClassTaskSampler(X[meta], y[meta], n_way=5, k_shot=2, random_state=0)
    support = np.concatenate([np.flatnonzero(new & (y == c))[:4] for c in range(5, 10)])
    query = np.flatnonzero(new)[100:112]
    return model, sampler, X[support], y[support], X[query]


CASES = {
    "regressor-mlp": lambda: _sine_case(None),
    "regressor-module": lambda: _sine_case(TinyNet),
    "classifier-mlp": lambda: _digit_case(None, images=False),
    "classifier-convnet": lambda: _digit_case(
        functools.partial(ConvNet, n_filters=4, n_layers=2), images=True
    ),
}


def _calls(model, sampler, X, y, Xp):
    """Every public entry point: (name, thunk) in a meaningful order."""
    calls = [
        ("meta_fit", lambda: model.meta_fit(sampler)),
        ("fit", lambda: model.fit(X, y)),
        ("predict", lambda: model.predict(Xp)),
        ("score", lambda: model.score(X, y)),
    ]
    if isinstance(model, ReptileClassifier):
        calls.append(("predict_proba", lambda: model.predict_proba(Xp)))
    else:
        tasks = [(X, y, Xp, np.sin(Xp[:, 0] + 0.5))]
        calls.append(("evaluate_few_shot", lambda: evaluate_few_shot(model, tasks, adapt_steps=2)))
    return calls


def _global_state():
    return {
        "threads": torch.get_num_threads(),
        "flush_denormal": _flush_denormal_enabled(),
        "torch_rng": torch.get_rng_state(),
        # The legacy global state is the point here: the caller's generator.
        "numpy_rng": np.random.get_state(),  # noqa: NPY002
    }


def _assert_same_state(before, after, when):
    assert after["threads"] == before["threads"], when
    assert after["flush_denormal"] == before["flush_denormal"], when
    assert torch.equal(after["torch_rng"], before["torch_rng"]), when
    numpy_before, numpy_after = before["numpy_rng"], after["numpy_rng"]
    assert numpy_after[0] == numpy_before[0], when
    np.testing.assert_array_equal(numpy_after[1], numpy_before[1], err_msg=when)
    assert numpy_after[2:] == numpy_before[2:], when


# ---------------------------------------------------------- global side effects
@pytest.mark.parametrize("case", CASES)
def test_calls_leave_torch_and_numpy_global_state_as_found(case, monkeypatch):
    # Process-wide settings must not even change during a call: another thread
    # of the program would see them.  torch.set_num_threads is spied on.
    switched = []
    set_num_threads = torch.set_num_threads
    set_num_threads(2)  # distinct from the suite's 1 thread

    def spy(n):
        switched.append(n)
        set_num_threads(n)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    model, sampler, X, y, Xp = CASES[case]()
    model.set_params(n_meta_iter=4, n_threads=None)  # "auto" is tested below
    torch.manual_seed(1234)
    np.random.seed(4321)  # noqa: NPY002
    calls = _calls(model, sampler, X, y, Xp)
    try:
        # Denormals kept by the caller, then flushed by the caller.
        for flush, (name, call) in [(False, c) for c in calls] + [(True, c) for c in calls[1:3]]:
            torch.set_flush_denormal(flush)
            before = _global_state()
            call()
            when = f"{case}: {name}, denormals {'flushed' if flush else 'kept'}"
            _assert_same_state(before, _global_state(), when)
            assert not switched, f"{when}: torch.set_num_threads{tuple(switched)} was called"
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("case", ["regressor-module", "classifier-convnet"])
def test_building_a_module_does_not_reseed_cuda_generators(case, monkeypatch):
    # torch.manual_seed seeds every CUDA device's generator, for good, even
    # inside fork_rng(devices=[]); skreptile must seed the CPU's alone.
    reseeded = []
    for name in ("manual_seed", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, lambda seed, name=name: reseeded.append(name))
    model, sampler, X, y, Xp = CASES[case]()
    model.set_params(n_meta_iter=2).meta_fit(sampler)
    model.fit(X, y)
    assert reseeded == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_cuda_generators_are_left_alone(case):
    before = torch.cuda.get_rng_state_all()
    for _, call in _calls(*CASES[case]()):
        call()
    after = torch.cuda.get_rng_state_all()
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_denormal_flushing_does_not_leak_into_torch_worker_threads():
    # A thread inherits the floating-point mode of the thread that creates it;
    # torch's OpenMP workers are created by the first parallel operation.  In a
    # fresh process, let that operation be inside skreptile (products of 600
    # points by 128 units; the initialisation is too small to be parallel),
    # then check that the workers do not flush denormals afterwards.
    script = textwrap.dedent(
        """
        import numpy as np, torch
        torch.set_num_threads(2)
        from skreptile import ReptileRegressor

        X = np.linspace(-1, 1, 600)[:, None]
        ReptileRegressor(hidden_layer_sizes=(128, 128), adapt_steps=1, adapt_lr=1e-3,
                         device="cpu", random_state=0).fit(X, X[:, 0])
        tiny = torch.full((1 << 22,), 1e-30)
        print(float(((tiny * 1e-10) == 0).float().mean()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert float(out.stdout.split()[-1]) == 0.0, "denormals flushed after the call"


# ------------------------------------------------------------------- cpu_threads
def test_cpu_threads_pins_and_restores_the_thread_count():
    torch.set_num_threads(2)
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), cpu_threads(1):
        raise KeyError("restored on errors too")
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="at least 1"), cpu_threads(0):
        pass
    with pytest.raises(TypeError, match="integer"), cpu_threads(1.5):
        pass
    assert torch.get_num_threads() == 2


# ----------------------------------------------------------------- thread safety
N_CALLS = 400


def _fitted(case):
    model, sampler, X, y, Xp = CASES[case]()
    return model.meta_fit(sampler).fit(X, y), Xp


def _threaded(method, Xp):
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: method(Xp), range(N_CALLS)))


@pytest.mark.parametrize("case", [*CASES, "regressor-dropout-batchnorm"])
def test_predictions_from_8_threads_equal_serial_ones(case):
    if case == "regressor-dropout-batchnorm":
        model, Xp = _fitted("regressor-mlp")
        model = model.set_params(module=DropoutBatchNormNet).meta_fit(
            SineTaskSampler(random_state=0)
        )
        X = np.linspace(-5, 5, 10)[:, None]
        model.fit(X, np.sin(X[:, 0]))
    else:
        model, Xp = _fitted(case)
    methods = ["predict"] + (["predict_proba"] if hasattr(model, "predict_proba") else [])
    # The same model, and a freshly unpickled one whose network every thread
    # wants to rebuild at once.
    for which, est in (("model", model), ("unpickled", pickle.loads(pickle.dumps(model)))):
        for name in methods:
            expected = getattr(model, name)(Xp)
            for got in _threaded(getattr(est, name), Xp):
                np.testing.assert_array_equal(got, expected, err_msg=f"{case} {which} {name}")


class DropoutBatchNormNet(nn.Sequential):
    def __init__(self, n_features, n_outputs):
        super().__init__(
            nn.Linear(n_features, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(32, n_outputs),
        )


# ------------------------------------------------- batch norm and dropout modules
def test_batch_norm_works_in_the_regressor():
    model, sampler, X, y, Xp = _sine_case(BatchNormNet)
    model.meta_fit(sampler).fit(X, y)
    assert np.isfinite(model.predict(Xp)).all()
    results = evaluate_few_shot(model, [(X, y, Xp, np.sin(Xp[:, 0] + 0.5))], adapt_steps=(0, 2))
    assert np.isfinite(results.errors(results.model_name, 2)).all()


@pytest.mark.parametrize("estimator", ["regressor", "classifier"])
def test_dropout_works_reproducibly_in_both_estimators(estimator):
    def run(p=0.3):
        if estimator == "regressor":
            model, sampler, X, y, Xp = _sine_case(functools.partial(DropoutNet, p=p))
        else:
            model, sampler, X, y, Xp = _digit_case(functools.partial(DropoutNet, p=p), False)
        return model.meta_fit(sampler).fit(X, y), X, y, Xp

    model, X, y, Xp = run()
    prediction = model.predict(Xp)
    # Evaluation mode at prediction: no masks, the same answer every time.
    np.testing.assert_array_equal(model.predict(Xp), prediction)
    # The same random_state gives the same weights; refitting gives the same too.
    again, *_ = run()
    np.testing.assert_array_equal(again.meta_params_, model.meta_params_)
    np.testing.assert_array_equal(again.params_, model.params_)
    params = model.params_.copy()
    np.testing.assert_array_equal(model.fit(X, y).params_, params)
    # Dropout was active in the gradient steps: without it, other weights.
    without, *_ = run(p=0.0)
    assert not np.allclose(without.meta_params_, model.meta_params_)
    assert model.torch_module().training is False


def test_gradient_steps_run_in_training_mode_and_outputs_in_evaluation_mode():
    model, sampler, X, y, Xp = _sine_case(ModeSpy)
    MODES.clear()
    model.meta_fit(sampler)
    assert True in MODES
    MODES.clear()
    model.fit(X, y)  # adaptation steps, and the losses before and after
    assert set(MODES) == {True, False}
    MODES.clear()
    model.predict(Xp)
    assert MODES and not any(MODES)


# ------------------------------------------------------------ invalid modules
def _meta_fit(estimator, module):
    if estimator == "regressor":
        model, sampler, *_ = _sine_case(module)
    else:
        model, sampler, *_ = _digit_case(module, images=False)
    return model.set_params(n_meta_iter=2).meta_fit(sampler)


@pytest.mark.parametrize("estimator", ["regressor", "classifier"])
def test_a_module_without_parameters_is_refused_at_meta_fit(estimator):
    with pytest.raises(ValueError, match="NoParameters without parameters.*needs at least one"):
        _meta_fit(estimator, NoParameters)


@pytest.mark.parametrize("estimator", ["regressor", "classifier"])
@pytest.mark.parametrize("module", [OneTooMany, FlatOutput])
def test_a_module_with_outputs_of_the_wrong_shape_is_refused_at_meta_fit(estimator, module):
    n_outputs = 1 if estimator == "regressor" else 5
    with pytest.raises(ValueError, match=rf"module\(n_features=.*expected \(2, {n_outputs}\)"):
        _meta_fit(estimator, module)


def test_a_module_that_fails_on_the_inputs_is_a_clear_error():
    with pytest.raises(ValueError, match=r"failed on a batch of inputs of shape \(2, 1\)"):
        _meta_fit("regressor", WrongInputs)


@pytest.mark.parametrize("case", CASES)
def test_n_threads_auto_changes_only_the_calling_threads_count_during_a_call(case):
    # A documented parameter, not a silent switch: the calling thread runs the
    # small products on one thread and gets its count back; other threads,
    # including the caller's main thread, never see the change.
    import threading

    model, sampler, X, y, Xp = CASES[case]()
    model.set_params(n_meta_iter=4)
    torch.set_num_threads(2)
    seen, errors = [], []

    def spy_predict():
        try:
            before = torch.get_num_threads()
            model.meta_fit(sampler)
            model.fit(X, y).predict(Xp)
            seen.append((before, torch.get_num_threads()))
        except Exception as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=spy_predict)
    worker.start()
    while worker.is_alive():
        assert torch.get_num_threads() == 2  # the main thread keeps its count
        worker.join(0.001)
    assert not errors, errors
    assert seen[0][0] == seen[0][1]
    assert torch.get_num_threads() == 2
