"""Where one call runs: the ``device="auto"`` policy, decided per call from its work.

An accelerator pays a fixed cost per step (kernel launches, synchronisation,
copies) whatever the size of the step, and the CPU pays per task.  So
``"auto"`` is decided for each call from the work it does, not once per
estimator:

* ``"fit"`` and ``"predict"`` (one task, from a learned state kept in numpy)
  always run on the CPU;
* ``"meta_train"`` and ``"adapt"`` (batched adaptation of many tasks:
  ``few_shot_predict``, ``staged_few_shot_predict``, ``evaluate_few_shot``,
  validation and the choice of adaptation in ``meta_fit``) run on the
  accelerator (CUDA, then Apple's MPS) when one is available and the work of
  one inner step, :func:`step_work`, is at least :data:`ACCELERATOR_WORK`
  multiply-adds; below it, on the CPU.

An explicit device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``)
runs every call there, as before.
"""

import torch

from .device import resolve_device

JOBS = ("fit", "predict", "meta_train", "adapt")
# One task from a numpy learned state: the CPU always wins (measured on an
# H200 host, fit on 10 points + predict on 50: 12.5 ms on CUDA, 1.18 ms on the CPU).
_CPU_JOBS = frozenset(("fit", "predict"))

CPU = torch.device("cpu")

# Multiply-adds of one inner step (tasks x network parameters x points a task,
# :func:`step_work`) from which "auto" sends a batched job to the accelerator.
#
# Measured on an NVIDIA H200 with 16 CPU cores beside it (issue 21; width-64
# perceptron 1-64-64-1, 4,353 parameters, 5 inner steps of 10 points a
# meta-iteration), meta-training in tasks/s, CPU against CUDA:
#
#   tasks a meta-iteration      8        64       512
#   CPU (16 cores)          9,089    15,030    31,965
#   CUDA                    5,015    37,459   186,071
#
# i.e. a meta-iteration costs CUDA about 1.6 ms whatever its size up to 64
# tasks (1.60 ms at 8 tasks, 1.71 ms at 64), the CPU 0.88 ms plus about
# 0.06 ms a task (4.26 ms at 64).  They cross near 20 tasks, 0.87M
# multiply-adds a step.  The threshold is set at 32 tasks of that network,
# 32 * 4,353 * 10 = 1.39M multiply-adds a step (7M a meta-iteration of 5
# steps), so that CUDA is chosen only where it also beats a CPU twice as fast
# per task as that one (crossing at about 34 tasks); the default recipe
# (8 tasks: 0.35M) stays on the CPU, where it ran in 11.9 s against 36.2 s
# on CUDA.  As the CPU's cost grows with the multiply-adds and the
# accelerator's is per step, a threshold in work carries over to other
# widths and point counts (to first order; re-measure for very different
# networks).
#
# Batched adaptation uses the same threshold: it is the same step kernel (32
# steps of few_shot_predict ran 44,000 tasks/s on CUDA against 5,500 on that
# CPU at a large task count; its crossover was not measured directly).
# Re-measure both with benchmarks/gpu_benchmark.py on new hardware.
ACCELERATOR_WORK = 32 * 4_353 * 10  # 1,392,960


def is_auto(device):
    """Whether the ``device`` parameter leaves the choice to this policy."""
    return isinstance(device, str) and device == "auto"


def step_work(n_tasks, n_params, n_points):
    """Multiply-adds of an inner step: ``n_tasks`` tasks, ``n_params`` weights, ``n_points`` points.

    Meta-training: the meta-batch size, the network's parameters and the
    inner minibatch; batched adaptation: the tasks of the call and their
    largest support set.
    """
    return int(n_tasks) * int(n_params) * int(n_points)


def accelerator():
    """The accelerator ``"auto"`` may use: CUDA, then MPS, or None (the probe tests mock)."""
    found = resolve_device("auto")
    return None if found.type == "cpu" else found


def place(device, job, work=0):
    """The :class:`torch.device` that runs ``job`` of ``work`` multiply-adds a step.

    Parameters
    ----------
    device : str or torch.device
        The estimator's ``device`` parameter: ``"auto"``, or a device that
        every job is forced onto (checked by :func:`resolve_device`).
    job : {"fit", "predict", "meta_train", "adapt"}
        One task's adaptation, its predictions, meta-training, or batched
        adaptation of many tasks.
    work : int
        :func:`step_work` of the call (ignored for ``fit`` and ``predict``).

    Returns
    -------
    torch.device
    """
    if job not in JOBS:
        raise ValueError(f"job must be one of {JOBS}, got {job!r}.")
    if not is_auto(device):
        return resolve_device(device)
    if job in _CPU_JOBS or work < ACCELERATOR_WORK:
        return CPU
    found = accelerator()
    return CPU if found is None else found


def moved(init, device):
    """The :class:`~skreptile._engine.packing.Initialisation` ``init``, its weights on ``device``.

    Meta-training may run on one device and the adaptation that scores it on
    another: the weights are one vector, copied once per call (``init``
    itself when they are there already).  The network holds no tensors and
    the optimiser's state is moved by :class:`InnerOptimizer`.
    """
    device = torch.device(device)
    if init.device is not None and torch.device(init.device) == device:
        return init
    return init._replace(theta=init.theta.to(device), device=device)
