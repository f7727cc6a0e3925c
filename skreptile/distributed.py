"""Data-parallel meta-training on ``torch.distributed``.

``meta_fit`` runs data-parallel by itself whenever the default process group
of ``torch.distributed`` holds several processes: run the same script under
``torchrun`` (or SLURM, a Kubernetes PyTorchJob, Ray's ``TorchTrainer``), call
:func:`init_from_env` (or ``torch.distributed.init_process_group`` yourself)
before ``meta_fit``, and every process adapts its share of each meta-batch.
One all-reduce per meta-iteration keeps the weights identical on every
process, and the result does not depend on the number of processes.  See the
user guide's page *Meta-training on several processes*.
"""

import dataclasses
import datetime
import os

import torch

from ._training.distributed import RankFailedError

__all__ = ["ProcessInfo", "RankFailedError", "init_from_env", "is_main_process", "shutdown"]

# A collective that waits longer than this fails instead of hanging: long
# enough for rank 0 to validate or write a checkpoint while the others wait.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the process group.

    Parameters
    ----------
    rank : int
        The process's rank, 0 to ``world_size - 1``.
    world_size : int
        The number of processes.
    local_rank : int
        The rank among the processes of this machine (the GPU it uses).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None when no process group was started.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None


def _env_int(name, default=None):
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(
                f"init_from_env: WORLD_SIZE is set but {name} is not; start the script with "
                "torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT yourself."
            )
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"init_from_env: {name}={value!r} is not an integer.") from None


def init_from_env(backend=None, timeout=DEFAULT_TIMEOUT):
    """Start the default process group from the environment ``torchrun`` sets.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``.  Without ``WORLD_SIZE`` (a script run by plain
    ``python``) it starts nothing, so one script serves both cases.  With
    NCCL it also makes GPU ``LOCAL_RANK`` this process's ``"cuda"`` device.
    An already started process group is left as it is.

    Parameters
    ----------
    backend : {"gloo", "nccl"}, default=None
        None picks NCCL when this process has a GPU of its own, else gloo.
    timeout : datetime.timedelta, default=10 minutes
        How long a collective waits before it fails: the bound on how long
        the other processes wait when one dies without raising (killed, out
        of memory).  A process that raises stops the others at once.

    Returns
    -------
    info : ProcessInfo
        ``rank``, ``world_size``, ``local_rank`` and ``backend``.

    Examples
    --------
    Run by plain ``python``, nothing is started and ``meta_fit`` runs as usual:

    >>> import os
    >>> from skreptile.distributed import init_from_env, is_main_process
    >>> saved = os.environ.pop("WORLD_SIZE", None)
    >>> init_from_env()
    ProcessInfo(rank=0, world_size=1, local_rank=0, backend=None)
    >>> is_main_process()
    True
    >>> if saved is not None:
    ...     os.environ["WORLD_SIZE"] = saved

    Under ``torchrun --nproc-per-node=4 train.py``, the same call starts a
    group of four processes, and ``meta_fit`` shares each meta-batch among them.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return _info(dist, int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    if "WORLD_SIZE" not in os.environ:
        return ProcessInfo(0, 1, 0, None)
    if not dist.is_available():
        raise RuntimeError("init_from_env: this build of torch has no torch.distributed.")
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", rank)
    if backend is None:
        own_gpu = torch.cuda.is_available() and local_rank < torch.cuda.device_count()
        backend = "nccl" if own_gpu else "gloo"
    if backend == "nccl":
        # Before the group starts, so that NCCL and device="cuda" use this GPU.
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    return _info(dist, local_rank)


def _info(dist, local_rank):
    return ProcessInfo(dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()))


def is_main_process():
    """Whether this process is rank 0, or the only one: the one to save models or print.

    Returns
    -------
    main : bool
        True outside a process group and on rank 0.

    Examples
    --------
    >>> from skreptile.distributed import is_main_process
    >>> is_main_process()
    True
    """
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shutdown():
    """Destroy the default process group, if one was started.

    Call it at the end of a script that :func:`init_from_env` started; the
    fitted estimators keep no reference to the group and stay usable, and
    they pickle without it.

    Examples
    --------
    >>> from skreptile.distributed import shutdown
    >>> shutdown()  # nothing started: nothing to do
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
