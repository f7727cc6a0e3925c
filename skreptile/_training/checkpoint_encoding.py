"""The layout of a checkpoint archive: the header's encoding, and the members it may hold.

See :mod:`skreptile._training.checkpoint` for the format.
"""

import os
import re

import numpy as np

# The archive's members: the header and the arrays it names.
_MEMBER = re.compile(r"__header__|a[0-9]+")


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


def referenced(obj):
    """The names of the archive members that the encoded header ``obj`` refers to."""
    if isinstance(obj, dict):
        if isinstance(obj.get("__nd__"), str):
            return {obj["__nd__"]}
        return set().union(*(referenced(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(referenced(v) for v in obj))
    return set()


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


def check_members(path, data):
    """Refuse, before reading any, members that are not ours or declare more than the file holds."""
    size = os.path.getsize(path)
    if "__header__" not in data.files:
        raise ValueError("no __header__ in the archive")
    for info in data.zip.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if not _MEMBER.fullmatch(name):
            raise ValueError(f"a member {info.filename!r} that is not a checkpoint's")
        if info.file_size > size:  # checkpoints are stored uncompressed
            raise ValueError(
                f"the member {info.filename!r} declares {info.file_size} bytes, more than "
                f"the {size} bytes of the file"
            )
