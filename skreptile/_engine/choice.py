"""Which backend computes what: the one choice of engine.

See the package docstring (:mod:`skreptile._engine`) for the backends, when
each runs and the measurements behind the thresholds.
"""

import torch

from . import numpy_tasks
from .device import SINGLE_THREAD_WORK
from .numpy_mlp import numpy_mlp
from .torch_mlp import BatchedMLP

JOBS = ("meta_train", "fit", "predict")


def choose_backend(
    net,
    job,
    device,
    *,
    optimizer="sgd",
    n_points=1,
    dtype=torch.float32,
    equal_sizes=True,
    data_parallel=False,
    numpy_allowed=True,
    loss_name=None,
):
    """The backend that runs ``job`` for the network ``net`` (itself a torch backend).

    Parameters
    ----------
    net : BatchedMLP or BatchedModule
        The network; it is the backend unless a numpy one applies.
    job : {"meta_train", "fit", "predict"}
        Meta-training's inner loops, ``fit`` on one task, or predicting with
        one adapted network.
    device : torch.device or str
    optimizer : InnerOptimizer or str
        The inner optimiser (or its kind).
    n_points : int
        Points a task (the inner minibatch in meta-training).
    dtype : torch.dtype
        Of the meta-parameters (meta-training).
    equal_sizes : bool
        Whether every task has as many points (no padding weights).
    data_parallel : bool
        Whether meta-training is data-parallel (its mean goes through an
        all-reduce of torch workspaces).
    numpy_allowed : bool
        The caller's own condition for the numpy backends: for ``fit``, a
        meta-fitted model (an unfitted one adapts a fresh torch
        initialisation); for ``predict``, no support set to predict with.
    loss_name : str
        The loss, for the stacked numpy engine.

    Returns
    -------
    Backend
        :class:`~skreptile._engine.numpy_mlp.NumpyMLP` (``fit``, ``predict``),
        :class:`~skreptile._engine.numpy_tasks.NumpyTasks` (``meta_train``),
        or ``net``.
    """
    if job not in JOBS:
        raise ValueError(f"job must be one of {JOBS}, got {job!r}.")
    if not numpy_allowed or not isinstance(net, BatchedMLP) or torch.device(device).type != "cpu":
        return net
    sgd = getattr(optimizer, "kind", optimizer) == "sgd"
    if job == "predict" or (job == "fit" and sgd):
        # numpy's calls cost about 1 us against torch's 3 to 5: while products
        # are small enough to run on one thread anyway (net.work of one task,
        # without its look at the block size, a microsecond of fit's hot path).
        one_task = n_points * net.largest_product()
        return numpy_mlp(net) if one_task < SINGLE_THREAD_WORK else net
    if (
        job == "meta_train"
        and sgd
        and dtype == torch.float32
        and equal_sizes
        and not data_parallel
        and numpy_tasks.stacked_possible(net.layer_sizes, n_points)
    ):
        return numpy_tasks.NumpyTasks(net, loss_name)
    return net
