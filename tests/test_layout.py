"""The package's layout holds: layers import downwards only, and no module reaches into an estimator.

* ``skreptile/_engine/`` imports neither scikit-learn nor the estimators, the
  training loop or the evaluation (it sees arrays and tensors only);
* no two modules import each other, directly or through others;
* the training loop and the evaluation call no private method of an
  estimator (observed while they run, not only read);
* no module is much over 400 lines.
"""

import ast
import os
import sys
import threading

import numpy as np
import pytest

import skreptile
from skreptile import GroupTaskSampler, ReptileClassifier, ReptileRegressor
from skreptile.evaluation import evaluate_few_shot, split_support_query

PACKAGE = os.path.dirname(skreptile.__file__)
MAX_LINES = 420


def _modules():
    """``{module name: path}`` of every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = path
    return out


def _imports(module, path):
    """Absolute names of everything ``module`` imports (at any depth of its code)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.append(prefix)
            names += [f"{prefix}.{a.name}" for a in node.names]
    return names


def test_the_engine_imports_no_scikit_learn_and_nothing_above_it():
    modules = _modules()
    engine = {m: p for m, p in modules.items() if m.startswith("skreptile._engine")}
    assert len(engine) >= 8
    above = ("sklearn", "skreptile._estimators", "skreptile._training", "skreptile.evaluation")
    offending = {
        m: sorted({n for n in _imports(m, p) if n.startswith(above)}) for m, p in engine.items()
    }
    assert {m: n for m, n in offending.items() if n} == {}


def test_no_module_imports_itself_through_others():
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(module, path):
            # "from .x import y" names either the module x.y or the object y of x.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    # A package's __init__ re-exports its submodules: edges into a package's own
    # children are its public face, not a dependency of the children.
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in graph[node]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_no_module_is_much_over_400_lines():
    lengths = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in _modules().items()}
    assert {m: n for m, n in lengths.items() if n > MAX_LINES} == {}


class _PrivateCalls:
    """Calls into an estimator's private methods, with the module of the calling code."""

    def __init__(self, callers):
        self.callers, self.seen = callers, []
        self.estimators = os.path.join(PACKAGE, "_estimators") + os.sep

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        name = code.co_name
        if not (code.co_filename.startswith(self.estimators) and name.startswith("_")):
            return
        if name.startswith("__") or "self" not in frame.f_locals:
            return
        caller = frame.f_back
        if caller is not None and caller.f_code.co_filename.startswith(self.callers):
            where = os.path.relpath(caller.f_code.co_filename, PACKAGE)
            self.seen.append(f"{where}:{caller.f_lineno} calls {name}")

    def __enter__(self):
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


def _grouped_table(seed=0, n_groups=24, n_rows=20):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), n_rows)
    X = rng.normal(size=(len(groups), 2))
    y = np.sin(X[:, 0] * rng.normal(size=n_groups)[groups]) + rng.normal(scale=0.1, size=len(X))
    return X, y, groups


def test_the_training_loop_calls_no_private_method_of_an_estimator(tmp_path, digits_tasks):
    X, y, groups = _grouped_table()
    tasks = [(X[groups == g], y[groups == g]) for g in range(20, 24)]
    model = ReptileRegressor(
        hidden_layer_sizes=(16,),
        n_meta_iter=60,
        monitor_interval=20,
        checkpoint_path=str(tmp_path / "run.ckpt"),
        checkpoint_interval=20,
        warm_start=True,
        random_state=0,
    )
    training = os.path.join(PACKAGE, "_training") + os.sep
    hooks = os.path.join(PACKAGE, "_estimators", "meta_fit_hooks.py")
    with _PrivateCalls((training, hooks)) as calls:
        model.meta_fit(GroupTaskSampler(X[groups < 20], y[groups < 20], groups[groups < 20]))
        model.set_params(n_meta_iter=80).meta_fit(tasks)  # a warm start
        model.set_params(warm_start=False, validation_fraction=None, early_stopping=True)
        os.remove(tmp_path / "run.ckpt")  # the completed run's, kept until removed
        model.meta_fit(tasks, validation_tasks=split_support_query(tasks, 5, random_state=0))
        classifier, sampler, class_tasks = digits_tasks
        classifier.set_params(early_stopping=True, monitor_interval=10)
        support = np.isin(np.arange(18), [0, 1, 6, 7, 12, 13])  # two of each class
        held_out = [(X[support], y[support], X[~support], y[~support]) for X, y in class_tasks]
        classifier.meta_fit(sampler, validation_tasks=held_out)
    assert model.n_meta_iter_ > 0 and "validation_loss" in model.history_
    assert "validation_loss" in classifier.history_
    # The estimator's own adapter of the hooks does call them: the watch sees such calls.
    assert any(c.startswith("_estimators") for c in calls.seen)
    assert [c for c in calls.seen if not c.startswith("_estimators")] == []


def test_the_evaluation_calls_no_private_method_of_an_estimator(digits_tasks):
    X, y, groups = _grouped_table(seed=1)
    model = ReptileRegressor(hidden_layer_sizes=(16,), n_meta_iter=40, random_state=0)
    model.meta_fit(GroupTaskSampler(X[groups < 20], y[groups < 20], groups[groups < 20]))
    held_out = [(X[groups == g], y[groups == g]) for g in range(20, 24)]
    classifier, sampler, class_tasks = digits_tasks
    evaluation = os.path.join(PACKAGE, "evaluation") + os.sep
    with _PrivateCalls(evaluation) as calls:
        results = evaluate_few_shot(model, held_out, n_support=5, adapt_steps=[0, 4])
        class_results = evaluate_few_shot(
            classifier.meta_fit(sampler), class_tasks, n_support=2, adapt_steps=[0, 4]
        )
    assert results.errors("ReptileRegressor", 4).shape == (4,)
    assert class_results.errors("ReptileClassifier", 4).shape == (len(class_tasks),)
    assert calls.seen == []


@pytest.fixture
def digits_tasks():
    from sklearn.datasets import load_digits

    from skreptile import ClassTaskSampler

    digits = load_digits()
    X, y = digits.data / 16.0, digits.target
    rng = np.random.default_rng(0)
    new = [np.flatnonzero(y == c) for c in (7, 8, 9)]
    tasks = []
    for _ in range(3):
        rows = np.concatenate([rng.choice(index, 6, replace=False) for index in new])
        tasks.append((X[rows], y[rows]))
    sampler = ClassTaskSampler(X[y < 7], y[y < 7], n_way=3, k_shot=2, random_state=0)
    return ReptileClassifier(n_meta_iter=30, random_state=0), sampler, tasks
