"""ReptileClassifier with every default against 1-NN and nearest centroid, on digits and Omniglot.

Digits (scikit-learn's): meta-train on classes 0-4, score 5-way 1-shot
episodes on classes 5-9.  Omniglot's minimal sets: meta-train on
``images_background_small1`` (rotations as classes), score 5-way and
20-way 1-shot episodes on the alphabets of ``images_background_small2``
that the first lacks.  Each episode has ``--n-query`` query examples per
class; accuracies are means over episodes with 95% confidence intervals.

Recipes: ``defaults`` (``ReptileClassifier(random_state=seed)``),
``before`` (the defaults before issue 22: 50 adaptation steps at
``inner_lr``, no validation hold-out, no early stopping) and, on Omniglot,
``paper`` (the paper's ConvNet, Adam inner loop, 10 shots per class in
meta-training, 50 adaptation steps), given the CPU time ``defaults`` took.

    python benchmarks/classifier_defaults.py digits --seeds 0 1 2
    python benchmarks/classifier_defaults.py omniglot --data-dir ../shared/data/omniglot
"""

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from skreptile import ClassTaskSampler, ReptileClassifier

BEFORE = dict(adapt_steps=50, adapt_lr=None, early_stopping=False, validation_fraction=None)


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


def episodes(X, y, n_way, n_episodes, n_query, seed):
    test = ClassTaskSampler(X, y, n_way=n_way, k_shot=1)
    return test.sample_episodes(np.random.default_rng(seed), n_episodes, n_query=n_query)


def score(model, episode):
    Xs, ys, Xq, yq = episode
    return (model.few_shot_predict(Xs, ys, Xq) == yq).mean(1)


def report(rows):
    print(f"| {'data':10s} | {'method':34s} | {'seed':>4s} | {'accuracy (95% CI)':>19s} | meta s |")
    print(f"|{'-' * 12}|{'-' * 36}|{'-' * 6}|{'-' * 21}|{'-' * 8}|")
    for data, name, seed, (mean, half), seconds in rows:
        s = "" if seconds is None else f"{seconds:6.0f}"
        print(f"| {data:10s} | {name:34s} | {seed:>4} | {mean:.3f} +- {half:.3f}     | {s:>6s} |")


def run(data, X_train, y_train, test_sets, recipes, seeds, sampler_args):
    rows = []
    for label, episode in test_sets.items():
        Xs, ys, Xq, yq = episode
        rows.append(
            (data, f"{label} 1-NN", "", ci95((nearest_neighbour(Xs, ys, Xq) == yq).mean(1)), None)
        )
        rows.append(
            (
                data,
                f"{label} nearest centroid",
                "",
                ci95((nearest_centroid(Xs, ys, Xq) == yq).mean(1)),
                None,
            )
        )
    for seed in seeds:
        for name, (params, n_way) in recipes.items():
            sampler = ClassTaskSampler(
                X_train, y_train, n_way=n_way, random_state=seed, **sampler_args(name)
            )
            model = ReptileClassifier(random_state=seed, **params)
            start = time.process_time()
            model.meta_fit(sampler)
            seconds = time.process_time() - start
            for label, episode in test_sets.items():
                if label.startswith(f"{n_way}-way") or len(recipes) == 2 and data == "digits":
                    rows.append(
                        (data, f"{label} {name}", seed, ci95(score(model, episode)), seconds)
                    )
            print(
                f"[{data} {name} seed {seed}: {seconds:.0f} s CPU, {model.n_meta_iter_done_ if hasattr(model, 'n_meta_iter_done_') else len(model.history_['meta_iter'])} records, "
                f"adapt_steps_={model.adapt_steps_}, adapt_lr_={model.adapt_lr_:.3g}]",
                flush=True,
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", choices=["digits", "omniglot"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--n-query", type=int, default=1)
    parser.add_argument("--recipes", nargs="+", default=["defaults", "before"])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/omniglot")
    )
    args = parser.parse_args()
    if args.data == "digits":
        digits = load_digits()
        train, test = digits.target < 5, digits.target >= 5
        test_sets = {
            "5-way": episodes(
                digits.data[test], digits.target[test], 5, args.episodes, args.n_query, 1
            )
        }
        recipes = {name: ({"defaults": {}, "before": BEFORE}[name], 5) for name in args.recipes}
        rows = run(
            "digits",
            digits.data[train],
            digits.target[train],
            test_sets,
            recipes,
            args.seeds,
            lambda name: {},
        )
    else:
        from skreptile.datasets import load_omniglot

        data_dir = Path(args.data_dir)
        train = load_omniglot(data_dir / "images_background_small1.zip")
        other = load_omniglot(data_dir / "images_background_small2.zip")
        held = [a for a in other.alphabet_names if a not in train.alphabet_names]
        keep = np.isin(np.asarray(other.alphabet_names)[other.alphabet], held)
        X_test, y_test = other.images[keep], other.target[keep]
        test_sets = {
            f"{n}-way": episodes(X_test, y_test, n, args.episodes, args.n_query, n) for n in (5, 20)
        }
        recipes = {}
        for name in args.recipes:
            params = {"defaults": {}, "before": BEFORE}[name]
            recipes[f"{name} 5-way"] = (params, 5)
            recipes[f"{name} 20-way"] = (params, 20)
        rows = run(
            "omniglot",
            train.images,
            train.target,
            test_sets,
            recipes,
            args.seeds,
            lambda name: dict(augment="rot90"),
        )
    report(rows)


if __name__ == "__main__":
    main()
