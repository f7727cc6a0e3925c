"""Does averaging the classifier with nearest centroid on the inputs help on digits or Omniglot?

Issue 23 made the regressor average its network with the statistician's model, at
a weight chosen on held-out groups.  The classifier's counterpart of that model is
nearest centroid on the inputs, and on scikit-learn's digits (meta-train on
classes 0-4, 5-way 1-shot episodes on 5-9, issue 22's protocol) it beats the
classifier with every default, and on Omniglot's held-out alphabets it ties 1-NN,
which also beats the defaults.  This script scores, on the episodes of
``classifier_defaults.py`` (600 on digits, 300 on Omniglot),
``w * p_network + (1 - w) * p_centroid``, with ``p_network`` the adapted
``ReptileClassifier()``'s class probabilities and ``p_centroid`` a softmax of
minus the squared distances to the support examples over ``T`` times their
median, for every weight ``w`` and temperature ``T``: the best any weight
chosen on held-out classes could do.

    python benchmarks/classifier_average.py digits [--seeds 0 1 2]
    python benchmarks/classifier_average.py omniglot --seeds 0
"""

import argparse

import numpy as np
from classifier_defaults import DEFAULT_DIR, ci95, flat, load, nearest_centroid, nearest_neighbour

from skreptile import ClassTaskSampler, ReptileClassifier

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEMPERATURES = (0.02, 0.05, 0.1, 0.2, 0.5)


def centroid_probabilities(Xs, ys, Xq, temperature):
    """Softmax of minus squared distances to each class's support mean, classes sorted."""
    order = np.argsort(ys, axis=1)
    d = ((flat(Xq)[:, :, None] - flat(Xs)[:, None]) ** 2).sum(-1)
    d = np.take_along_axis(d, order[:, None, :], 2)  # one example per class: 1-shot
    logits = -d / (temperature * np.median(d))
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", choices=["digits", "omniglot"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=None, help="600 digits, 300 Omniglot")
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20], help="Omniglot's N")
    parser.add_argument("--data-dir", default=str(DEFAULT_DIR))
    args = parser.parse_args()
    n_episodes = args.episodes or (600 if args.data == "digits" else 300)
    X_train, y_train, X_test, y_test, ways, augment = load(args.data, args.data_dir, args.ways)
    for n_way in ways:
        episodes = ClassTaskSampler(X_test, y_test, n_way=n_way, k_shot=1)
        Xs, ys, Xq, yq = episodes.sample_episodes(
            np.random.default_rng(n_way), n_episodes, n_query=1
        )
        sampler_args = dict(n_way=n_way, augment=augment)
        score(Xs, ys, Xq, yq, X_train, y_train, sampler_args, args.seeds)


def score(Xs, ys, Xq, yq, X_train, y_train, sampler_args, seeds):
    """Print the accuracy of every average, for every seed and temperature."""
    classes = np.sort(ys, axis=1)
    one_nn = ci95((nearest_neighbour(Xs, ys, Xq) == yq).mean(1))
    print(f"1-NN on pixels {one_nn[0]:.3f} ± {one_nn[1]:.3f}")
    centroid = ci95((nearest_centroid(Xs, ys, Xq) == yq).mean(1))
    print(f"nearest centroid on pixels {centroid[0]:.3f} ± {centroid[1]:.3f}")
    print(f"{sampler_args['n_way']}-way 1-shot, {len(Xs)} episodes")
    print("seed | T | " + " | ".join(f"w={w}" for w in WEIGHTS) + " | best / 1-NN")
    for seed in seeds:
        sampler = ClassTaskSampler(X_train, y_train, random_state=seed, **sampler_args)
        model = ReptileClassifier(random_state=seed).meta_fit(sampler)
        steps = model.adapt_steps_
        staged = model.staged_few_shot_predict(
            list(Xs), list(ys), list(Xq), [steps], method="predict_proba"
        )
        network = np.stack(staged[steps])
        for temperature in TEMPERATURES:
            near = centroid_probabilities(Xs, ys, Xq, temperature)
            accs = [
                ci95(
                    (
                        np.take_along_axis(classes, (w * network + (1 - w) * near).argmax(-1), 1)
                        == yq
                    ).mean(1)
                )[0]
                for w in WEIGHTS
            ]
            cells = " | ".join(f"{a:.3f}" for a in accs)
            print(f"{seed} | {temperature} | {cells} | {max(accs) / one_nn[0]:.3f}", flush=True)


if __name__ == "__main__":
    main()
