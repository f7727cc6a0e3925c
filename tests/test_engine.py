"""The engine's structure (issue 20): its boundary, one backend choice, one activation table."""

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import skreptile._engine as engine
import skreptile._engine.threads as threads
from skreptile._engine import (
    ACTIVATIONS,
    LOSSES,
    Backend,
    BatchedMLP,
    BatchedModule,
    InnerOptimizer,
    LeanMLP,
    NumpyMLP,
    NumpyTasks,
    choose_backend,
)

ENGINE = pathlib.Path(engine.__file__).parent


def test_engine_imports_no_scikit_learn_and_no_estimator_code():
    forbidden = ("sklearn", "skreptile._estimators", "skreptile._training", "skreptile.evaluation")
    relative = ("_estimators", "_training", "evaluation")
    for path in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level > 1 and any((node.module or "").startswith(r) for r in relative):
                    pytest.fail(f"{path.name} imports ..{node.module}")
                if node.level > 1 and node.module is None:
                    names = [alias.name for alias in node.names]
                    assert not set(names) & set(relative), f"{path.name} imports {names}"
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_engine_loads_without_scikit_learn():
    code = (
        "import sys, importlib.util, types\n"
        "pkg = types.ModuleType('skreptile'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['skreptile'] = pkg\n"
        "import skreptile._engine\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'sklearn'], 'sklearn loaded'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(ENGINE.parent)], check=True, capture_output=True
    )


def test_no_engine_module_over_400_lines():
    for path in ENGINE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_engine_exports_what_it_lists():
    for name in engine.__all__:
        assert hasattr(engine, name), name


def test_backends_implement_the_interface():
    for cls in (BatchedMLP, BatchedModule, NumpyMLP, NumpyTasks):
        assert issubclass(cls, Backend)
        assert not getattr(cls, "__abstractmethods__", None), cls


def test_one_activation_table_for_every_backend():
    z = np.linspace(-3, 3, 13, dtype=np.float32).reshape(1, 13)
    for act in ACTIVATIONS.values():
        out = np.empty_like(z)
        act.numpy_forward(z.copy(), out)
        torch_out = act.torch_forward_(torch.from_numpy(z.copy()))
        np.testing.assert_allclose(out, torch_out.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out, act.layer()(torch.from_numpy(z)).numpy(), rtol=1e-6)
        grad = torch.ones_like(torch_out)
        back = act.torch_backward_(grad, torch_out).numpy()
        derivative = np.ones_like(z)
        if act.numpy_derivative is not None:
            act.numpy_derivative(out, derivative)
        np.testing.assert_allclose(back, derivative, rtol=1e-5, atol=1e-6)


def test_choose_backend():
    mlp = BatchedMLP((1, 64, 64, 1), "tanh")
    cpu = torch.device("cpu")
    assert isinstance(choose_backend(mlp, "fit", cpu, n_points=10), NumpyMLP)
    assert choose_backend(mlp, "fit", cpu, optimizer="adam", n_points=10) is mlp
    assert choose_backend(mlp, "fit", cpu, n_points=10, numpy_allowed=False) is mlp
    assert isinstance(choose_backend(mlp, "predict", cpu, optimizer="adam"), NumpyMLP)
    assert choose_backend(mlp, "predict", cpu, n_points=10**6) is mlp  # too large for one thread
    assert isinstance(choose_backend(mlp, "meta_train", cpu, n_points=10), NumpyTasks)
    assert choose_backend(mlp, "meta_train", cpu, n_points=10, equal_sizes=False) is mlp
    assert choose_backend(mlp, "meta_train", cpu, n_points=10, data_parallel=True) is mlp
    assert choose_backend(mlp, "meta_train", cpu, n_points=10**4) is mlp  # wide products
    assert choose_backend(mlp, "meta_train", cpu, n_points=10, dtype=torch.float64) is mlp
    module = BatchedModule(torch.nn.Linear(1, 1))
    assert choose_backend(module, "fit", cpu, n_points=10) is module
    with pytest.raises(ValueError, match="job"):
        choose_backend(mlp, "train", cpu)


def test_lean_mlp_refuses_weights_sgemm_would_copy():
    lean = LeanMLP((1, 4, 1), "tanh", 3)
    x, y = np.zeros((3, 1), np.float32), np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="C-ordered float32"):
        lean.stepper(np.zeros(13, np.float64), x, y, -0.1, "squared_error")
    step, loss = lean.stepper(np.zeros(13, np.float32), x, y, -0.1, "squared_error")
    assert loss() == 0.0


def test_numpy_backend_adapts_as_the_torch_one():
    net = BatchedMLP((1, 8, 1), "tanh")
    theta = net.init_params(torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, 1)).astype(np.float32)
    y = np.sin(x).astype(np.float32)
    params, before, after = engine.adapt_one(
        NumpyMLP(net), LOSSES["squared_error"], theta.numpy(), x, y, 4, 0.1
    )
    ws = net.workspace(1, theta)
    net.broadcast(theta, ws)
    opt = InnerOptimizer("sgd", 0.1, net, ws)
    engine.adapt(
        net,
        LOSSES["squared_error"],
        ws,
        torch.from_numpy(x)[None],
        torch.from_numpy(y)[None],
        0.2,
        4,
        opt,
    )
    np.testing.assert_allclose(params, ws.params.numpy(), rtol=1e-5, atol=1e-6)
    assert after < before


def test_one_blas_thread_is_counted_and_restored():
    def blas_threads():
        controller = threads.ThreadpoolController()
        return [i["num_threads"] for i in controller.info() if i["user_api"] == "blas"]

    previous = blas_threads()
    with threads.one_blas_thread():
        with threads.one_blas_thread():
            assert all(n == 1 for n in blas_threads())
        assert all(n == 1 for n in blas_threads())  # the outer user still holds the limit
    assert blas_threads() == previous


def test_meta_training_on_numpy_holds_blas_to_one_thread(monkeypatch):
    from skreptile import ReptileRegressor, SineTaskSampler

    seen = []
    real = NumpyTasks.stepper

    def spy(self, *args, **kwargs):
        controller = threads.ThreadpoolController()
        seen.append({i["num_threads"] for i in controller.info() if i["user_api"] == "blas"})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(NumpyTasks, "stepper", spy)
    ReptileRegressor(
        n_meta_iter=3, validation_fraction=None, device="cpu", random_state=0
    ).meta_fit(SineTaskSampler(random_state=0))
    assert seen and all(s <= {1} for s in seen)
