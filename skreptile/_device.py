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


_TINY = torch.tensor([1e-30], dtype=torch.float32)


def _flush_denormal_enabled():
    # torch has no getter: a denormal product comes out as zero when flushing is on.
    return bool(torch.mul(_TINY, 1e-10).item() == 0.0)


# Below this many multiply-adds per matrix product, tiny-tensor code runs on one
# CPU thread.  On a quiet 2-core machine a second thread saves about a quarter
# from 2^20 multiply-adds up, but when another process holds a core, OpenMP's
# waiting makes it up to ten times slower (both measured in benchmarks/): only
# products large enough to amortise that risk get every thread.
SINGLE_THREAD_WORK = 1 << 23


@contextlib.contextmanager
def fast_cpu_math(device=None, work=0):
    """Fast CPU arithmetic for the duration of a computation.

    * Denormal floats are flushed to zero: tanh networks trained for long drift
      into denormal numbers, which the CPU handles tens of times slower than
      normal ones, and flushing them changes no result that matters.
    * Products smaller than ``SINGLE_THREAD_WORK`` multiply-adds (``work``) run
      on one thread: for small matrices, waking and joining a second thread
      costs about what it saves, and far more when another process holds a core.

    The caller's settings are restored afterwards.
    """
    was_enabled = _flush_denormal_enabled()
    threads = torch.get_num_threads()
    on_cpu = device is None or torch.device(device).type == "cpu"
    torch.set_flush_denormal(True)
    if on_cpu and work < SINGLE_THREAD_WORK and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_enabled)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
