"""The checkpoint file of ``meta_fit``: its format, reading, writing and fingerprints.

A checkpoint is a ``.npz`` archive (:func:`numpy.savez`, uncompressed) of
plain arrays, loadable with ``allow_pickle=False``:

* ``__header__``: a 0-d unicode array holding a JSON object, the state of the
  run.  Nested values are JSON values, except that an array is stored as
  ``{"__nd__": "a<k>"}``, naming the archive member ``a<k>`` that holds it,
  and a tuple as ``{"__tuple__": [...]}``;
* ``a0``, ``a1``, ...: the arrays the header refers to.

The header of format :data:`CHECKPOINT_FORMAT` (3) has the keys of
:data:`HEADER_SCHEMA`:

``format``
    The integer 3.  Earlier formats (1: no task fingerprints; 2: generator
    states instead of keyed tasks) are refused, not guessed at.
``params``
    ``{name: description}`` of the estimator parameters that decide what
    ``meta_fit`` computes (:func:`fingerprint_params`).
``tasks``
    ``{name: description}`` identifying the tasks (:func:`fingerprint_tasks`).
``validation_digest``
    SHA-256 of the validation tasks' arrays, or null without validation.
``seed``
    The run's seed: tasks are keyed by it and the iteration, so no generator
    state is stored (a run with ``random_state=None`` resumes with it).
``theta``
    The network's flat weights after ``iteration`` meta-iterations.
``scaling``
    ``(x_mean, x_scale, y_mean, y_scale)``, 1-D arrays.
``signature``
    ``[n_features, n_outputs]`` of the tasks.
``feature_names``
    The tasks' column names, or null.
``family``
    What the estimator family learned about the tasks (the classifier's
    ``input_shape``).
``optimizer``
    Null for SGD; Adam's ``{"v": (n_slots, n_params) array, "t": steps}``.
``iteration``, ``last_record``, ``bad_rounds``
    Counters: meta-iterations done over the whole run, the last recorded in
    the history, and validation checks without improvement.
``loss_sums``
    The two loss sums of the completed meta-iterations since the last record.
``history``
    ``{key: [values]}``, the history so far.
``best``
    Null, or ``{"loss", "iteration", "theta"}`` of the best validation.

Files are written to a temporary file in the checkpoint's directory, named
``.skreptile-ckpt-<file name>.<random>.tmp``, flushed to disk and moved into
place with :func:`os.replace`, so that a crash while writing leaves the
previous checkpoint intact.  A temporary file survives only a process killed
while writing; :func:`check_checkpoint_path` removes those of its checkpoint
when ``meta_fit`` starts.  Every file that cannot be used (not an archive,
truncated, bad JSON, missing or ill-typed keys, weights of the wrong size)
raises a :class:`ValueError` naming the file and what to do.
"""

import hashlib
import json
import numbers
import os
import re
import tempfile

import numpy as np

CHECKPOINT_FORMAT = 3


_TEMP_PREFIX = ".skreptile-ckpt-"
_TEMP_SUFFIX = ".tmp"
# File names this long get a hashed temporary name, to stay within NAME_MAX.
_MAX_NAME_IN_TEMP = 120
# Characters of tempfile's random part: no dot, so that the temporary files of
# "a" and of "a.b" cannot be taken for each other.
_RANDOM_PART = r"[A-Za-z0-9_]+"

_ADVICE = "delete it or choose another checkpoint_path to start afresh"


# --------------------------------------------------------------- encoding
def encode(obj, arrays):
    """A JSON-able form of ``obj``, with its arrays moved into ``arrays``."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__nd__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        return {str(k): encode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"Cannot store {type(obj).__name__} in a checkpoint.")


def decode(obj, arrays):
    """The inverse of :func:`encode`; raises KeyError or TypeError on a malformed header."""
    if isinstance(obj, dict):
        if "__nd__" in obj:
            return arrays[obj["__nd__"]]
        if "__tuple__" in obj:
            return tuple(decode(v, arrays) for v in obj["__tuple__"])
        return {k: decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, arrays) for v in obj]
    return obj


# ------------------------------------------------------------------ files
def _temp_prefix(path):
    name = os.path.basename(os.path.abspath(path))
    if len(name) > _MAX_NAME_IN_TEMP:
        name = hashlib.sha256(name.encode()).hexdigest()[:32]
    return f"{_TEMP_PREFIX}{name}."


def _temp_files(path):
    """The temporary files of checkpoint ``path`` in its directory (only ours)."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(_temp_prefix(path)) + _RANDOM_PART + re.escape(_TEMP_SUFFIX))
    return [os.path.join(directory, f) for f in os.listdir(directory) if pattern.fullmatch(f)]


def save_checkpoint(path, state):
    """Write ``state`` (nested dicts, lists, tuples, arrays, scalars) to ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file.
    state : dict
        What to store.
    """
    arrays = {}
    header = json.dumps(encode(state, arrays))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __header__=np.array(header), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    """Read a file written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file.

    Returns
    -------
    state : dict
        The stored state, not validated (see :func:`load_run_state`).

    Raises
    ------
    ValueError
        If the file is not such a file (not an ``.npz`` archive, truncated,
        without a JSON header, or a header naming missing arrays).
    """
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array in .npy format, not an .npz archive")
        with data:
            if "__header__" not in data.files:
                raise ValueError("no __header__ in the archive")
            header = data["__header__"]
            if header.dtype.kind != "U" or header.ndim != 0:
                raise ValueError("__header__ is not a string")
            arrays = {k: data[k] for k in data.files if k != "__header__"}
        state = decode(json.loads(str(header)), arrays)
    except Exception as exc:  # whatever a damaged file raises: zip, JSON, numpy errors
        raise ValueError(
            f"checkpoint_path={os.fspath(path)!r} exists but is not a readable skreptile "
            f"checkpoint ({type(exc).__name__}: {exc}); {_ADVICE}."
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint_path={os.fspath(path)!r} exists but is not a readable skreptile "
            f"checkpoint (its header is not a JSON object); {_ADVICE}."
        )
    return state


def check_checkpoint_path(path):
    """Check, before any training, that checkpoints can be written to ``path``.

    Also removes this checkpoint's temporary files left by a process killed
    while writing.  Any such file found when ``meta_fit`` starts is stale: a
    temporary file lives only while a checkpoint is written, and two
    ``meta_fit`` calls sharing one ``checkpoint_path`` at once are not
    supported (they would overwrite each other's checkpoints anyway).  Other
    files, including other checkpoints' temporary files, are left alone.

    Parameters
    ----------
    path : str or path-like
        The ``checkpoint_path`` parameter.

    Raises
    ------
    ValueError
        If ``path`` is a directory, its directory does not exist, or no file
        can be created in its directory.
    """
    shown = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(
            f"checkpoint_path={shown!r} is a directory; it must name a file, such as "
            f"{os.path.join(shown, 'meta.ckpt')!r}."
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            f"checkpoint_path={shown!r}: the directory {directory!r} does not exist; create it "
            "first (os.makedirs(directory, exist_ok=True)) or choose another checkpoint_path."
        )
    try:
        for stale in _temp_files(path):
            os.remove(stale)
        # Found now rather than at the first checkpoint, which may come hours
        # later or only when an interruption should have saved the work.
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(
            f"checkpoint_path={shown!r}: cannot write files in {directory!r} "
            f"({exc.strerror or exc}); choose a checkpoint_path in a writable directory."
        ) from exc


# ------------------------------------------------------------ validation
def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_str_dict(v):
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _is_vector(v):
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "fiu"


def _is_counter(v):
    return _is_int(v) and v >= 0


def _is_scaling(v):
    return isinstance(v, (tuple, list)) and len(v) == 4 and all(_is_vector(a) for a in v)


def _is_signature(v):
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(a) and a > 0 for a in v)


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
    "format": _is_int,
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


def malformed(path, what):
    """The error for a checkpoint file ``path`` that has the defect ``what``.

    Parameters
    ----------
    path : str
        The checkpoint file.
    what : str
        What is wrong with it.

    Returns
    -------
    error : ValueError
        The error to raise.
    """
    return ValueError(
        f"The checkpoint {path!r} is malformed ({what}): it was not written by this version "
        f"of skreptile's meta_fit, or was edited or damaged; {_ADVICE}."
    )


def load_run_state(path):
    """Read a ``meta_fit`` checkpoint and check its header against :data:`HEADER_SCHEMA`.

    Parameters
    ----------
    path : str
        The checkpoint file.

    Returns
    -------
    state : dict
        The header's state, with every key of :data:`HEADER_SCHEMA` of the
        right type.

    Raises
    ------
    ValueError
        If the file is unreadable, of another format, or malformed.
    """
    state = load_checkpoint(path)
    version = state.get("format")
    if version != CHECKPOINT_FORMAT:
        if _is_int(version) and 0 < version < CHECKPOINT_FORMAT:
            raise ValueError(
                f"The checkpoint {path!r} was written by an earlier version of skreptile "
                f"(checkpoint format {version}; this version reads format {CHECKPOINT_FORMAT}) "
                f"and cannot be resumed; {_ADVICE}."
            )
        raise malformed(path, f"format {version!r}, not {CHECKPOINT_FORMAT}")
    missing = [k for k in HEADER_SCHEMA if k not in state]
    if missing:
        raise malformed(path, "missing " + ", ".join(missing))
    wrong = [k for k, ok in HEADER_SCHEMA.items() if not ok(state[k])]
    if wrong:
        raise malformed(path, "wrong type or value of " + ", ".join(wrong))
    if state["last_record"] > state["iteration"]:
        raise malformed(path, "inconsistent iteration counters")
    n_features, n_outputs = state["signature"]
    if [len(a) for a in state["scaling"]] != [n_features, n_features, n_outputs, n_outputs]:
        raise malformed(path, "scaling statistics of the wrong sizes for the signature")
    names = state["feature_names"]
    if names is not None and len(names) != n_features:
        raise malformed(path, "feature names of the wrong number for the signature")
    return state


def check_weights(path, state, n_params):
    """Check that the checkpoint's weights fit a network of ``n_params`` weights.

    Parameters
    ----------
    path : str
        The checkpoint file.
    state : dict
        Its state, from :func:`load_run_state`.
    n_params : int
        Number of weights of the network ``meta_fit`` built.

    Raises
    ------
    ValueError
        If ``theta`` (or the best validated weights) has another length.
    """
    optimizer = state["optimizer"]
    for name, theta in (
        ("theta", state["theta"]),
        ("best theta", (state["best"] or {}).get("theta")),
        ("the optimiser's state", None if optimizer is None else optimizer["v"][0]),
    ):
        if theta is not None and len(theta) != n_params:
            raise malformed(
                path, f"{name} has {len(theta)} weights, but the network has {n_params}"
            )
