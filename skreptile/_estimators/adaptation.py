"""How many steps and what step size ``fit`` and held-out tasks adapt with.

From the estimator's parameters (``adapt_steps``, ``adapt_lr``, ``inner_lr``)
and what ``meta_fit`` chose (``inner_lr_``, ``adapt_steps_``, ``adapt_lr_``,
``adaptation_by_support_``), given as the mapping ``learned`` of the
estimator's attributes.
"""

import numpy as np

from .._training import selftune as _selftune


def fixed_adapt_lr(adapt_lr, inner_lr, learned):
    """``adapt_lr`` as given, None meaning the (effective) inner step size."""
    if adapt_lr is None:
        return learned.get("inner_lr_", inner_lr)
    return adapt_lr


def support_size(Y, shots_per_class):
    """The support size ``'auto'`` adaptation is chosen by: rows, or examples per class.

    ``Y`` holds the encoded targets of a support set (one-hot for classes);
    a class counts when some row has it.
    """
    if not shots_per_class:
        return len(Y)
    n_classes = int((np.asarray(Y).reshape(len(Y), -1) > 0).any(axis=0).sum())
    return len(Y) / max(n_classes, 1)


def choice_for(learned, n_support):
    """``(adapt_steps, adapt_lr)`` that ``meta_fit`` chose for ``n_support`` rows, or None.

    (Examples per class, possibly fractional, for classification.)

    The choice of the support size nearest ``n_support`` on a log scale,
    when ``meta_fit`` chose one per size (``adaptation_by_support_``).
    """
    rows = learned.get("adaptation_by_support_")
    if rows is None or n_support is None:
        return None
    size, steps, lr = rows[nearest_row(rows[:, 0], n_support)]
    return int(steps), float(lr)


def nearest_row(sizes, n_support):
    """The index of the size in ``sizes`` nearest ``n_support`` on a log scale."""
    distance = np.abs(np.log(sizes) - np.log(max(float(n_support), 1.0)))
    return int(np.argmin(distance))


def adapt_lr_for(adapt_lr, inner_lr, learned, n_support=None):
    """The adaptation step size for ``n_support`` rows: chosen by ``meta_fit`` for ``'auto'``."""
    if _selftune.is_auto(adapt_lr):
        choice = choice_for(learned, n_support)
        if choice is not None:
            return choice[1]
        if "adapt_lr_" in learned:
            return learned["adapt_lr_"]
        return _selftune.MONITOR_LR_FACTOR * learned.get("inner_lr_", inner_lr)
    return fixed_adapt_lr(adapt_lr, inner_lr, learned)


def adapt_steps_for(adapt_steps, learned, n_support=None):
    """The number of adaptation steps for ``n_support`` rows: chosen by ``meta_fit`` for ``'auto'``."""
    if _selftune.is_auto(adapt_steps):
        choice = choice_for(learned, n_support)
        if choice is not None:
            return choice[0]
        return int(learned.get("adapt_steps_", _selftune.DEFAULT_ADAPT_STEPS))
    return int(adapt_steps)
