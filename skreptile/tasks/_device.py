"""What a sampler needs to draw its tasks on the training device.

Where tasks are drawn (``draw_on``) is checked here, and a sampler's data
(a table, a set of images) is copied to a device once and kept there for
every later draw, keyed by the sampler object so that copies of the sampler
(a held-out split, an unpickled one) never share a stale copy, and nothing of
it is pickled or fingerprinted.
"""

import threading
import weakref

DRAW_ON = ("auto", "host", "device")

_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # sampler -> {device: tensors}
_lock = threading.Lock()


def check_draw_on(draw_on, drawable=True, why=""):
    """``draw_on`` checked: one of :data:`DRAW_ON`, and ``"device"`` only where ``drawable``.

    ``why`` says what keeps the sampler's tasks off the device, for the error.
    """
    if not isinstance(draw_on, str) or draw_on not in DRAW_ON:
        raise ValueError(f"draw_on must be one of {DRAW_ON}, got {draw_on!r}.")
    if draw_on == "device" and not drawable:
        raise ValueError(
            f"draw_on='device' is not possible here: {why}. Use draw_on='auto' (which draws "
            "these tasks on the host) or draw_on='host'."
        )
    return draw_on


def on_device(sampler, device, arrays):
    """``arrays()`` as tensors on ``device``, copied once per sampler object and device."""
    import torch

    key = str(torch.device(device))
    with _lock:
        cached = _copies.setdefault(sampler, {}).get(key)
    if cached is None:
        cached = tuple(torch.as_tensor(a).to(device) for a in arrays())
        with _lock:
            cached = _copies[sampler].setdefault(key, cached)
    return cached
