"""Held-out classification tasks for ``meta_fit``'s validation: new classes, or new examples.

A classifier meta-trained on few base classes overfits them; what tells it is
validation on classes it never trained on.  :func:`hold_out_classes` removes a
share of the base classes of a :class:`~skreptile.ClassTaskSampler` (with all
their augmented variants) and draws validation episodes over them.  When too
few classes would be left for ``n_way``-way tasks (digits 0-4 for 5-way
tasks), it holds out a share of every class's examples instead: new examples
of the same classes, a weaker but still honest check.
"""

import numpy as np

from ._class import ClassTaskSampler

# Query examples per class of a validation episode (fewer where a class has fewer).
N_QUERY = 5


def _restricted(sampler, rows, **changes):
    """The sampler on ``rows`` of its examples only (every other setting kept)."""
    params = dict(
        n_way=sampler.n_way,
        k_shot=sampler.k_shot,
        augment=sampler.augment,
        image_shape=sampler.image_shape,
        random_state=sampler.random_state,
        draw_on=sampler.draw_on,
    )
    params.update(changes)
    return ClassTaskSampler(sampler.X[rows], sampler.y[rows], **params)


def _held_rows(sampler, fraction, rng):
    """``(train rows, held rows)`` by class when enough classes stay, else by example; or None."""
    labels = np.searchsorted(sampler.classes_, sampler.y)
    n_classes, n_variants = len(sampler.classes_), sampler.n_task_classes_ // len(sampler.classes_)
    n_held = max(1, int(round(fraction * n_classes)))
    if (n_classes - n_held) * n_variants >= sampler.n_way and n_held * n_variants >= 2:
        held = np.isin(labels, rng.permutation(n_classes)[:n_held])
        return np.flatnonzero(~held), np.flatnonzero(held)
    held = np.zeros(len(labels), dtype=bool)
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        n = max(2, int(round(fraction * len(members))))  # a support and a query example
        if len(members) - n < sampler.k_shot:
            return None  # meta-training tasks would lack examples
        held[rng.permutation(members)[:n]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def hold_out_classes(sampler, fraction, shots, hold_rng, episode_rng, n_episodes):
    """``(sampler of the other examples, {shots: episodes})``, or None when nothing can be held out.

    Parameters
    ----------
    sampler : ClassTaskSampler
    fraction : float
        Share of the base classes (or of every class's examples) held out.
    shots : sequence of int
        Support examples per class of the validation episodes, one set of
        episodes each (sizes a class's held-out examples cannot serve are left out).
    hold_rng, episode_rng : numpy.random.Generator
        Choose what is held out, and draw the episodes.
    n_episodes : int
        Episodes per number of shots.

    Returns
    -------
    split : tuple or None
        The meta-training sampler and the validation episodes
        ``[(X_support, y_support, X_query, y_query), ...]`` by number of shots.
    """
    rows = _held_rows(sampler, fraction, hold_rng)
    if rows is None:
        return None
    train_rows, held_rows = rows
    fewest = int(np.unique(sampler.y[held_rows], return_counts=True)[1].min())
    n_way = min(
        sampler.n_way,
        len(np.unique(sampler.y[held_rows])) * (sampler.n_task_classes_ // len(sampler.classes_)),
    )
    by_shots = {}
    for k in shots:
        if fewest < k + 1:
            continue
        held = _restricted(sampler, held_rows, n_way=n_way, k_shot=k)
        episodes = held.sample_episodes(episode_rng, n_episodes, n_query=min(N_QUERY, fewest - k))
        by_shots[k] = list(zip(*episodes))
    if not by_shots:
        return None
    return _restricted(sampler, train_rows), by_shots
