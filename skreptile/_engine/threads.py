"""Cache-sized blocks of tasks adapted on several threads at once.

On the CPU, tasks are adapted in blocks small enough for their weights and
activations to stay in cache (:meth:`~skreptile._engine.torch_mlp.BatchedMLP.block_size`),
each block through all its steps before the next.  Blocks are independent
until their results are combined, so several threads can adapt them at once:
each thread takes the next block not yet taken, and runs it with one OpenMP
thread of its own (the products of a block are too small to split further).

Unlike splitting every small product over OpenMP threads, which synchronises
the threads thousands of times a second and collapses when another process
holds a core, threads here meet once per call (once per meta-iteration in
meta-training).  Results are returned in block order and combined by the
caller in that order, so they do not depend on the number of threads.

Which tasks form blocks (:func:`task_blocks`), how many threads run them
(:func:`block_workers`, :func:`net_block_workers`) and how many torch threads
the calling thread keeps meanwhile (:func:`calling_thread_work`) are decided
here too.
"""

import contextlib
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

from .device import fast_cpu_math

_pool = None
_pool_pid = None
_pool_lock = threading.Lock()


def available_cores():
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def block_workers(n_threads, device, n_blocks):
    """Threads that adapt ``n_blocks`` blocks of tasks, from the ``n_threads`` parameter.

    ``"auto"``: one per available core, at most one per block; an integer:
    that many, at most one per block; None (leave torch's settings alone) and
    any device but the CPU: one, the calling thread.
    """
    if n_blocks < 2 or n_threads is None or torch.device(device).type != "cpu":
        return 1
    wanted = available_cores() if n_threads == "auto" else int(n_threads)
    return max(1, min(wanted, n_blocks))


def _executor():
    """The worker threads, created on first use (and again in a forked child, which has none)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(
                max_workers=max(1, available_cores() - 1), thread_name_prefix="skreptile-block"
            )
            _pool_pid = os.getpid()
        return _pool


def run_blocks(blocks, run_block, workers, scratches=None, combine=None, keep=None):
    """``[run_block(start, stop, scratch) for (start, stop) in blocks]``, on ``workers`` threads.

    ``scratch`` is a dict private to the thread running the block, for the
    buffers a block reuses from one step to the next.  ``scratches``, a list
    the caller keeps, holds one such dict per thread (grown as needed), so
    that a loop calling this again and again (one call per meta-iteration)
    reuses its buffers instead of building them anew.  The calling thread
    takes part; the others come from a pool shared by every call.  An error
    in any block stops the other threads after their current block and is
    raised here.

    ``combine(index, result)``, when given, receives every block's result in
    block order, as soon as the blocks before it are combined: by the thread
    that completes that prefix, one call at a time, while a block's output is
    still in that core's cache (a sum of megabytes per task, taken after all
    blocks, would come back from memory).  Results are then not kept, and
    None is returned.  A thread never waits for another to combine: a result
    that comes before its turn is passed through ``keep(result)`` (by default
    kept as it is), whose return value waits for the turn, so that
    ``run_block`` may return buffers the thread's next block overwrites.
    """
    scratches = [] if scratches is None else scratches
    scratches.extend({} for _ in range(workers - len(scratches)))
    if workers <= 1:
        results = []
        for index, (start, stop) in enumerate(blocks):
            result = run_block(start, stop, scratches[0])
            if combine is None:
                results.append(result)
            else:
                combine(index, result)
        return None if combine is not None else results
    results = [None] * len(blocks)
    taken = itertools.count()
    take_lock = threading.Lock()
    stop_event = threading.Event()
    early, combined = {}, [0]  # results waiting for their turn; blocks combined so far
    combine_lock = threading.Lock()

    def finish(index, result):
        if combine is None:
            results[index] = result
            return
        with combine_lock:
            if index != combined[0]:
                early[index] = result if keep is None else keep(result)
                return
            combine(index, result)
            combined[0] += 1
            while combined[0] in early:
                combine(combined[0], early.pop(combined[0]))
                combined[0] += 1

    def share(scratch):
        # One OpenMP thread and flushed denormals in this thread, both restored after.
        with fast_cpu_math(None, 0, 1):
            while not stop_event.is_set():
                with take_lock:
                    index = next(taken)
                if index >= len(blocks):
                    return
                try:
                    finish(index, run_block(*blocks[index], scratch))
                except BaseException:
                    stop_event.set()
                    raise

    pool = _executor()
    futures = [pool.submit(share, scratches[k]) for k in range(1, workers)]
    try:
        share(scratches[0])
    except BaseException:
        stop_event.set()
        raise
    finally:
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return None if combine is not None else results


def task_blocks(net, optimizer, n_tasks, n_points, device):
    """``(start, stop)`` of the tasks adapted together: cache-sized blocks on the CPU.

    Blocks need plain SGD and a backend that allows them
    (:meth:`~skreptile._engine.backend.Backend.can_slice`): otherwise one block
    of every task.
    """
    size = None
    if net.can_slice(optimizer):
        size = net.block_size(n_points, device)
    if size is None or size >= n_tasks:
        return [(0, n_tasks)]
    # Blocks of equal sizes (give or take one task), so that threads share the work evenly.
    n_blocks = -(-n_tasks // size)
    bounds = [n_tasks * b // n_blocks for b in range(n_blocks + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def calling_thread_work(net, optimizer, n_tasks, n_points, device):
    """The ``work`` from which ``n_threads="auto"`` sets the calling thread's torch threads.

    For :func:`~skreptile._engine.device.fast_cpu_math` around the adaptation of
    ``n_tasks`` tasks.  Tasks that fill several cache-sized blocks run on
    block threads of one torch thread each (:func:`run_blocks`), and
    the calling thread then stays on one torch thread too (0): with more, its
    own operations between blocks (the meta-update, the sums) open OpenMP
    regions whose workers go on spinning afterwards, on the cores the block
    threads run on (width 256, 16 tasks in two blocks on two threads, paired
    runs: 1,073 tasks/s with the caller on two torch threads, 2,504 on one).
    Otherwise the largest product of one step (:meth:`work`).
    """
    blocks = task_blocks(net, optimizer, n_tasks, n_points, device)
    if len(blocks) > 1 and net.block_threads:
        return 0
    return net.work(max(stop - start for start, stop in blocks), n_points)


def net_block_workers(net, n_threads, device, n_blocks):
    """:func:`block_workers` for ``net``: one (the caller) for networks that keep the GIL busy."""
    return block_workers(n_threads, device, n_blocks) if net.block_threads else 1


_blas_lock = threading.Lock()
_blas_state = {"controller": None, "users": 0, "limit": None}


@contextlib.contextmanager
def one_blas_thread():
    """Hold numpy's and scipy's BLAS to one thread while the enclosed code runs.

    The numpy engines' products run inside blocks that are already one per
    core; a BLAS that threads a product of its own would put several threads
    on each core.  OpenBLAS does so only above 2**18 multiply-adds a product
    (``numpy_tasks.MAX_PRODUCT``), but MKL and Accelerate have thresholds of
    their own, so the limit is set explicitly (``threadpoolctl``).  BLAS
    thread counts are process-wide: the limit is counted, set by the first
    of concurrent users and restored by the last, so that runs in several
    threads never restore each other's settings.  Entering and leaving costs
    about 14 us (two OpenBLAS libraries here): once a ``meta_fit``, not a step.
    """
    with _blas_lock:
        state = _blas_state
        if state["users"] == 0:
            if state["controller"] is None:
                state["controller"] = ThreadpoolController()
            state["limit"] = state["controller"].limit(limits=1, user_api="blas")
        state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            state["users"] -= 1
            if state["users"] == 0:
                state["limit"].restore_original_limits()
                state["limit"] = None
