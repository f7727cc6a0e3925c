"""Bit-identical behaviour of this checkout against another commit, through the public API only.

Runs the same recipes in this checkout and in a clean checkout of ``--against`` (a git
worktree made for the run, removed after), each in its own process, and compares every
learned and predicted array with ``numpy.array_equal``:

* the default regressor recipe (``ReptileRegressor(random_state=0)`` on sine waves, every
  default: held-out tasks, early stopping off, ``'auto'`` adaptation), ``fit``, ``predict``
  and ``few_shot_predict``;
* a regressor with wide meta-batches (256 tasks of a 1-256-256-1 perceptron: cache-sized
  blocks on every core) and a finite grouped table (held-out groups, early stopping,
  adaptation per support size);
* an Adam run (``inner_optimizer='adam'``);
* a ConvNet classifier (the paper's network, batch normalisation) on digit images;
* a perceptron classifier.

Usage::

    python benchmarks/check_identical.py --against main~1

Exit status 0 when every array is equal, 1 otherwise; prints one line a recipe.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from checkouts import other_checkout

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _sine_tasks(seed, n_tasks=20):
    from skreptile import SineTaskSampler

    rng = np.random.default_rng(seed)
    X, y = SineTaskSampler().sample_batch(rng, n_tasks)
    return X[:, :10], y[:, :10], X, y


def _regressor_default(out):
    from skreptile import ReptileRegressor, SineTaskSampler

    model = ReptileRegressor(random_state=0).meta_fit(SineTaskSampler(random_state=0))
    Xs, ys, Xq, _ = _sine_tasks(1)
    out["default.meta_params"] = model.meta_params_
    out["default.predict"] = model.fit(Xs[0], ys[0]).predict(Xq[0])
    out["default.params"] = model.params_
    out["default.few_shot"] = model.few_shot_predict(Xs, ys, Xq)
    out["default.adapt"] = np.array([model.adapt_steps_, model.adapt_lr_])


def _regressor_wide_and_groups(out):
    from skreptile import GroupTaskSampler, ReptileRegressor, SineTaskSampler

    wide = ReptileRegressor(
        hidden_layer_sizes=(256, 256), meta_batch_size=256, n_meta_iter=20, random_state=1
    ).meta_fit(SineTaskSampler(random_state=1))
    Xs, ys, Xq, _ = _sine_tasks(2, n_tasks=300)
    out["wide.meta_params"] = wide.meta_params_
    out["wide.few_shot"] = wide.few_shot_predict(Xs, ys, Xq)
    out["wide.predict"] = wide.fit(Xs[0], ys[0]).predict(Xq[0])

    rng = np.random.default_rng(3)
    n_groups, n_rows = 40, 30
    groups = np.repeat(np.arange(n_groups), n_rows)
    X = rng.normal(size=(n_groups * n_rows, 3))
    slope = rng.normal(size=n_groups)[groups]
    y = np.sin(X[:, 0] * slope) + X[:, 1] * 0.5 + rng.normal(scale=0.1, size=len(X))
    model = ReptileRegressor(n_meta_iter=600, random_state=2).meta_fit(
        GroupTaskSampler(X, y, groups)
    )
    out["groups.meta_params"] = model.meta_params_
    out["groups.by_support"] = model.adaptation_by_support_
    out["groups.history"] = np.asarray(model.history_["validation_loss"])
    out["groups.predict"] = model.fit(X[:7], y[:7]).predict(X[7:30])


def _regressor_adam(out):
    from skreptile import ReptileRegressor, SineTaskSampler

    model = ReptileRegressor(
        inner_optimizer="adam", inner_lr=0.001, n_meta_iter=400, random_state=0
    ).meta_fit(SineTaskSampler(random_state=0))
    Xs, ys, Xq, _ = _sine_tasks(4)
    out["adam.meta_params"] = model.meta_params_
    out["adam.optimizer_v"] = model.inner_optimizer_state_["v"]
    out["adam.predict"] = model.fit(Xs[0], ys[0]).predict(Xq[0])
    out["adam.few_shot"] = model.few_shot_predict(Xs, ys, Xq)


def _classifiers(out):
    from sklearn.datasets import load_digits

    from skreptile import ClassTaskSampler, ReptileClassifier
    from skreptile.nn import ConvNet

    digits = load_digits()
    images, labels = digits.images[:, None] / 16.0, digits.target
    train = labels < 6
    sampler = ClassTaskSampler(images[train], labels[train], n_way=3, k_shot=2, random_state=0)
    conv = ReptileClassifier(
        module=ConvNet, n_meta_iter=30, meta_batch_size=3, adapt_steps=5, random_state=0
    ).meta_fit(sampler)
    rng = np.random.default_rng(5)
    new = np.flatnonzero((labels >= 6) & (labels <= 8))  # a new 3-way task
    support = np.concatenate([rng.choice(np.flatnonzero(labels == c), 3) for c in (6, 7, 8)])
    query = rng.choice(new, 40, replace=False)
    out["convnet.meta_params"] = conv.meta_params_
    conv.fit(images[support], labels[support])
    out["convnet.proba"] = conv.predict_proba(images[query])

    flat = digits.data / 16.0
    mlp = ReptileClassifier(n_meta_iter=300, random_state=0).meta_fit(
        ClassTaskSampler(flat[train], labels[train], n_way=3, k_shot=2, random_state=0)
    )
    out["mlp_classifier.meta_params"] = mlp.meta_params_
    out["mlp_classifier.proba"] = mlp.fit(flat[support], labels[support]).predict_proba(flat[query])


RECIPES = (_regressor_default, _regressor_wide_and_groups, _regressor_adam, _classifiers)


def compute(path, root=None):
    import torch

    import skreptile

    if root is not None and not skreptile.__file__.startswith(root):
        raise RuntimeError(f"imported {skreptile.__file__}, not the checkout {root}")

    torch.set_num_threads(1)
    out = {}
    for recipe in RECIPES:
        recipe(out)
    np.savez(path, **{k: np.asarray(v) for k, v in out.items()})


def _run_in(root, path):
    env = dict(os.environ, PYTHONPATH=root)
    code = f"import sys; sys.path.insert(0, {HERE!r}); import check_identical as c; c.compute({path!r}, {root!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, other_checkout(args.against) as other:
        _run_in(other, os.path.join(tmp, "other.npz"))
        _run_in(ROOT, os.path.join(tmp, "this.npz"))
        then, now = np.load(os.path.join(tmp, "other.npz")), np.load(os.path.join(tmp, "this.npz"))
        ok = set(then.files) == set(now.files)
        for key in sorted(then.files):
            same = key in now.files and np.array_equal(then[key], now[key], equal_nan=True)
            ok &= same
            print(f"{'equal' if same else 'DIFFERENT':>9}  {key}  {np.shape(then[key])}")
    print("bit-identical" if ok else "NOT bit-identical", f"against {args.against}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
