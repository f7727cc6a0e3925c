"""How far can an embedding learned from digits 0-4 take 5-way 1-shot episodes on 5-9?

Issue 22 asks the classifier for 1-NN on pixels + 0.05 on scikit-learn's digits
(meta-train on classes 0-4, 5-way 1-shot episodes on 5-9).  This script
measures what the standard metric-learning answer reaches there, on the same
600 episodes as 1-NN: a prototypical network (Snell et al., 2017), the
method that the prototype head of ``ReptileClassifier(head_init="prototypes")``
reduces to at zero adaptation steps, trained episodically on the five base
classes, and again on 40 base classes made from them by rotations and
mirror images.  At 1 shot, nearest centroid in an embedding is 1-NN in it.
It also scores 1-NN against every copy of the support image shifted by up to
one pixel, a hand-built invariance that no learner of flat rows is told about:
what pixels can reach when the image prior is given for free.

    python benchmarks/digits_ceiling.py [--iterations 1500] [--seeds 0 1]

It prints every accuracy with its 95% confidence interval over episodes and the
ratio to 1-NN on pixels, at several points of training.
"""

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits

WAY, QUERY = 5, 1


def episodes(X, y, n, rng, shot=1):
    """``n`` episodes of ``(support, query)``, each a list of per-class arrays."""
    classes = np.unique(y)
    out = []
    for _ in range(n):
        chosen = rng.permutation(classes)[:WAY]
        rows = [rng.permutation(np.flatnonzero(y == c))[: shot + QUERY] for c in chosen]
        out.append(([X[r[:shot]] for r in rows], [X[r[shot:]] for r in rows]))
    return out


def accuracy(embed, test_episodes):
    """Nearest-centroid accuracy in ``embed`` per episode: mean and 95% CI half-width."""
    per_episode = []
    for support, query in test_episodes:
        centroids = np.stack([embed(s).mean(0) for s in support])
        hits = []
        for label, q in enumerate(query):
            d = ((embed(q)[:, None] - centroids[None]) ** 2).sum(-1)
            hits.append(d.argmin(1) == label)
        per_episode.append(np.concatenate(hits).mean())
    a = np.asarray(per_episode)
    return a.mean(), 1.96 * a.std(ddof=1) / np.sqrt(len(a))


def shifted(images, radius=1):
    """Every copy of each 8x8 image shifted by up to ``radius`` pixels, zero-filled: ``(n, copies, 64)``."""
    padded = np.pad(images.reshape(-1, 8, 8), ((0, 0), (radius, radius), (radius, radius)))
    copies = [
        padded[:, radius + dy : radius + dy + 8, radius + dx : radius + dx + 8]
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
    ]
    return np.stack(copies, axis=1).reshape(len(images), len(copies), 64)


def shifted_nn_accuracy(test_episodes):
    """1-NN accuracy with each support image's shifted copies as extra neighbours of its class."""
    per_episode = []
    for support, query in test_episodes:
        copies = [shifted(s).reshape(-1, 64) for s in support]
        labels = np.concatenate([np.full(len(c), k) for k, c in enumerate(copies)])
        neighbours = np.concatenate(copies)
        hits = []
        for label, q in enumerate(query):
            d = ((q[:, None] - neighbours[None]) ** 2).sum(-1)
            hits.append(labels[d.argmin(1)] == label)
        per_episode.append(np.concatenate(hits).mean())
    a = np.asarray(per_episode)
    return a.mean(), 1.96 * a.std(ddof=1) / np.sqrt(len(a))


def variants(X, y):
    """40 classes from 5: every rotation by 90 degrees, with and without a mirror image."""
    images = X.reshape(-1, 8, 8)
    Xs, ys = [], []
    for k in range(4):
        for mirror in (False, True):
            v = np.rot90(images, k, axes=(1, 2))
            v = v[:, :, ::-1] if mirror else v
            Xs.append(v.reshape(len(X), 64))
            ys.append(y + 5 * (2 * k + mirror))
    return np.concatenate(Xs), np.concatenate(ys)


def protonet(X, y, iterations, seed, report, tasks_per_step=8):
    """Train a two-layer embedding episodically; ``report(it, embed)`` at a few iterations."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    data = torch.tensor(X, dtype=torch.float32)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    labels = torch.arange(WAY).repeat_interleave(5)

    def embed(x):
        with torch.no_grad():
            return net(torch.tensor(x, dtype=torch.float32)).numpy()

    checkpoints = {0, iterations // 10, iterations // 2, iterations}
    for it in range(iterations + 1):
        if it in checkpoints:
            report(it, embed)
        if it == iterations:
            break
        loss = 0.0
        for _ in range(tasks_per_step):
            chosen = rng.permutation(len(by_class))[:WAY]
            rows = np.stack([rng.permutation(by_class[c])[:6] for c in chosen])
            e = net(data[rows.reshape(-1)]).reshape(WAY, 6, -1)
            centroids, queries = e[:, 0], e[:, 1:].reshape(-1, e.shape[-1])
            logits = -((queries[:, None] - centroids[None]) ** 2).sum(-1)
            loss = loss + torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args(argv)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    base, new = y < 5, y >= 5
    test = episodes(X[new], y[new], args.episodes, np.random.default_rng(123))
    pixels, half = accuracy(lambda x: x, test)
    print(f"1-NN on pixels: {pixels:.3f} ± {half:.3f} (the goal: {pixels + 0.05:.3f})")
    acc, h = shifted_nn_accuracy(test)
    print(
        f"1-NN with support shifted by up to 1 pixel: {acc:.3f} ± {h:.3f} ({acc / pixels:.2f}x 1-NN)"
    )

    def report(name):
        def show(it, embed):
            acc, h = accuracy(embed, test)
            print(f"{name}, iteration {it}: {acc:.3f} ± {h:.3f} ({acc / pixels:.2f}x 1-NN)")

        return show

    for seed in args.seeds:
        protonet(
            X[base], y[base], args.iterations, seed, report(f"ProtoNet 5 classes, seed {seed}")
        )
        Xv, yv = variants(X[base], y[base])
        protonet(Xv, yv, args.iterations, seed, report(f"ProtoNet 40 variants, seed {seed}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
