"""The numerical engine: Reptile's inner and outer loops on interchangeable backends.

Nothing here imports scikit-learn or the estimators (a test enforces it); the
estimators hand the engine arrays and tensors already scaled and on their
device.

Modules
-------
* :mod:`.backend`: the :class:`Backend` interface (workspaces of task slots,
  the step kernel, outputs, combining adapted weights) and the torch
  workspace.
* :mod:`.torch_mlp`: :class:`BatchedMLP`, the perceptron on torch ``bmm`` with
  a hand-written backward pass.
* :mod:`.torch_module`: :class:`BatchedModule`, any ``torch.nn.Module``
  through ``torch.func`` (``vmap`` of ``grad``).
* :mod:`.numpy_mlp`: :class:`NumpyMLP`, the perceptron on one task in numpy
  (``fit``, ``predict``); :mod:`.numpy_tasks`: :class:`NumpyTasks`, a few
  stacked tasks in numpy (meta-training's inner loop).
* :mod:`.activations`: the activations, one table for every backend.
* :mod:`.inner`: :func:`run_steps`, the one inner-step loop, and the
  adaptations built on it (:func:`adapt_from`, :func:`adapt_tasks`,
  :func:`adapt_one`); :mod:`.outer`: :func:`meta_train`, the one Reptile outer
  loop; :mod:`.optimizers`: :class:`InnerOptimizer`.
* :mod:`.choice`: :func:`choose_backend`, the one choice of backend.
* :mod:`.threads`: cache-sized blocks of tasks and the threads that run them;
  :mod:`.device`: devices, thread counts, denormals, global generators;
  :mod:`.placement`: where each call runs under ``device="auto"`` (the CPU
  for one task, the accelerator for batched work above a measured threshold).
* :mod:`.prototypes`: the output layer set from class prototypes before an
  adaptation (the classifier's ``head_init="prototypes"``, Proto-MAML).
* :mod:`.losses`, :mod:`.scaling`, :mod:`.packing`, :mod:`.minibatches`: the
  losses, the standardisation, tasks packed into tensors, and meta-training's
  minibatches.

Backends, and when each runs (:func:`choose_backend`)
-----------------------------------------------------
* :class:`NumpyMLP`: ``fit`` of a meta-fitted perceptron with plain SGD on the
  CPU, and its ``predict`` (in float64, without a support set), while one
  step's largest product is under ``SINGLE_THREAD_WORK`` (2**23)
  multiply-adds.  ``fit`` on ten points runs 32 steps of a 1-64-64-1 network,
  a few microseconds of arithmetic a step: through torch, each of the
  twenty-odd operations of a step costs 3 to 5 us of dispatch, numpy's about
  1, and the step size is folded into one in-place BLAS ``sgemm`` per layer.
* :class:`NumpyTasks`: meta-training's inner loop of the perceptron with plain
  SGD on the CPU, float32, tasks of equal sizes, not data-parallel, while a
  task's largest product on one minibatch is at most ``MAX_PRODUCT`` (2**18
  multiply-adds, OpenBLAS's threshold for threading a product): about twice
  as fast as torch for the default recipe.  BLAS is held to one thread
  meanwhile (``threadpoolctl``, :func:`~.threads.one_blas_thread`), so MKL and
  Accelerate, whose thresholds differ, stay on their block's thread too.
* :class:`BatchedMLP`: everything else of the perceptron (Adam, GPUs, padded
  tasks, wide layers, batched few-shot adaptation).  On the CPU tanh runs
  through numpy on the tensor's memory (0.4 ns an element against torch's
  3.6).
* :class:`BatchedModule`: any other network.

On the CPU, tasks run in cache-sized blocks (:func:`~.threads.task_blocks`):
about 4 MB of weights and activations for the perceptron
(``torch_mlp.CACHE_BLOCK_BYTES``, measured table there), 16 MB for custom
modules (their calls cost a millisecond of Python, measured in
``BatchedModule.block_size``), on several threads for the perceptron's
backends (their calls release the GIL) and on the calling thread for custom
modules.  Block sums are added in block order, so results do not depend on
the number of threads.  An accelerator's backend is one new module
implementing :class:`Backend` and one more case in :func:`choose_backend`.
"""

from .activations import ACTIVATIONS, Activation
from .backend import Backend, Workspace
from .choice import choose_backend
from .device import (
    SINGLE_THREAD_WORK,
    cpu_threads,
    fast_cpu_math,
    resolve_device,
    seeded_global_rng,
)
from .inner import adapt, adapt_from, adapt_one, adapt_tasks, run_steps
from .losses import LOSSES
from .minibatches import assemble_chunk, chunk_iterations, keyed_chunk, task_minibatches
from .numpy_mlp import LeanMLP, NumpyMLP, predict_one
from .numpy_tasks import LeanTasks, NumpyTasks
from .optimizers import InnerOptimizer
from .outer import MetaDiverged, meta_lr_at, meta_train
from .packing import Initialisation, PackedTasks
from .scaling import Scaling
from .threads import calling_thread_work, one_blas_thread, run_blocks, task_blocks
from .torch_mlp import BatchedMLP
from .torch_module import BatchedModule

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "SINGLE_THREAD_WORK",
    "Activation",
    "Backend",
    "BatchedMLP",
    "BatchedModule",
    "Initialisation",
    "InnerOptimizer",
    "LeanMLP",
    "LeanTasks",
    "MetaDiverged",
    "NumpyMLP",
    "NumpyTasks",
    "PackedTasks",
    "Scaling",
    "Workspace",
    "adapt",
    "adapt_from",
    "adapt_one",
    "adapt_tasks",
    "assemble_chunk",
    "keyed_chunk",
    "calling_thread_work",
    "choose_backend",
    "chunk_iterations",
    "cpu_threads",
    "fast_cpu_math",
    "meta_lr_at",
    "meta_train",
    "one_blas_thread",
    "predict_one",
    "resolve_device",
    "run_blocks",
    "run_steps",
    "seeded_global_rng",
    "task_blocks",
    "task_minibatches",
]
