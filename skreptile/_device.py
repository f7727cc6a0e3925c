"""Choosing the torch device and keeping CPU arithmetic fast."""

import contextlib

import torch


def resolve_device(device):
    """Turn the ``device`` parameter into an available :class:`torch.device`.

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU.  Anything else is
    passed to :class:`torch.device`; a device that is not available raises a
    ``ValueError`` that says so (at ``fit`` or ``meta_fit``, never earlier).
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are available."
            )
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={device!r} was requested but MPS is not available.")
    elif resolved.type != "cpu":
        raise ValueError(
            f"device={device!r}: only 'cpu', 'cuda[:N]', 'mps' and 'auto' are supported."
        )
    return resolved


def _flush_denormal_enabled():
    # torch has no getter: a denormal product comes out as zero when flushing is on.
    tiny = torch.tensor([1e-30], dtype=torch.float32)
    return bool((tiny * 1e-10).item() == 0.0)


@contextlib.contextmanager
def fast_cpu_math():
    """Flush denormal floats to zero for the duration of a computation.

    Tanh networks trained for long drift into denormal numbers, which the CPU
    handles tens of times slower than normal ones.  Flushing them changes no
    result that matters.  The caller's setting is restored afterwards.
    """
    was_enabled = _flush_denormal_enabled()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_enabled)
