"""ReptileClassifier's output layer: meta-learned (``head_init="meta"``) or from prototypes.

Digits (scikit-learn's 8x8 images, flat), meta-trained on classes 0-4 with
5-way tasks, evaluated on 5-way 1-shot episodes of classes 5-9 (the same
episodes for every method): accuracy on the query points, mean over episodes
and seeds with a 95% confidence interval (normal, over episodes), and the
paired difference of the prototype head against the meta-learned one.
References: nearest centroid and 1-nearest-neighbour on the pixels.

Usage::

    python benchmarks/prototype_head.py [--n-meta-iter 2000] [--episodes 200] [--seeds 3]
        [--train-shot 5] [--inner-lr 0.1]
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

from skreptile import ClassTaskSampler, ReptileClassifier


def _ci(a):
    a = np.asarray(a, dtype=float)
    return a.mean(), 1.96 * a.std(ddof=1) / np.sqrt(len(a))


def _pixels(Xs, ys, Xq, kind):
    """Nearest centroid or 1-NN on pixels, per episode."""
    preds = []
    for xs, y, xq in zip(Xs, ys, Xq):
        if kind == "centroid":
            classes = np.unique(y)
            refs, labels = np.stack([xs[y == c].mean(0) for c in classes]), classes
        else:
            refs, labels = xs, y
        d2 = ((xq[:, None, :] - refs[None]) ** 2).sum(-1)
        preds.append(labels[np.argmin(d2, 1)])
    return np.stack(preds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-meta-iter", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-shot", type=int, default=5)
    parser.add_argument("--n-query", type=int, default=10)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    train, test = y < 5, y >= 5
    scores = {}  # method -> per-episode accuracies over all seeds

    def add(name, pred, yq):
        scores.setdefault(name, []).extend((pred == yq).mean(1))

    for seed in range(args.seeds):
        evaluation = ClassTaskSampler(X[test], y[test], n_way=5, k_shot=1, random_state=seed)
        Xs, ys, Xq, yq = evaluation.sample_episodes(
            np.random.default_rng(1000 + seed), args.episodes, n_query=args.n_query
        )
        add("nearest centroid, pixels", _pixels(Xs, ys, Xq, "centroid"), yq)
        add("1-NN, pixels", _pixels(Xs, ys, Xq, "1nn"), yq)
        for head in ("meta", "prototypes"):
            sampler = ClassTaskSampler(
                X[train], y[train], n_way=5, k_shot=args.train_shot, random_state=seed
            )
            start = time.perf_counter()
            model = ReptileClassifier(
                head_init=head,
                n_meta_iter=args.n_meta_iter,
                inner_lr=args.inner_lr,
                random_state=seed,
                device="cpu",
            ).meta_fit(sampler)
            seconds = time.perf_counter() - start
            print(f"seed {seed}, meta-trained with head_init={head!r}: {seconds:.1f} s")
            for used in ("meta", "prototypes"):
                model.set_params(head_init=used)
                label = f"meta-trained {head}, adapted from {used}"
                add(label + " (50 steps)", model.few_shot_predict(Xs, ys, Xq), yq)
                if used == "prototypes":
                    zero = model.staged_few_shot_predict(Xs, ys, Xq, [0])[0]
                    add(label + " (0 steps)", np.stack(zero), yq)

    n = len(next(iter(scores.values())))
    print(
        f"\n5-way 1-shot digits 5-9, {n} episodes ({args.seeds} seeds x {args.episodes}), "
        f"meta-trained {args.n_meta_iter} iterations on 5-way {args.train_shot}-shot digits 0-4, "
        f"inner_lr={args.inner_lr}"
    )
    print(f"{'method':<62} {'accuracy':>9} {'95% CI':>8}")
    for name, accs in scores.items():
        mean, half = _ci(accs)
        print(f"{name:<62} {mean:>9.4f} {half:>8.4f}")
    plain = np.asarray(scores["meta-trained meta, adapted from meta (50 steps)"])
    proto = np.asarray(scores["meta-trained prototypes, adapted from prototypes (50 steps)"])
    mean, half = _ci(proto - plain)
    print(f"\nprototypes - meta (each meta-trained its way, 50 steps): {mean:+.4f} +- {half:.4f}")


if __name__ == "__main__":
    main()
