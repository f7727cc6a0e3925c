"""Automatic validation and adaptation: held-out tasks, early stopping, ``'auto'`` adaptation.

``meta_fit`` of a regressor with ``validation_fraction`` set holds out tasks
before drawing any meta-training task:

* a finite sampler (a sequence of tasks, a :class:`~skreptile.GroupTaskSampler`)
  loses ``max(2, round(validation_fraction * n_tasks))`` whole tasks, chosen
  at random (seeded by the run's seed); meta-training never sees a row of them.
  Nothing is held out when fewer than ``MIN_TASKS`` tasks would be left, and
  at most ``MAX_HELD_OUT`` tasks are;
* an infinite sampler (a callable or another :class:`~skreptile.tasks.TaskSampler`)
  gives ``N_FRESH`` fresh tasks from a random stream of their own.

Each held-out task is split into ``n_support`` support points and the rest as
query (up to ``SPLITS_PER_TASK`` random splits of each finite task, to
average out which rows land in the support set, ``MAX_SPLITS`` in all).
With ``n_support=None`` and a finite sampler, the held-out tasks are split at
each of ``SUPPORT_SIZES`` instead: the adaptation that suits 4 labelled rows
is not the one that suits 25 (fewer, smaller steps), and the number of rows
``fit`` will get is known only then.  ``DEFAULT_N_SUPPORT`` splits monitor
meta-training; every size gets its own adaptation, and ``fit`` uses the one
of the size nearest its number of rows (on a log scale).  An infinite
sampler gives fresh tasks of one size, ``n_support`` or ``DEFAULT_N_SUPPORT``
(its tasks are generated, their size is the user's choice).

``adapt_steps='auto'`` and ``adapt_lr='auto'`` are chosen on those splits
after meta-training: for each candidate step size
(``LR_FACTORS`` times the meta-training inner step size ``inner_lr_``) one
batched adaptation curve gives the mean query error after every candidate
number of steps (``STEP_CANDIDATES``); the pair with the smallest error wins.
"""

import math
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ..tasks._base import TaskSource, keyed_generator, sampler_kind
from ..tasks._class import ClassTaskSampler
from ..tasks._class_split import hold_out_classes

STEP_CANDIDATES = (0, 1, 2, 4, 8, 16, 32, 64, 128)
LR_FACTORS = (0.25, 0.5, 0.7, 1.0)
# The adaptation step size of validation during meta-training (as a factor of inner_lr_).
MONITOR_LR_FACTOR = 0.7
# Fallbacks when there is nothing to choose on.
DEFAULT_ADAPT_STEPS = 32
N_FRESH = 64
MIN_TASKS = 8
SPLITS_PER_TASK = 4
# Bounds on the cost of validation: held-out tasks, and their splits in all.
MAX_HELD_OUT = 100
MAX_SPLITS = 200
DEFAULT_N_SUPPORT = 10
# Support sizes adaptation is chosen for when n_support is None (finite samplers).
SUPPORT_SIZES = (4, DEFAULT_N_SUPPORT, 25)
# The same for classification, in examples per class (shots): 1-shot is the usual case.
DEFAULT_N_SHOTS = 1
SUPPORT_SHOTS = (DEFAULT_N_SHOTS, 5)
_HOLD_OUT_KEY, _FRESH_KEY, _SPLIT_KEY = 11, 12, 13


class NumberedTasks(list):
    """Some tasks of a user's sequence, with their indices there (``task_numbers``).

    Errors about a task name it by the index the user gave it, not by its
    place among the tasks left after others were held out.
    """

    def __init__(self, tasks, numbers):
        super().__init__(tasks)
        self.task_numbers = [int(i) for i in numbers]


def _split(tasks, n_support, rng, n_splits):
    out = []
    for X, y in tasks:
        n = len(X)
        k = n_support if n_support < n else max(1, n // 2)
        for _ in range(n_splits):
            order = rng.permutation(n)
            s, q = order[:k], order[k:]
            out.append((X[s], y[s], X[q], y[q]))
    return out


def _split_by_class(tasks, shots, rng):
    """Every task split into ``shots`` support examples per class (fewer where a class has
    fewer than ``shots + 1``) and the rest as query; tasks with nothing to query are left out."""
    out = []
    for X, y in tasks:
        X, y = np.asarray(X), np.asarray(y).reshape(len(X))
        support = []
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            support.extend(members[: min(shots, max(1, len(members) - 1))])
        query = np.setdiff1d(np.arange(len(y)), support)
        if len(query):
            s = np.sort(np.asarray(support, dtype=np.intp))
            out.append((X[s], y[s], X[query], y[query]))
    return out


def monitored_size(settings, by_class=False):
    """The support size of the held-out splits that monitor meta-training (shots per class
    when ``by_class``)."""
    return settings.n_support or (DEFAULT_N_SHOTS if by_class else DEFAULT_N_SUPPORT)


def _hold_out_by_class(settings, sampler, seed, split_rng):
    """:func:`hold_out` for classification: held-out classes of a class-task sampler, else
    fresh tasks split by class."""
    fraction, n_support = settings.validation_fraction, monitored_size(settings, True)
    inner = getattr(sampler, "inner", sampler)  # the classifier's label-encoding wrapper
    if isinstance(inner, ClassTaskSampler):
        shots = SUPPORT_SHOTS if settings.n_support is None else (n_support,)
        shots = (n_support,) + tuple(s for s in shots if s != n_support)
        hold_rng = keyed_generator(seed, _HOLD_OUT_KEY)
        split = hold_out_classes(inner, fraction, shots, hold_rng, split_rng, N_FRESH)
        if split is not None and n_support in split[1]:
            train, by_size = split
            return (train if sampler is inner else sampler.with_inner(train)), by_size, True
    rng = keyed_generator(seed, _FRESH_KEY)
    if sampler_kind(inner) == "batched":
        drawn = inner.sample_batch(rng, N_FRESH)
        drawn = list(zip(*drawn)) if isinstance(drawn, tuple) else drawn
    elif sampler_kind(inner) == "callable":
        drawn = [inner(rng) for _ in range(N_FRESH)]
    else:  # a sequence: meta-training on all of it, nothing held out
        return sampler, None, False
    split = _split_by_class(drawn, n_support, split_rng)
    return sampler, ({n_support: split} if split else None), False


def hold_out(settings, sampler, seed, by_class=False):
    """``(sampler to meta-train on, held-out splits by support size or None, finite)``.

    ``by_class``: classification, where sizes are shots per class and tasks are
    held out as classes (:func:`_hold_out_by_class`).

    The splits are ``{n_support: [(Xs, ys, Xq, yq), ...]}``: one size, or each
    of ``SUPPORT_SIZES`` for a finite sampler with ``n_support=None``.
    ``finite`` tells whether the held-out tasks were removed from a finite set
    (the case where early stopping pays).
    """
    fraction = settings.validation_fraction
    if not fraction:
        return sampler, None, False
    split_rng = keyed_generator(seed, _SPLIT_KEY)
    if by_class:
        return _hold_out_by_class(settings, sampler, seed, split_rng)
    n_support = monitored_size(settings)
    kind = sampler_kind(sampler)
    if kind == "sequence" or hasattr(sampler, "_split_groups"):
        n = len(sampler) if kind == "sequence" else sampler.n_groups_
        n_val = min(max(2, int(round(fraction * n))), MAX_HELD_OUT)
        if n - n_val < MIN_TASKS:
            return sampler, None, False
        held = np.sort(keyed_generator(seed, _HOLD_OUT_KEY).permutation(n)[:n_val])
        if kind == "sequence":
            kept = np.setdiff1d(np.arange(n), held)
            numbers = getattr(sampler, "task_numbers", range(n))
            source = TaskSource(
                NumberedTasks([sampler[i] for i in held], [numbers[i] for i in held]), seed
            )
            tasks = source.tasks
            train = NumberedTasks([sampler[i] for i in kept], [numbers[i] for i in kept])
        else:
            train, tasks = sampler._split_groups(held)
        splits = max(1, min(SPLITS_PER_TASK, MAX_SPLITS // n_val))
        sizes = SUPPORT_SIZES if settings.n_support is None else (n_support,)
        # The monitored size first: its splits are the same whatever the other sizes.
        sizes = (n_support,) + tuple(s for s in sizes if s != n_support)
        return train, {k: _split(tasks, k, split_rng, splits) for k in sizes}, True
    source = TaskSource(sampler, seed)
    drawn = source._draw(keyed_generator(source.seed, _FRESH_KEY), N_FRESH, 0)
    if isinstance(drawn, tuple):
        drawn = list(zip(*drawn))
    return sampler, {n_support: _split(drawn, n_support, split_rng, 1)}, False


def is_auto(value):
    return isinstance(value, str) and value == "auto"


def choose_adaptation(hooks, tasks, init, inner_lr):
    """``(adapt_steps, adapt_lr, scores)`` with the smallest mean query error on ``tasks``.

    ``scores`` maps each candidate step size to the mean errors after
    ``STEP_CANDIDATES`` steps.  Explicit (non-``'auto'``) values are kept and
    only the other one is chosen.
    """
    settings = hooks.settings
    steps = STEP_CANDIDATES if is_auto(settings.adapt_steps) else (int(settings.adapt_steps),)
    if is_auto(settings.adapt_lr):
        lrs = [inner_lr * f for f in LR_FACTORS]
    else:
        lrs = [hooks.fixed_adapt_lr(inner_lr)]
    scores = {}
    best = (math.inf, steps[-1] if len(steps) == 1 else DEFAULT_ADAPT_STEPS, lrs[-1])
    for lr in lrs:
        errors = curve_errors(hooks, tasks, init, steps, lr)
        scores[float(lr)] = [float(e) for e in errors]
        for s, e in zip(steps, errors):
            if e < best[0]:
                best = (e, s, lr)
    return int(best[1]), float(best[2]), scores


def curve_errors(hooks, tasks, init, steps, lr):
    """Mean query error of ``tasks`` after each number of ``steps`` (inf where it diverged)."""
    curve = hooks.adaptation_curve(tasks, steps, init, lr)
    errors = []
    for s in steps:
        with np.errstate(all="ignore"):
            loss = float(np.mean(hooks.query_losses(tasks, curve[int(s)], init.scaling)))
        errors.append(loss if math.isfinite(loss) else math.inf)
    return errors


def check_adaptation(loss_before, loss_after, lr, stacklevel=4):
    """Fail loudly when adaptation diverged instead of returning garbage predictions.

    Non-finite losses raise; a support loss that grew (gradient descent with a
    step size above the curvature's limit) warns, naming the step size.  The
    losses are tensors, arrays or floats, one value per task.
    """
    if torch.is_tensor(loss_before):
        loss_before = loss_before.detach().cpu().numpy()
    if torch.is_tensor(loss_after):
        loss_after = loss_after.detach().cpu().numpy()
    loss_before, loss_after = np.atleast_1d(loss_before), np.atleast_1d(loss_after)
    if not bool(np.isfinite(loss_after).all()):
        raise FloatingPointError(
            f"Adaptation diverged (non-finite loss on the training points); "
            f"adapt_lr={lr} is likely too large."
        )
    grew = loss_after > 1.5 * loss_before + 1e-6
    if bool(grew.any()):
        n_grew, n_tasks = int(grew.sum()), grew.size
        which = "the task" if n_tasks == 1 else f"{n_grew} of {n_tasks} tasks"
        warnings.warn(
            f"Adaptation increased the loss on the training points of {which} "
            f"(step size adapt_lr={lr} is likely too large for this initialisation; "
            "a longer meta_fit or a smaller adapt_lr helps).",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )


# Halvings of an 'auto' adaptation step size on a task whose support loss
# diverged or grew, before falling back to the meta-learned weights (0 steps).
ADAPT_BACKOFFS = 8


def adaptation_failed(loss_before, loss_after):
    """Per task: the support loss became non-finite or grew (the step was too large).

    Tensors give a boolean tensor; floats (one task, from the lean engine) a
    boolean numpy array, without a torch call in ``fit``'s hot path.
    """
    if torch.is_tensor(loss_after):
        before = torch.as_tensor(loss_before)
        return ~torch.isfinite(loss_after) | (loss_after > 1.5 * before + 1e-6)
    if isinstance(loss_after, float) and isinstance(loss_before, float):
        # One task: plain floats, a few times cheaper than numpy's scalar machinery.
        return np.bool_(not math.isfinite(loss_after) or loss_after > 1.5 * loss_before + 1e-6)
    before, after = np.asarray(loss_before), np.asarray(loss_after)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(after) | (after > 1.5 * before + 1e-6)


def backoff_rates(est, lr):
    """The step sizes to try in turn: ``lr``, then halvings with 'auto', then 0 (no step)."""
    if not is_auto(est.adapt_lr):
        return [lr]
    return [lr * 0.5**k for k in range(ADAPT_BACKOFFS + 1)] + [0.0]
