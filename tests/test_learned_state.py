"""Learned state that is complete, checked, and changed only when a call succeeds."""

import ast
import pathlib

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits

from skreptile import ReptileClassifier, ReptileRegressor, SineTaskSampler
from skreptile.evaluation import evaluate_few_shot

FAST = dict(meta_batch_size=4, device="cpu", random_state=0, hidden_layer_sizes=(16,))


def _snapshot(model):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(model).items()}


def _assert_same(model, before):
    assert set(vars(model)) == set(before)
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(model, key), value)
        elif key != "_cache":
            assert getattr(model, key) == value, key


def test_a_refused_or_failed_fit_leaves_the_estimator_as_it_was():
    # On main, a refused fit had already changed n_features_in_, the scaling and
    # the network cache, so that the next predict broke.
    model = ReptileRegressor(n_meta_iter=30, **FAST).meta_fit(SineTaskSampler(random_state=0))
    x = np.linspace(-4, 4, 10)[:, None]
    model.fit(x, np.sin(x[:, 0]))
    expected = model.predict(x)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="is expecting 1 features"):
        model.fit(np.ones((5, 3)), np.ones(5))
    with pytest.raises(ValueError, match="2 outputs"):
        model.fit(x, np.ones((10, 2)))
    with pytest.raises(FloatingPointError, match="diverged"):
        model.set_params(adapt_lr=1e9).fit(x, 1e3 * np.sin(x[:, 0]))
    model.set_params(adapt_lr="auto")  # the default
    _assert_same(model, before)
    np.testing.assert_array_equal(model.predict(x), expected)
    # Never meta-fitted: a failed first fit leaves no half-learned state either.
    fresh = ReptileRegressor(**FAST)
    with pytest.raises(ValueError):
        fresh.fit(np.ones((5, 2)), np.full(5, np.nan))
    assert not hasattr(fresh, "n_features_in_") and not hasattr(fresh, "x_mean_")


def test_a_clone_refuses_images_of_another_shape():
    # On main, a clone lost input_shape_ and silently took images of any shape.
    X, y = load_digits(return_X_y=True)
    images = X.reshape(-1, 1, 8, 8)
    tasks = [(images[i : i + 30], (y[i : i + 30] % 2)) for i in range(0, 600, 30)]
    model = ReptileClassifier(n_meta_iter=5, **FAST).meta_fit(tasks)
    assert model.input_shape_ == (1, 8, 8)
    fresh = clone(model)
    assert fresh.input_shape_ == (1, 8, 8)
    with pytest.raises(ValueError, match=r"images of shape \(1, 4, 16\), but the model expects"):
        fresh.fit(images[:10].reshape(10, 1, 4, 16), y[:10] % 2)


def test_evaluate_few_shot_refuses_a_stale_initialisation():
    # On main it scored a model whose meta-shaping parameters had changed, which fit refuses.
    model = ReptileRegressor(n_meta_iter=10, **FAST).meta_fit(SineTaskSampler(random_state=0))
    X, y = SineTaskSampler().sample_batch(np.random.default_rng(1), 4)
    model.set_params(inner_lr=0.05)
    with pytest.raises(ValueError, match="meta-fitted with inner_lr=0.1"):
        evaluate_few_shot(model, list(zip(X, y)), n_support=10)


def test_evaluate_few_shot_refuses_what_it_cannot_score():
    from sklearn.linear_model import Ridge

    with pytest.raises(TypeError, match="skreptile estimator or a pipeline ending in one"):
        evaluate_few_shot(Ridge(), [(np.ones((5, 1)), np.ones(5))], n_support=2)
    model = ReptileClassifier(n_meta_iter=2, **FAST)
    with pytest.raises(ValueError, match="Baseline 'Ridge' is a regressor"):
        evaluate_few_shot(
            model, [(np.ones((6, 1)), np.arange(6) % 2)], n_support=4, baselines={"Ridge": Ridge()}
        )
    with pytest.raises(ValueError, match="metric for classifiers must be one of"):
        evaluate_few_shot(model, [(np.ones((6, 1)), np.arange(6) % 2)], n_support=4, metric="mse")


def test_scaling_does_not_depend_on_n_meta_iter():
    # On main the statistics came from min(256, n_meta_iter * meta_batch_size) tasks.
    short = ReptileRegressor(n_meta_iter=1, **FAST).meta_fit(SineTaskSampler(random_state=0))
    long = ReptileRegressor(n_meta_iter=300, **FAST).meta_fit(SineTaskSampler(random_state=0))
    for attr in ("x_mean_", "x_scale_", "y_mean_", "y_scale_"):
        np.testing.assert_array_equal(getattr(short, attr), getattr(long, attr))


def test_overflowing_scales_are_a_clear_error():
    # On main, targets of 1e155 overflowed the scale to inf without an error.
    rng = np.random.default_rng(0)
    tasks = [(rng.normal(size=(10, 1)), 1e155 * rng.normal(size=10)) for _ in range(5)]
    with pytest.raises(ValueError, match="y overflows.*Rescale y"):
        ReptileRegressor(n_meta_iter=2, **FAST).meta_fit(tasks)


def _import_graph(package):
    """Module -> modules of the package it imports, lazily imported ones included."""
    graph = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_init else parts)
        here = parts[:-1]  # the package the module is in
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[: len(here) - node.level + 1]
                if node.module:
                    targets.add(".".join(base + node.module.split(".")))
                else:
                    targets.update(".".join(base + [a.name]) for a in node.names)
        graph[name] = targets
    return graph


def test_the_package_has_no_import_circle():
    # On main: _base -> _monitor -> evaluation -> _base (the middle one lazily).
    graph = _import_graph(pathlib.Path(__file__).resolve().parents[1] / "skreptile")
    edges = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node) :] + [node]))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(edges[node]):
            if nxt != "skreptile":  # modules never import the top-level package
                visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(edges):
        visit(module)
