"""Fingerprints of a ``meta_fit`` run: what must not change for a checkpoint to be resumed.

The parameters that decide what ``meta_fit`` computes, and the tasks it draws
from, are described as strings that are equal across processes exactly when
the values are (:func:`fingerprint_params`, :func:`fingerprint_tasks`).
"""

import functools
import hashlib
import inspect
import numbers

import numpy as np

# Parameters that do not change what meta_fit computes, ignored when resuming.
_NOT_FINGERPRINTED = {
    "verbose",
    "checkpoint_path",
    "checkpoint_interval",
    "warm_start",
    "device",
    "n_threads",
    "callbacks",
}


# The entry of a checkpoint's task description saying where the tasks were drawn,
# "host" or "device" (absent: host).  A sampler's own draw_on is left out of its
# description: "auto" draws on the host or the device by the run's device, and
# what must match on resuming is where the tasks were drawn, not the setting.
DRAWS_KEY = "draws"
_NOT_DESCRIBED = {"draw_on"}

# What a sampler seeded with a generator is described as.  The generator gives
# the run its task seed when meta_fit starts, and a checkpoint cannot hold its
# state: a resumed run would draw other tasks (see unsaved_generator).
UNSAVED_STATE = "state not saved"


def _array_description(a):
    a = np.asarray(a)
    if a.dtype.kind in "iu":  # index arrays: the same digest whatever the platform's intp
        a = a.astype(np.int64)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    if a.dtype.kind == "O":  # object arrays hold pointers: hash their values instead
        h.update(repr(a.tolist()).encode())
    else:
        h.update(np.ascontiguousarray(a).tobytes())
    return f"{a.dtype} array of shape {a.shape}, sha256 {h.hexdigest()[:16]}"


def _describe(value):
    """A description of ``value`` that is equal across processes iff the value is."""
    if isinstance(value, (np.random.Generator, np.random.RandomState)):
        return type(value).__name__  # only its type: no generator state is saved or compared
    if isinstance(value, np.ndarray) or hasattr(value, "__array__") and not callable(value):
        return _array_description(value)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in sorted(value.items())) + "}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    text = repr(value)
    if " at 0x" in text:  # the default repr: an address, not the value
        return _type_name(value)
    if len(text) > 200:
        return f"{type(value).__name__}, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return text


def fingerprint_params(est):
    """The parameters that decide what ``meta_fit`` computes, as strings.

    Parameters
    ----------
    est : BaseReptile
        The estimator.

    Returns
    -------
    fingerprint : dict of str to str
        A description of every such parameter.
    """
    out = {}
    for name, value in sorted(est.get_params(deep=False).items()):
        if name in _NOT_FINGERPRINTED:
            continue
        if name == "random_state" and not isinstance(value, numbers.Integral):
            continue  # the checkpoint holds the run's seed itself
        out[name] = _describe(value.tolist() if isinstance(value, np.ndarray) else value)
    return out


def _type_name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _describe_object(obj):
    out = {"sampler": _type_name(obj)}
    seen = set()
    for name, value in sorted(vars(obj).items()):
        if name == "random_state" and not isinstance(value, numbers.Integral):
            if value is not None:  # None: the run's seed seeds it, and the checkpoint has it
                out[name] = f"{type(value).__name__} ({UNSAVED_STATE})"
            continue
        if name in _NOT_DESCRIBED:
            continue
        if isinstance(value, np.ndarray):
            # A sampler may keep an array and views of it: hash each object once.
            if id(value) in seen:
                continue
            seen.add(id(value))
        out[name] = _describe(value)
    return out


def fingerprint_tasks(stream):
    """A description of the tasks of a :class:`~skreptile.tasks._base.TaskSource`.

    * a finite sequence of tasks: their number and a digest of their arrays;
    * an object with a ``fingerprint()`` method: what it returns (a string);
    * a :class:`~skreptile.tasks.TaskSampler`, or another callable object with
      attributes: its class and a description of every attribute, arrays by
      digest (the data of :class:`~skreptile.GroupTaskSampler` and
      :class:`~skreptile.ClassTaskSampler`), seeds other than integers left out;
    * a :func:`functools.partial`: its function's name and its arguments;
    * a plain function: its qualified name only.  What it does cannot be
      fingerprinted: resuming with a changed function of the same name is not
      detected.

    Parameters
    ----------
    stream : TaskSource
        The source of the tasks given to ``meta_fit``.

    Returns
    -------
    fingerprint : dict of str to str
        Descriptions that differ when the tasks do.
    """
    if stream.kind == "sequence":
        h = hashlib.sha256()
        for X, y in stream.tasks:
            for a in (X, y):
                h.update(f"{a.shape}".encode())
                h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return {"sampler": f"a sequence of {len(stream.tasks)} tasks", "data": h.hexdigest()}
    sampler = stream.sampler
    while hasattr(sampler, "inner"):  # the classifier's label-encoding wrappers
        sampler = sampler.inner
    hook = getattr(sampler, "fingerprint", None)
    if callable(hook):
        return {"sampler": _type_name(sampler), "fingerprint": str(hook())}
    if isinstance(sampler, functools.partial):
        return {
            "sampler": f"partial of {_describe(sampler.func)}",
            "args": _describe(sampler.args),
            "keywords": _describe(sampler.keywords),
        }
    if inspect.isroutine(sampler):  # functions, methods, builtins: only the name is known
        return {"sampler": f"function {_describe(sampler)}"}
    if hasattr(sampler, "__dict__"):
        return _describe_object(sampler)
    return {"sampler": _type_name(sampler)}


def digest_arrays(arrays):
    """SHA-256 of the values, types and shapes of ``arrays``.

    Parameters
    ----------
    arrays : iterable of array-like
        The arrays.

    Returns
    -------
    digest : str
        Hexadecimal digest.
    """
    h = hashlib.sha256()
    for a in arrays:
        h.update(_array_description(a).encode())
    return h.hexdigest()


def differences(then, now):
    """``"key: <then> then, <now> now"`` for every key whose descriptions differ.

    When the ``"sampler"`` entries differ, only that one is given: the other
    entries describe different things.

    Parameters
    ----------
    then, now : dict of str to str
        Fingerprints.

    Returns
    -------
    details : list of str
        One entry per differing key, sorted by key.
    """
    keys = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
    if "sampler" in keys:
        keys = ["sampler"]
    return [f"{k}: {then.get(k, '(absent)')} then, {now.get(k, '(absent)')} now" for k in keys]


def unsaved_generator(fingerprint):
    """Whether tasks of ``fingerprint`` come from a generator whose state no checkpoint holds.

    Parameters
    ----------
    fingerprint : dict of str to str
        A :func:`fingerprint_tasks` description.

    Returns
    -------
    unsaved : bool
    """
    return any(UNSAVED_STATE in v for v in fingerprint.values())


def unsaved_generator_advice():
    """How to make a run whose sampler holds a generator resumable."""
    return (
        "its task sampler is seeded with a numpy Generator or RandomState, whose state a "
        "checkpoint cannot hold, so a resumed run would draw other tasks than the "
        "interrupted one. Seed the sampler with an integer, or leave its random_state None "
        "(the estimator's random_state then seeds it), to make the run resumable"
    )
