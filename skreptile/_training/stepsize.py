"""Step sizes that follow the data: automatic back-off of the inner step size.

Gradient descent diverges once its step size exceeds about twice the inverse
of the loss curvature, and that curvature depends on the data (the number,
correlation and tails of the features) and on the network; no fixed step size
is safe on every table.  An estimate of the curvature at the initial weights
does not tell safe from unsafe steps (the sine demo's initial curvature is as
high as that of tables on which the default diverges, yet the default is
stable there: the curvature changes as meta-training moves the weights), so
skreptile watches the run instead: the weights are checked every 100
meta-iterations, and a fresh run whose weights stop being finite restarts
from its initial weights with the inner step size halved, at most
``MAX_BACKOFFS`` times.  ``inner_lr_`` is the step size the run ended with,
and ``step_size_info_`` records the halvings.  The halvings are part of the
run's state: a checkpoint holds them, and a resumed run or a warm start of a
backed-off run continues with the smaller step size (:func:`carried_backoffs`).  The adaptation step size
(``adapt_lr='auto'``) is then chosen on held-out tasks among multiples of
``inner_lr_`` (see :mod:`skreptile._training.selftune`), so it follows too.
"""

import math

MAX_BACKOFFS = 6


def carried_backoffs(record, inner_lr):
    """The halvings a warm start continues with: those of the run it continues.

    The original step size diverged in that run, so a warm start trains with
    the step size the run ended with, ``step_size_info_["inner_lr"]``, as a
    checkpoint's resume does.  When ``inner_lr`` was changed since, the
    user's new value is taken as it is.

    Parameters
    ----------
    record : dict or None
        The estimator's ``step_size_info_``.
    inner_lr : float
        The estimator's ``inner_lr`` parameter now.

    Returns
    -------
    backoffs : int
    """
    if not record:
        return 0
    original = record["inner_lr"] / record["factor"]
    if not math.isclose(original, float(inner_lr), rel_tol=1e-9):
        return 0
    return int(record["backoffs"])
