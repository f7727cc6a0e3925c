"""How much of the network to use beside the pooled base model: chosen on the held-out groups.

With a pooled base model, every prediction for a new group is an average of
two models: the statistician's (the base model's prediction plus the BLUP of
the group's offset from its support rows) and the adapted network's,

    prediction = statistician + weight * (network - statistician),

with ``weight`` chosen per support size among ``WEIGHTS`` by the mean query
error on the held-out groups.  A weight of 0 is the mixed model alone, 1 the
network alone.  The network either corrects the base model (it was
meta-trained on its residuals, ``"residuals"``: then ``network -
statistician`` is its correction, and a weight below 1 shrinks it) or was
meta-trained on the targets themselves (``"average"``: a model average).
The two models err differently (the network where a group's curve differs
from the pool, the pooled model where a handful of rows mislead an
adaptation), so their average can beat both: with 4 labelled rows, on every shared
grouped table where a pooled model passed ``"auto"``'s score, a weight
strictly between 0 and 1 beat both ends on the new groups (``docs/real_data.md``).

These functions see predictions and held-out splits only, never an estimator.
"""

from __future__ import annotations

import numpy as np

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def task_errors(preds, splits):
    """Every task's query MSE: ``preds`` for the splits' query targets (``split[3]``)."""
    return np.array([np.mean((np.ravel(s[3]) - np.ravel(p)) ** 2) for p, s in zip(preds, splits)])


def averaged(network, statistician, weight):
    """``statistician + weight * (network - statistician)`` for every task."""
    return [
        np.ravel(s) + weight * (np.ravel(n) - np.ravel(s)) for n, s in zip(network, statistician)
    ]


def _group_means(values, splits):
    """``values`` of the splits averaged per held-out group: the splits of one group hold the
    same rows, so they are not independent evidence."""
    keys = [(len(s[0]) + len(s[2]), round(float(np.sum(s[0]) + np.sum(s[2])), 6)) for s in splits]
    by_group = {}
    for key, value in zip(keys, values):
        by_group.setdefault(key, []).append(value)
    return np.array([np.mean(v) for v in by_group.values()])


def clearly_lower(errors, reference, splits):
    """Whether ``errors`` are below ``reference`` by more than two standard errors of the
    per-group differences (a single group: by anything)."""
    gains = _group_means(reference - errors, splits)
    if len(gains) < 2:
        return bool(gains.mean() > 0)
    return bool(gains.mean() > 2.0 * gains.std(ddof=1) / np.sqrt(len(gains)))


def choose_weight(network, statistician, splits, nested):
    """``(weight, task errors at it, task errors at every weight)``: the weight of ``WEIGHTS``
    with the lowest mean held-out error, the lower weight on a tie (the simpler model).

    With ``nested`` (a network meta-trained on the base model's residuals, whose weight 0 turns
    its correction off) the weight must also clearly beat 0 (:func:`clearly_lower`), else it
    is 0: the network was early-stopped and its adaptation chosen on these same groups, so its
    error there is optimistic, and a correction that the mixed model already nests looks
    better there than it is (on a table whose truth is a linear model plus a random
    intercept, a weight of 0.5 chosen there came out 3% worse than 0 on new groups).  A network
    meta-trained on the targets themselves is a model apart, and the weight is the best one.
    """
    errors = {w: task_errors(averaged(network, statistician, w), splits) for w in WEIGHTS}
    best = min(WEIGHTS, key=lambda w: errors[w].mean())
    if nested and best > 0 and not clearly_lower(errors[best], errors[0.0], splits):
        best = 0.0
    return best, errors[best], errors


def means(errors):
    """``{support size: mean error}`` of ``{support size: task errors}``."""
    return {size: float(e.mean()) for size, e in errors.items()}
