"""Data-parallel ``meta_fit`` over the default process group of ``torch.distributed``.

Batched Reptile is data-parallel by nature: every task of a meta-batch adapts
independently from the same weights, and the outer step needs only the mean of
the adapted weights.  So each rank draws all the tasks of every draw itself (the
tasks of meta-iteration ``t`` depend only on the seed and ``t``, never on the
rank), adapts the tasks of its own slots ``[lo, hi)`` of the meta-batch, and one
all-reduce per meta-iteration of a single flat buffer

    ``[sum of the rank's adapted weights | task count | loss sums | failure flags]``

gives every rank the same mean, hence the same weights.  Task ``j`` of
iteration ``t`` is the same task on any number of ranks, so 1, 2 or 4 processes
give the single-process weights up to the order of float summation.

Failures.  A rank that raises must not leave the others waiting in a
collective.  Every collective of a ``meta_fit`` is an :meth:`Group.exchange` of
buffers of one width (a small float64 one while setting up, the weight-sized
one once training starts) whose tail holds one failure flag per rank.  All
ranks run the same sequence of collectives, so a failing rank answers, in its
``except`` path, the very collective the others wait in, with its flag set;
they see the flag, receive its error message (``broadcast_object_list``) and
raise :class:`RankFailedError` naming the rank and its error.  Afterwards the
process group is still in step and usable.  A rank that dies outright (killed,
out of memory) is caught by the process group's own timeout instead.
"""

import contextlib
import hashlib

import numpy as np
import torch

# Values compared across ranks at the handshake (pairs [v, -v] under MAX).
_SETUP_VALUES = 8
# Checkpoint seeds are split into 16-bit pieces: float64 holds them exactly.
_SEED_PIECES = 4


class RankFailedError(RuntimeError):
    """Raised on every other rank when one rank of a data-parallel ``meta_fit`` fails.

    Parameters
    ----------
    rank : int
        The (lowest) rank that failed (kept as the attribute ``rank``).
    message : str
        That rank's error, as ``"ExceptionType: message"`` (kept as ``message``).
    """

    def __init__(self, rank, message):
        self.rank = int(rank)
        self.message = message
        super().__init__(
            f"meta_fit failed on rank {rank}: {message}. Every rank stopped; this rank's "
            "estimator was left unchanged."
        )


def _dist():
    import torch.distributed as dist

    return dist


def current_group(device):
    """The :class:`Group` of a data-parallel ``meta_fit``, or None for one process."""
    if not torch.distributed.is_available():
        return None
    dist = _dist()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return Group(device)


class Group:
    """This rank's view of the default process group during one ``meta_fit``."""

    def __init__(self, device):
        dist = _dist()
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.backend = str(dist.get_backend())
        if self.backend == "nccl" and torch.device(device).type != "cuda":
            raise ValueError(
                f"The default process group uses NCCL, which needs CUDA tensors, but "
                f"device={str(device)!r}. Use device='cuda' (each rank on its own GPU, as "
                "skreptile.distributed.init_from_env sets up), or a gloo process group on CPU."
            )
        self.device = device
        self.stage = "setup"  # -> "train" after the handshake, "done" after the last collective
        self.width = None  # length of the training buffers, known at the handshake
        self.lo = self.hi = None

    # -- which tasks are this rank's ---------------------------------------
    def share(self, n_tasks):
        """This rank's slots ``[lo, hi)`` of a meta-batch of ``n_tasks`` tasks."""
        if n_tasks < self.world:
            raise ValueError(
                f"meta_batch_size={n_tasks} is smaller than the number of processes "
                f"({self.world}): every process adapts at least one task of each meta-batch. "
                f"Use meta_batch_size >= {self.world} or fewer processes."
            )
        self.lo = self.rank * n_tasks // self.world
        self.hi = (self.rank + 1) * n_tasks // self.world
        self.n_tasks = n_tasks
        return self.lo, self.hi

    def local_rows(self, state):
        """This rank's rows of an optimiser state saved with one row per slot of the meta-batch."""
        if state is None or np.ndim(state["v"]) != 2 or len(state["v"]) != self.n_tasks:
            return state
        return {"v": np.asarray(state["v"])[self.lo : self.hi], "t": state["t"]}

    # -- the collectives -----------------------------------------------------
    def _buffer(self):
        if self.stage == "setup":
            return torch.zeros(
                2 * _SETUP_VALUES + self.world, dtype=torch.float64, device=self.device
            )
        return torch.zeros(self.width, dtype=torch.float32, device=self.device)

    def _op(self):
        dist = _dist()
        return dist.ReduceOp.MAX if self.stage == "setup" else dist.ReduceOp.SUM

    def exchange(self, buffer):
        """All-reduce ``buffer`` (from :meth:`_buffer`) in place; raise if a rank failed."""
        _dist().all_reduce(buffer, op=self._op())
        flags = buffer[-self.world :]
        if bool(flags.any()):
            failed = [int(r) for r in torch.nonzero(flags).flatten().tolist()]
            message = self._error_message(failed[0], None)
            raise RankFailedError(failed[0], message)
        return buffer

    def barrier(self):
        """A collective with nothing in it but the failure flags: all ranks are here, none failed."""
        self.exchange(self._buffer())

    def _error_message(self, source, message):
        box = [message if self.rank == source else None]
        _dist().broadcast_object_list(box, src=source, device=self._object_device())
        return box[0]

    def _object_device(self):
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None

    def abort(self, exc):
        """Answer the collective the other ranks wait in with this rank's failure."""
        if self.stage == "done":
            return
        try:
            buffer = self._buffer()
            buffer[len(buffer) - self.world + self.rank] = 1
            _dist().all_reduce(buffer, op=self._op())
            flags = buffer[-self.world :]
            first = int(torch.nonzero(flags).flatten()[0])
            self._error_message(first, f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - peers gone or timed out: our own error matters more
            pass
        self.stage = "done"

    def agree_seed(self, seed):
        """Rank 0's seed, on every rank (``random_state=None`` draws one per process)."""
        buffer = self._buffer()
        buffer[: 2 * _SETUP_VALUES] = -1.0
        if self.rank == 0:
            seed = int(seed)
            for i in range(_SEED_PIECES):
                buffer[i] = float((seed >> (16 * i)) & 0xFFFF)
        self.exchange(buffer)
        return sum(int(buffer[i]) << (16 * i) for i in range(_SEED_PIECES))

    def handshake(self, params, n_params, start_iter, n_meta_iter, n_features, n_outputs):
        """Check that every rank runs the same meta-training, then switch to training buffers.

        ``params`` is the estimator's parameter fingerprint (verbose, device
        and checkpoint settings excluded): ranks with other parameters would
        otherwise train on silently, or wait for collectives that never come.
        """
        text = repr(sorted(params.items())).encode()
        digest = int.from_bytes(hashlib.sha256(text).digest()[:6], "little")  # exact in float64
        values = [digest, n_params, start_iter, n_meta_iter, self.n_tasks, n_features, n_outputs]
        buffer = self._buffer()
        for i, v in enumerate(values):
            buffer[2 * i], buffer[2 * i + 1] = float(v), -float(v)
        self.exchange(buffer)
        low = [-float(buffer[2 * i + 1]) for i in range(len(values))]
        high = [float(buffer[2 * i]) for i in range(len(values))]
        if low != high:
            names = ["estimator parameters", "weights", "start iteration", "n_meta_iter"]
            names += ["meta_batch_size", "features", "outputs"]
            differ = [
                n if i == 0 else f"{n} from {lo:g} to {hi:g}"
                for i, (n, lo, hi) in enumerate(zip(names, low, high))
                if lo != hi
            ]
            # Every rank sees the same reduced values, so every rank raises here.
            raise ValueError(
                "The processes of a data-parallel meta_fit disagree: "
                + "; ".join(differ)
                + ". Every rank must call meta_fit with the same parameters and tasks; a "
                "resumed run needs its checkpoint_path on a file system every rank sees."
            )
        self.width = n_params + 3 + self.world
        self.stage = "train"

    def finish(self):
        """The last collective of a ``meta_fit``: after it, no rank can fail any more."""
        self.barrier()
        self.stage = "done"

    # -- the per-iteration reduction ---------------------------------------
    def reducer(self, net, loss_sums):
        """The :class:`Reducer` that ``meta_train`` uses instead of ``net.task_mean``."""
        return Reducer(self, net, loss_sums)

    def decide(self, value):
        """Rank 0's float ``value`` on every rank (e.g. a validation loss), as one collective."""
        buffer = self._buffer()
        if self.rank == 0:
            # float64 as two float32s (hi + lo): adding the other ranks' zeros is exact.
            hi = np.float32(value)
            lo = np.float32(value - float(hi)) if np.isfinite(hi) else np.float32(0.0)
            buffer[0], buffer[1] = float(hi), float(lo)
        self.exchange(buffer)
        return float(buffer[0].item()) + float(buffer[1].item())

    def gather_rows(self, rows):
        """Every rank's rows ``(n_local, n)``, stacked in rank order on every rank."""
        dist = _dist()
        self.barrier()  # all ranks are here: the gather cannot be left waiting
        widest = (self.n_tasks + self.world - 1) // self.world
        padded = rows.new_zeros((widest, rows.shape[1]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        counts = [
            (r + 1) * self.n_tasks // self.world - r * self.n_tasks // self.world
            for r in range(self.world)
        ]
        return torch.cat([p[:c] for p, c in zip(parts, counts)])


class Reducer:
    """One all-reduce per meta-iteration: the global mean of the adapted weights.

    ``loss_step`` collects this rank's losses of one meta-iteration (``adapt``
    adds the mean over the rank's tasks); they travel in the same buffer,
    weighted by the rank's share, and land in ``loss_sums`` as the mean over
    the whole meta-batch, the same on every rank.
    """

    def __init__(self, group, net, loss_sums):
        self.group, self.net, self.loss_sums = group, net, loss_sums
        self.n_params = net.n_params
        self.n_local = group.hi - group.lo
        self.buffer = group._buffer()
        self.loss_step = self.buffer.new_zeros(2)

    def mean(self, ws):
        """The mean over all ranks' tasks of the adapted weights in ``ws``."""
        p, buffer = self.n_params, self.buffer
        buffer[p + 3 :].zero_()
        torch.sum(self.net.all_task_params(ws), 0, out=buffer[:p])
        buffer[p] = self.n_local
        torch.mul(self.loss_step, self.n_local / self.group.n_tasks, out=buffer[p + 1 : p + 3])
        self.loss_step.zero_()
        self.group.exchange(buffer)
        if self.loss_sums is not None:
            self.loss_sums.add_(buffer[p + 1 : p + 3])
        # Divided by the global task count: uneven shares weigh every task alike.
        return buffer[:p].div_(buffer[p])


@contextlib.contextmanager
def guard(group):
    """Turn an exception on this rank into a failure every other rank sees."""
    if group is None:
        yield
        return
    try:
        yield
    except RankFailedError:
        raise  # another rank failed: every rank knows already
    except BaseException as exc:
        group.abort(exc)
        raise
