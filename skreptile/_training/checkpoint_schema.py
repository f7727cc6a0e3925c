"""The header of a checkpoint of format 4: every key and the test its value must pass.

:data:`HEADER_SCHEMA` maps each key of the header (described in
:mod:`skreptile._training.checkpoint`) to a predicate on its decoded value;
:func:`~skreptile._training.checkpoint.load_run_state` refuses a file whose
header lacks a key or holds a value that fails its test.  Values of the right
type can still be impossible (a file edited by hand, or damaged):
:func:`value_problems` and :func:`run_problems` name those, so that a
tampered counter or scale is refused rather than resumed ("finished"
untrained, or infinite predictions).
"""

import numbers

import numpy as np


def is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_str_dict(v):
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _is_vector(v):
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "fiu"


def _is_counter(v):
    return is_int(v) and v >= 0


def _is_scaling(v):
    return isinstance(v, (tuple, list)) and len(v) == 4 and all(_is_vector(a) for a in v)


def _is_signature(v):
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(is_int(a) and a > 0 for a in v)


def _is_names(v):
    return v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _is_optimizer(v):
    return v is None or (
        isinstance(v, dict)
        and isinstance(v.get("v"), np.ndarray)
        and v["v"].ndim == 2
        and _is_counter(v.get("t"))
    )


def _is_history(v):
    return (
        isinstance(v, dict)
        and "meta_iter" in v
        and all(isinstance(x, list) and all(_is_number(n) for n in x) for x in v.values())
        and len({len(x) for x in v.values()}) <= 1
    )


def _is_best(v):
    return v is None or (
        isinstance(v, dict)
        and _is_number(v.get("loss"))
        and _is_counter(v.get("iteration"))
        and _is_vector(v.get("theta"))
    )


#: The keys of a format-4 header and a test of the type of each value.
HEADER_SCHEMA = {
    "format": is_int,
    "params": _is_str_dict,
    "tasks": _is_str_dict,
    "validation_digest": lambda v: v is None or isinstance(v, str),
    "seed": _is_counter,
    "theta": _is_vector,
    "scaling": _is_scaling,
    "signature": _is_signature,
    "feature_names": _is_names,
    "family": lambda v: isinstance(v, dict),
    "optimizer": _is_optimizer,
    "iteration": _is_counter,
    "last_record": _is_counter,
    "loss_sums": lambda v: _is_vector(v) and len(v) == 2,
    "history": _is_history,
    "best": _is_best,
    "bad_rounds": _is_counter,
    "backoffs": _is_counter,
    "fresh": lambda v: isinstance(v, bool),
    "finished": lambda v: isinstance(v, bool),
}


def _finite(a):
    return bool(np.isfinite(a).all())


def non_finite_weights(state):
    """The names of the weight arrays of ``state`` that hold NaN or infinity."""
    optimizer = state["optimizer"]
    arrays = (
        ("theta", state["theta"]),
        ("best theta", (state["best"] or {}).get("theta")),
        ("the optimiser's state", None if optimizer is None else optimizer["v"]),
    )
    return [name for name, a in arrays if a is not None and not _finite(a)]


def value_problems(state, max_backoffs):
    """What is impossible in a well-typed header ``state``, as phrases (empty if nothing).

    Parameters
    ----------
    state : dict
        A header that passed :data:`HEADER_SCHEMA`.
    max_backoffs : int
        The most halvings of the inner step size a run makes.

    Returns
    -------
    problems : list of str
    """
    problems = []
    iteration = state["iteration"]
    x_mean, x_scale, y_mean, y_scale = state["scaling"]
    if not all(_finite(a) for a in state["scaling"]):
        problems.append("non-finite scaling statistics")
    elif (x_scale <= 0).any() or (y_scale <= 0).any():
        problems.append("scales that are not positive")
    if state["last_record"] > iteration:
        problems.append("inconsistent iteration counters")
    if any(t > iteration for t in state["history"]["meta_iter"]):
        problems.append("history entries beyond its iteration")
    best = state["best"]
    if best is not None and (best["iteration"] > iteration or np.isnan(best["loss"])):
        problems.append("a best validation beyond its iteration or of NaN loss")
    if np.isnan(state["loss_sums"]).any():
        problems.append("NaN loss sums")
    if state["backoffs"] > max_backoffs:
        problems.append(f"{state['backoffs']} halvings of inner_lr, more than {max_backoffs}")
    return problems


def run_problems(state, settings):
    """What in ``state`` cannot belong to a run of ``settings`` (its parameters match).

    Parameters
    ----------
    state : dict
        A header that passed :func:`value_problems`.
    settings : Settings
        The parameters of the ``meta_fit`` resuming it.

    Returns
    -------
    problems : list of str
    """
    problems = []
    if state["iteration"] > settings.n_meta_iter:
        problems.append(
            f"iteration {state['iteration']}, beyond n_meta_iter={settings.n_meta_iter}"
        )
    optimizer = state["optimizer"]
    if optimizer is not None and optimizer["v"].shape[0] != settings.meta_batch_size:
        problems.append(
            f"an optimiser state of {optimizer['v'].shape[0]} rows for "
            f"meta_batch_size={settings.meta_batch_size}"
        )
    return problems
