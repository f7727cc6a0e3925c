"""The header of a checkpoint of format 3: every key and the test its value must pass.

:data:`HEADER_SCHEMA` maps each key of the header (described in
:mod:`skreptile._training.checkpoint`) to a predicate on its decoded value;
:func:`~skreptile._training.checkpoint.load_run_state` refuses a file whose
header lacks a key or holds a value that fails its test.
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


#: The keys of a format-3 header and a test of the type of each value.
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
}
