"""The parameters both estimators share and the values each may take (scikit-learn's validation)."""

import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._engine import ACTIVATIONS
from .._engine.device import MAX_THREADS

# Upper bounds of the integers that size memory or time.  Far above any useful
# value, they turn a typo (an extra zero, 10**6 threads) into an error at
# meta_fit instead of an exhausted memory or a crashed process.
MAX_WIDTH = 2**15  # one layer of 2**15 x 2**15 float32 weights: 4 GiB
MAX_LAYERS = 1000
MAX_TASKS = 2**16  # tasks of one meta-batch
MAX_ROWS = 2**24  # rows of a minibatch or a support set
MAX_STEPS = 10**5  # inner or adaptation steps of one task
MAX_ITER = 10**9  # meta-iterations


class StrictInterval(Interval):
    """scikit-learn's ``Interval``, refusing booleans.

    ``True`` is an ``Integral`` to Python, so the plain interval takes
    ``inner_lr=True`` as a step size of 1.0 and ``n_meta_iter=True`` as one
    iteration: almost certainly a mistake, never the intent.
    """

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


def _count(left, right):
    return StrictInterval(Integral, left, right, closed="both" if right is not None else "left")


def _positive_real():
    return StrictInterval(Real, 0, None, closed="neither")


PARAMETER_CONSTRAINTS = {
    "hidden_layer_sizes": ["array-like", _count(1, MAX_WIDTH)],
    "activation": [StrOptions(set(ACTIVATIONS))],
    "module": [callable, None],
    "n_meta_iter": [_count(0, MAX_ITER)],
    "meta_batch_size": [_count(1, MAX_TASKS)],
    "meta_lr": [_positive_real()],
    "meta_lr_schedule": [StrOptions({"linear", "constant"})],
    "inner_steps": [_count(1, MAX_STEPS)],
    "inner_batch_size": [_count(1, MAX_ROWS), None],
    "inner_lr": [_positive_real()],
    "inner_optimizer": [StrOptions({"sgd", "adam"})],
    "adapt_steps": [_count(0, MAX_STEPS), StrOptions({"auto"})],
    "adapt_lr": [_positive_real(), StrOptions({"auto"}), None],
    "standardize": ["boolean"],
    "transductive": ["boolean"],
    "device": [str, torch.device],
    "n_threads": [_count(1, MAX_THREADS), StrOptions({"auto"}), None],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "early_stopping": ["boolean", StrOptions({"auto"})],
    "validation_fraction": [StrictInterval(Real, 0, 1, closed="left"), None],
    "n_support": [_count(1, MAX_ROWS), None],
    "tol": [StrictInterval(Real, 0, 1, closed="left")],
    "n_iter_no_change": [_count(1, None)],
    "monitor_interval": [_count(1, None)],
    "warm_start": ["boolean"],
    "checkpoint_path": [str, os.PathLike, None],
    "checkpoint_interval": [_count(1, None)],
    "callbacks": [list, None],
}


def hidden_sizes(value):
    """``hidden_layer_sizes`` as a tuple of ints, or a ``ValueError`` that says what is wrong.

    scikit-learn's constraints check the array-like as a whole, not its
    entries: a width of 16.7 would be truncated to 16, and ``True`` taken as 1.
    """
    sizes = (value,) if isinstance(value, Integral) and not isinstance(value, bool) else value
    try:
        sizes = tuple(sizes)
    except TypeError:
        sizes = None
    ok = sizes is not None and len(sizes) <= MAX_LAYERS
    ok = ok and all(
        isinstance(s, Integral) and not isinstance(s, (bool, np.bool_)) and 1 <= s <= MAX_WIDTH
        for s in sizes
    )
    if not ok:
        raise ValueError(
            f"hidden_layer_sizes must be an int or a sequence of at most {MAX_LAYERS} ints, each "
            f"from 1 to {MAX_WIDTH} (the width of a hidden layer), got {value!r}; "
            "e.g. hidden_layer_sizes=(64, 64)."
        )
    return tuple(int(s) for s in sizes)
