"""Choosing the torch device, keeping CPU arithmetic fast, and torch's global state.

Nothing here changes torch's process-wide settings behind the caller's back:
the denormal mode is per thread and restored, the thread count changes only
inside :func:`cpu_threads`, and global generators are seeded only inside
:func:`seeded_global_rng`, which restores them.
"""

import contextlib
import numbers
import threading

import numpy as np
import torch


def resolve_device(device):
    """Turn the ``device`` parameter into an available :class:`torch.device`.

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU: the accelerator, if
    any (whether a call of the estimators uses it is decided per call by
    :func:`skreptile._engine.placement.place`).  Anything else is
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


_TINY = np.float32(1e-30)
_SMALL = np.float32(1e-10)


def _flush_denormal_enabled():
    # torch has no getter: a denormal product comes out as zero when flushing is on.
    # The flag is the CPU's, so a numpy product (100 ns, against 5 us for a torch
    # one) sees it as well.
    with np.errstate(under="ignore"):
        return bool(_TINY * _SMALL == 0.0)


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


# Below this many multiply-adds per matrix product, n_threads="auto" runs the
# call on one thread: for small matrices, waking and joining a second thread
# costs about what it saves, and far more when another process holds a core
# (the default sine meta_fit: 3.2 s on one thread, 44 s on two on a loaded
# 2-core machine; docs/user_guide/devices.rst).
SINGLE_THREAD_WORK = 1 << 23


# The most threads ``n_threads`` may ask for.  A fixed number, not a multiple of
# this machine's cores, so that a model saved on one machine is valid on any
# other; far above any core count in use, and far below the counts (10**6) at
# which creating OpenMP threads crashes the process instead of raising.
MAX_THREADS = 1024


def check_n_threads(n_threads):
    """Raise unless ``n_threads`` is None, ``"auto"`` or an integer from 1 to ``MAX_THREADS``.

    Checked where a count reaches torch (not only with the estimators'
    parameters at ``fit``): a model loaded from a file reaches ``predict``
    without ``fit``, and a huge count would crash the process.
    """
    if n_threads is None or (isinstance(n_threads, str) and n_threads == "auto"):
        return
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(
            f"n_threads must be an integer, 'auto' or None, got {n_threads!r}; "
            "set_params(n_threads='auto') picks the count from the work."
        )
    if not 1 <= n_threads <= MAX_THREADS:
        raise ValueError(
            f"n_threads must be at least 1 and at most {MAX_THREADS}, got {n_threads}; "
            "set_params(n_threads='auto') picks the count from the work, "
            "or give the number of cores to use."
        )


def threads_for(n_threads, device, work):
    """The thread count a call runs with: None leaves the caller's."""
    check_n_threads(n_threads)
    if device is not None and torch.device(device).type != "cpu":
        return None
    if n_threads == "auto":
        return 1 if work < SINGLE_THREAD_WORK else None
    return n_threads


@contextlib.contextmanager
def fast_cpu_math(device=None, work=0, n_threads=None):
    """Fast CPU arithmetic for one computation, in the calling thread only.

    * Denormal floats are flushed to zero: tanh networks trained for long
      drift into denormal numbers, which the CPU handles tens of times slower
      than normal ones; flushing them changes no result that matters.  The
      flag is the CPU's floating-point control register (MXCSR on x86, FPCR on
      ARM), which every OS thread has its own copy of: torch's
      ``set_flush_denormal`` writes the calling thread's
      (``aten/src/ATen/cpu/FlushDenormal.cpp``).
    * The estimator's ``n_threads`` parameter: ``"auto"`` runs products of
      fewer than ``SINGLE_THREAD_WORK`` multiply-adds (``work``) on one
      thread, an integer pins the count, None leaves it.  With torch's OpenMP
      backend the count is per calling thread (``omp_set_num_threads``), so
      other threads of the program keep theirs; threads created during the
      call start with it, as with :func:`torch.set_num_threads`.

    Both are restored when the computation ends, even on an error.
    """
    was_enabled = _flush_denormal_enabled()
    threads = threads_for(n_threads, device, work)
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    else:
        threads = None
    if not was_enabled:
        _start_intra_op_pool()
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was_enabled:
            torch.set_flush_denormal(False)
        if threads is not None:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def cpu_threads(n_threads):
    """Run the enclosed code with ``n_threads`` torch CPU threads, then restore the count.

    For a block of code of the caller's own (the estimators' ``n_threads``
    parameter does the same for one call).  The small networks of few-shot
    learning often run as fast, or faster, on one thread, and much faster when
    other processes compete for the cores (see :doc:`/user_guide/devices`);
    this context manager pins the count for a block of code and restores the
    previous one when the block exits, even on an error.  With torch's OpenMP
    backend the count is the calling thread's (and the default of threads
    created while the block runs).

    Parameters
    ----------
    n_threads : int
        Number of threads torch uses for intra-op parallelism on the CPU, from
        1 to 1024.

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
    if n_threads is None or isinstance(n_threads, str):
        raise TypeError(f"n_threads must be an integer, got {n_threads!r}.")
    check_n_threads(n_threads)
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
