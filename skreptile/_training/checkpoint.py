"""The checkpoint file of ``meta_fit``: its format, reading, writing and fingerprints.

A checkpoint is a ``.npz`` archive (:func:`numpy.savez`, uncompressed) of
plain arrays, loadable with ``allow_pickle=False``:

* ``__header__``: a 0-d unicode array holding a JSON object, the state of the
  run.  Nested values are JSON values, except that an array is stored as
  ``{"__nd__": "a<k>"}``, naming the archive member ``a<k>`` that holds it,
  and a tuple as ``{"__tuple__": [...]}``;
* ``a0``, ``a1``, ...: the arrays the header refers to.

The header of format :data:`CHECKPOINT_FORMAT` (4) has the keys of
:data:`HEADER_SCHEMA`:

``format``
    The integer 4.  Earlier formats (1: no task fingerprints; 2: generator
    states instead of keyed tasks; 3: no step-size back-off) are refused, not
    guessed at.
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
``backoffs``, ``fresh``
    The halvings of ``inner_lr`` the run trains with
    (:mod:`skreptile._training.stepsize`), and whether it began from the
    initial weights (a divergence then restarts it with smaller steps; a
    warm start's does not).
``finished``
    Whether the run completed: the checkpoint is kept after a successful
    ``meta_fit``, and resuming it trains no further.

No checkpoint holds NaN or infinite weights: the weights are checked before
every write, and a file that holds such weights, or impossible values (an
iteration beyond ``n_meta_iter``, a scale that is not positive), is refused
with the file's name.  An archive with members its header does not name, or
declaring more data than the file holds, is refused before any is read.

Files are written to a temporary file in the checkpoint's directory, named
``.skreptile-ckpt-<file name>.<random>.tmp``, flushed to disk and moved into
place with :func:`os.replace`, so that a crash while writing leaves the
previous checkpoint intact (a disk thus needs room for two checkpoints while
one is written; a full disk's error names the file and the room needed).  A temporary file survives only a process killed
while writing; :func:`check_checkpoint_path` removes those of its checkpoint
when ``meta_fit`` starts.  Every file that cannot be used (not an archive,
truncated, bad JSON, missing or ill-typed keys, weights of the wrong size)
raises a :class:`ValueError` naming the file and what to do.
"""

import errno
import hashlib
import json
import os
import re
import tempfile

import numpy as np

from .checkpoint_encoding import check_members, decode, encode, referenced
from .checkpoint_schema import (
    HEADER_SCHEMA,
    is_int,
    non_finite_weights,
    run_problems,
    value_problems,
)
from .stepsize import MAX_BACKOFFS

CHECKPOINT_FORMAT = 4


_TEMP_PREFIX = ".skreptile-ckpt-"
_TEMP_SUFFIX = ".tmp"
# File names this long get a hashed temporary name, to stay within NAME_MAX.
_MAX_NAME_IN_TEMP = 120
# Characters of tempfile's random part: no dot, so that the temporary files of
# "a" and of "a.b" cannot be taken for each other.
_RANDOM_PART = r"[A-Za-z0-9_]+"

_ADVICE = "delete it or choose another checkpoint_path to start afresh"


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
    header = np.array(json.dumps(encode(state, arrays)))
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=directory)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __header__=header, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, directory, header, arrays, exc) from exc
        raise


def _no_space(path, directory, header, arrays, exc):
    """The error of a full disk: the file, and the room one checkpoint needs."""
    # The .npy headers and zip entries add well under 1 kB a member.
    needed = header.nbytes + sum(a.nbytes for a in arrays.values()) + 1024 * (len(arrays) + 1)
    return OSError(
        exc.errno,
        f"No space left to write the checkpoint {os.fspath(path)!r} ({exc.strerror}): it "
        f"needs about {needed / 1e6:.3g} MB free in {directory!r}, besides the previous "
        "checkpoint, which stays until the new one is complete. Free that much space, or "
        "choose a checkpoint_path on another disk.",
    )


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
            check_members(path, data)
            header = data["__header__"]
            if header.dtype.kind != "U" or header.ndim != 0:
                raise ValueError("__header__ is not a string")
            encoded = json.loads(str(header))
            names = referenced(encoded)
            extra = sorted(set(data.files) - names - {"__header__"})
            if extra:  # never read: an added member may be of any size
                raise ValueError(f"members the header does not name: {', '.join(extra[:5])}")
            arrays = {k: data[k] for k in names}
        state = decode(encoded, arrays)
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
    if os.path.exists(path) and not os.path.isfile(path):
        # Never advise deleting it: it is not a file a checkpoint could have made.
        raise ValueError(
            f"checkpoint_path={shown!r} exists and is not a regular file (a device, a pipe "
            "or a socket); checkpoints are files that meta_fit creates and replaces: choose "
            "a path such as 'meta.ckpt' in a writable directory."
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
        if is_int(version) and 0 < version < CHECKPOINT_FORMAT:
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
    diverged = non_finite_weights(state)
    if diverged:
        raise ValueError(
            f"The checkpoint {path!r} holds NaN or infinite weights ({', '.join(diverged)}): "
            "it was written by a run that diverged (skreptile before format "
            f"{CHECKPOINT_FORMAT} wrote checkpoints before checking the weights), or damaged, "
            f"and nothing can be resumed from it; {_ADVICE}."
        )
    problems = value_problems(state, MAX_BACKOFFS)
    if problems:
        raise malformed(path, "; ".join(problems))
    n_features, n_outputs = state["signature"]
    if [len(a) for a in state["scaling"]] != [n_features, n_features, n_outputs, n_outputs]:
        raise malformed(path, "scaling statistics of the wrong sizes for the signature")
    names = state["feature_names"]
    if names is not None and len(names) != n_features:
        raise malformed(path, "feature names of the wrong number for the signature")
    return state


def check_against_run(path, state, settings):
    """Refuse a checkpoint whose counters or shapes cannot belong to a run of ``settings``.

    Parameters
    ----------
    path : str
        The checkpoint file.
    state : dict
        Its state, from :func:`load_run_state`, with the run's parameters.
    settings : Settings
        The parameters of the ``meta_fit`` that resumes it.

    Raises
    ------
    ValueError
        If, say, its iteration is beyond ``n_meta_iter``.
    """
    problems = run_problems(state, settings)
    if problems:
        raise malformed(path, "; ".join(problems))


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
