"""Choosing the torch device, keeping CPU arithmetic fast, and torch's global state.

Nothing here changes torch's process-wide settings behind the caller's back:
the denormal mode is per thread and restored, the thread count changes only
inside :func:`cpu_threads`, and global generators are seeded only inside
:func:`seeded_global_rng`, which restores them.
"""

import contextlib
import numbers
import threading

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


# A product of more elements than torch's grain size (32768) runs on the
# intra-op pool when there is more than one thread.
_POOL_SIZED = 1 << 16
_pool_started_with = None


def _start_intra_op_pool():
    """Create torch's intra-op worker threads before denormal flushing is switched on.

    A new thread inherits the floating-point mode of the thread that creates
    it, and OpenMP creates its workers on the first parallel operation, keeping
    them for the life of the process.  Were that first operation to run inside
    :func:`fast_cpu_math`, the workers would flush denormals for good, a
    process-wide change that outlives the call.  One parallel operation now,
    with flushing off, creates them with the caller's mode; it is repeated only
    when the thread count changes.
    """
    global _pool_started_with
    threads = torch.get_num_threads()
    if threads > 1 and _pool_started_with != threads:
        torch.zeros(_POOL_SIZED).add_(1.0)
        _pool_started_with = threads


@contextlib.contextmanager
def fast_cpu_math(device=None, work=0):
    """Flush denormal floats to zero, in the calling thread, for one computation.

    tanh networks trained for long drift into denormal numbers, which the CPU
    handles tens of times slower than normal ones; flushing them changes no
    result that matters.  The flag is the CPU's floating-point control register
    (MXCSR on x86, FPCR on ARM), which every OS thread has its own copy of:
    torch's ``set_flush_denormal`` writes the calling thread's
    (``aten/src/ATen/cpu/FlushDenormal.cpp``), so setting and restoring it here
    changes nothing for other threads, and concurrent calls do not interfere.

    Nothing process-wide is changed: in particular torch's thread count is left
    as the caller set it (see :func:`cpu_threads` to choose it).  ``device``
    and ``work`` are accepted for the callers' convenience and not used.
    """
    was_enabled = _flush_denormal_enabled()
    if not was_enabled:
        _start_intra_op_pool()
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was_enabled:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def cpu_threads(n_threads):
    """Run the enclosed code with ``n_threads`` torch CPU threads, then restore the count.

    skreptile never changes torch's thread count by itself: the count is
    process-wide, so changing it from inside ``fit`` or ``predict`` would
    silently affect every other thread of the program.  The small networks of
    few-shot learning often run as fast, or faster, on one thread, and much
    faster when other processes compete for the cores (see
    :doc:`/user_guide/devices`); this context manager pins the count for a
    block of code and restores the previous one when the block exits, even on
    an error.

    Like :func:`torch.set_num_threads`, which it calls, it affects every thread
    of the process while the block runs; do not use it from several threads
    at once with different counts.

    Parameters
    ----------
    n_threads : int
        Number of threads torch uses for intra-op parallelism on the CPU, at
        least 1.

    Yields
    ------
    None

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skreptile import ReptileRegressor, cpu_threads
    >>> before = torch.get_num_threads()
    >>> X = np.linspace(-1, 1, 10)[:, None]
    >>> with cpu_threads(1):
    ...     model = ReptileRegressor(random_state=0, device="cpu").fit(X, X[:, 0] ** 2)
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"n_threads must be an integer, got {n_threads!r}.")
    if n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Serialises skreptile's own uses of torch's global generators (seeding a
# user's module, dropout masks): fork_rng saves and restores the global state,
# and two threads forking at once would restore each other's states.
_GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded_global_rng(seed, device=None):
    """Seed torch's global generator of ``device`` for a block, then restore it.

    For code that can only draw from torch's global generators, such as a
    module's own initialisation or ``torch.nn.Dropout``.  Only the generator of
    ``device`` (the CPU's by default) is seeded, and it is restored afterwards;
    no other device's generator is touched (``torch.manual_seed`` would reseed
    every CUDA device's).  Other threads drawing from the same global generator
    while the block runs would see the seeded stream: skreptile's own blocks
    are serialised, but code of the caller's own threads is not.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    with _GLOBAL_RNG_LOCK:
        if device.type == "cpu":
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                yield
            return
        module = torch.get_device_module(device.type)
        index = device.index if device.index is not None else module.current_device()
        with torch.random.fork_rng(devices=[index], device_type=device.type):
            if device.type == "cuda":
                torch.cuda.default_generators[index].manual_seed(seed)
            else:
                module.manual_seed(seed)
            yield
