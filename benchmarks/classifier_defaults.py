"""ReptileClassifier with every default against 1-NN and nearest centroid, on digits and Omniglot.

Digits (scikit-learn's): meta-train on classes 0-4, score 5-way 1-shot
episodes on classes 5-9.  Omniglot's minimal sets: meta-train on
``images_background_small1`` (rotations as classes), score 5-way and
20-way 1-shot episodes on the alphabets of ``images_background_small2``
that the first lacks.  Each episode has ``--n-query`` query examples per
class; accuracies are means over episodes with 95% confidence intervals.

Recipes: ``defaults`` (``ReptileClassifier(random_state=seed)``), ``convnet`` (the
same with ``module=ConvNet``), ``convnet-8-steps`` (the same with
``adapt_steps=8``: validation adapts 8 steps instead of up to 128),
``convnet-8-steps-10-shot`` (the same on meta-training tasks of 10 examples
per class, as the paper's), ``defaults-10-shot`` (every default on those
tasks), ``before``
(the defaults before issue 22: 50 adaptation steps at ``inner_lr``, no
hold-out, no early stopping) and, on Omniglot, ``paper`` (the paper's
ConvNet with Adam inner steps, 10 examples per class in meta-training
tasks, 50 adaptation steps) given the CPU time ``defaults`` took.

    python benchmarks/classifier_defaults.py digits --seeds 0 1 2
    python benchmarks/classifier_defaults.py omniglot --recipes defaults before paper
"""

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from skreptile import ClassTaskSampler, ReptileClassifier

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared/data/omniglot"
BEFORE = dict(adapt_steps=50, adapt_lr=None, early_stopping=False, validation_fraction=None)
PAPER = {
    5: dict(inner_batch_size=10, inner_steps=5, inner_lr=0.001),
    20: dict(inner_batch_size=20, inner_steps=10, inner_lr=0.0005),
}
PAPER_COMMON = dict(inner_optimizer="adam", meta_batch_size=5, **BEFORE)


def ci95(per_episode):
    per_episode = np.asarray(per_episode, dtype=float)
    return per_episode.mean(), 1.96 * per_episode.std(ddof=1) / np.sqrt(len(per_episode))


def flat(X):
    return X.reshape(*X.shape[:2], -1)


def nearest_neighbour(Xs, ys, Xq):
    d = ((flat(Xq)[:, :, None] - flat(Xs)[:, None]) ** 2).sum(-1)
    return np.take_along_axis(ys, d.argmin(-1), axis=1)


def nearest_centroid(Xs, ys, Xq):
    out = np.empty(Xq.shape[:2], dtype=ys.dtype)
    for e in range(len(Xs)):
        classes = np.unique(ys[e])
        centroids = np.stack([flat(Xs)[e][ys[e] == c].mean(0) for c in classes])
        d = ((flat(Xq)[e][:, None] - centroids[None]) ** 2).sum(-1)
        out[e] = classes[d.argmin(1)]
    return out


def meta_fitted(params, sampler):
    model = ReptileClassifier(**params)
    start = time.process_time()
    model.meta_fit(sampler)
    return model, time.process_time() - start


def paper_model(n_way, seed, sampler, budget):
    """The paper's recipe, with as many meta-iterations as ``budget`` CPU seconds allow."""
    from skreptile.nn import ConvNet

    params = dict(module=ConvNet, random_state=seed, **PAPER_COMMON, **PAPER[n_way])
    # A warm-up call (first-call costs), then the cost of a meta-iteration from a probe.
    meta_fitted(dict(params, n_meta_iter=2), sampler)
    _, probe = meta_fitted(dict(params, n_meta_iter=25), sampler)
    n_iter = max(5, int(25 * budget / probe))
    return meta_fitted(dict(params, n_meta_iter=n_iter), sampler)


def load(data, data_dir, ways=(5, 20)):
    """``(X_train, y_train, X_test, y_test, ways, augment)`` of the digits or Omniglot protocol."""
    if data == "digits":
        digits = load_digits()
        train, test = digits.target < 5, digits.target >= 5
        return (
            digits.data[train],
            digits.target[train],
            digits.data[test],
            digits.target[test],
            (5,),
            None,
        )
    from skreptile.datasets import load_omniglot

    data_dir = Path(data_dir)
    background = load_omniglot(data_dir / "images_background_small1.zip")
    other = load_omniglot(data_dir / "images_background_small2.zip")
    held = [a for a in other.alphabet_names if a not in background.alphabet_names]
    keep = np.isin(np.asarray(other.alphabet_names)[other.alphabet], held)
    X_train, y_train = background.images, background.target
    return X_train, y_train, other.images[keep], other.target[keep], tuple(ways), "rot90"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", choices=["digits", "omniglot"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--n-query", type=int, default=1)
    parser.add_argument("--recipes", nargs="+", default=["defaults", "before"])
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20], help="Omniglot's N")
    parser.add_argument("--data-dir", default=str(DEFAULT_DIR))
    args = parser.parse_args()
    X_train, y_train, X_test, y_test, ways, augment = load(args.data, args.data_dir, args.ways)
    rows = []
    for n_way in ways:
        test = ClassTaskSampler(X_test, y_test, n_way=n_way, k_shot=1)
        Xs, ys, Xq, yq = test.sample_episodes(
            np.random.default_rng(n_way), args.episodes, n_query=args.n_query
        )
        for name, method in (("1-NN", nearest_neighbour), ("nearest centroid", nearest_centroid)):
            rows.append((n_way, name, "", ci95((method(Xs, ys, Xq) == yq).mean(1)), None, ""))
        for seed in args.seeds:
            sampler = ClassTaskSampler(
                X_train, y_train, n_way=n_way, augment=augment, random_state=seed
            )
            budget = None
            for recipe in args.recipes:
                if recipe == "paper":
                    shots = ClassTaskSampler(
                        X_train, y_train, n_way=n_way, k_shot=10, augment=augment,
                        random_state=seed,
                    )  # fmt: skip
                    model, seconds = paper_model(n_way, seed, shots, budget)
                elif recipe.startswith("convnet"):  # every default but these
                    from skreptile.nn import ConvNet

                    params = dict(random_state=seed, module=ConvNet)
                    if recipe != "convnet":
                        params["adapt_steps"] = 8  # fixed a priori: validation adapts 8 steps
                    tasks = sampler
                    if recipe == "convnet-8-steps-10-shot":  # the paper's meta-training tasks
                        tasks = ClassTaskSampler(
                            X_train, y_train, n_way=n_way, k_shot=10, augment=augment,
                            random_state=seed,
                        )  # fmt: skip
                    model, seconds = meta_fitted(params, tasks)
                elif recipe == "defaults-10-shot":  # on the paper's meta-training tasks
                    tasks = ClassTaskSampler(
                        X_train, y_train, n_way=n_way, k_shot=10, augment=augment,
                        random_state=seed,
                    )  # fmt: skip
                    model, seconds = meta_fitted(dict(random_state=seed), tasks)
                else:
                    params = dict(random_state=seed, **({} if recipe == "defaults" else BEFORE))
                    model, seconds = meta_fitted(params, sampler)
                    budget = seconds if recipe == "defaults" else budget
                accuracy = (model.few_shot_predict(Xs, ys, Xq) == yq).mean(1)
                done = model.history_["meta_iter"][-1]
                how = f"{done} it, {model.adapt_steps_} steps at {model.adapt_lr_:.3g}"
                rows.append((n_way, recipe, seed, ci95(accuracy), seconds, how))
                print(f"[{args.data} {n_way}-way {recipe} seed {seed}: {seconds:.0f} s, {how}]")
    print(f"\n{args.data}, 1-shot, {args.episodes} episodes, {args.n_query} query per class")
    print("| N | method | seed | accuracy (95% CI) | meta_fit CPU s | run |")
    print("|---|---|---|---|---|---|")
    for n_way, name, seed, (mean, half), seconds, how in rows:
        s = "" if seconds is None else f"{seconds:.0f}"
        print(f"| {n_way} | {name} | {seed} | {mean:.3f} ± {half:.3f} | {s} | {how} |")


if __name__ == "__main__":
    main()
