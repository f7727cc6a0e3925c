"""``meta_fit``: the Reptile outer loop around the engine, for both estimators.

Where a run starts (afresh, from a warm start or from a checkpoint), what it
records and when it stops is :class:`~skreptile._training.monitor.MetaFitRun`'s job;
this module draws the tasks, builds the network and runs
:func:`~skreptile._engine.outer.meta_train`.  The estimator is changed only at the
very end, in :func:`_set_meta_state`; until then everything lives in locals,
so a failed or interrupted ``meta_fit`` leaves the estimator as it was.
"""

import numpy as np
import torch

from .. import _engine
from .._engine import (
    LOSSES,
    Initialisation,
    Scaling,
    assemble_chunk,
    calling_thread_work,
    chunk_iterations,
    fast_cpu_math,
    resolve_device,
    task_minibatches,
)
from ..tasks._base import ITERATIONS_PER_BLOCK, TaskSource, seed_from_random_state
from . import distributed as _distributed
from . import fingerprints as _fingerprints
from . import selftune as _selftune
from . import stepsize as _stepsize
from .monitor import EarlyStop, MetaFitRun

# Tasks over which the scaling statistics are gathered (all of a finite list).
N_STATS_TASKS = 256


def _statistics(est, source, family):
    """The scaling of a fresh run, from tasks of their own stream (not ``n_meta_iter``)."""
    inputs, targets = est._scaling_modes(family.input_shape)
    # Without scaling, one task tells the shapes.
    tasks = source.statistics_tasks(N_STATS_TASKS if inputs or targets else 1)
    X = np.concatenate([X for X, _ in tasks])
    Y = np.concatenate([y for _, y in tasks])
    inputs, targets = est._scaling_modes(family.input_shape)  # the image shape is known now
    return Scaling.fit(X, Y, inputs=inputs, targets=targets)


def _chunks(est, source, scaling, device, start, n_meta_iter, signature, slots=None):
    """Device tensors of inner minibatches, a chunk of meta-iterations at a time.

    ``slots = (lo, hi)``: only those tasks of every meta-batch (a rank's share
    in a data-parallel run).  Every rank draws the whole block, so that task
    ``j`` of an iteration is the same whatever the number of ranks, and moves
    only its own tasks to the device.
    """
    T, S, B = est.meta_batch_size, est.inner_steps, est.inner_batch_size
    per_chunk = chunk_iterations(T, S, B, *signature)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    iteration = start
    while iteration < n_meta_iter:
        block = iteration // ITERATIONS_PER_BLOCK
        block_end = min(n_meta_iter, (block + 1) * ITERATIONS_PER_BLOCK)
        n_used = (block_end - block * ITERATIONS_PER_BLOCK) * T
        tasks, rng = source.block(block, T, block_end - block * ITERATIONS_PER_BLOCK)
        # A batched sampler draws the whole block; only the tasks this run uses
        # are cut into minibatches (the generator fills its draws in order, so
        # their minibatches are those of the whole block's).
        tasks = tuple(a[:n_used] for a in tasks) if isinstance(tasks, tuple) else tasks[:n_used]
        minibatches = task_minibatches(rng, tasks, S, B)
        while iteration < block_end:
            n = min(per_chunk, block_end - iteration)
            first = (iteration - block * ITERATIONS_PER_BLOCK) * T
            part = (
                tuple(a[first : first + n * T] for a in minibatches)
                if isinstance(minibatches, tuple)
                else minibatches[first : first + n * T]
            )
            x, y, weight = assemble_chunk(part, T)
            if slots is not None:
                mine = lambda a: np.ascontiguousarray(a[:, :, slots[0] : slots[1]])  # noqa: E731
                x, y = mine(x), mine(y)
                weight = weight if isinstance(weight, float) else mine(weight)
            iteration += n
            yield (
                as_tensor(scaling.x(x)),
                as_tensor(scaling.y(y)),
                weight if isinstance(weight, float) else as_tensor(weight),
            )


def run_meta_fit(est, task_sampler, validation_tasks):
    """Meta-train ``est`` on ``task_sampler``; see ``BaseReptile.meta_fit``.

    A fresh run that diverges restarts with both step sizes halved, at most
    ``_stepsize.MAX_BACKOFFS`` times (see :mod:`skreptile._training.stepsize`).

    When the default process group of ``torch.distributed`` holds several
    ranks, every rank runs this with the same arguments and adapts its share
    of each meta-batch (:mod:`skreptile._training.distributed`).  The weights are the
    same on every rank, so a divergence (and its restart) happens on all.
    """
    est._validate_params()
    device = resolve_device(est.device)
    group = _distributed.current_group(device)
    with _distributed.guard(group):
        backoffs = 0
        while True:
            try:
                return _run(est, task_sampler, validation_tasks, device, group, backoffs)
            except _Restart:
                backoffs += 1


class _Restart(Exception):
    """A fresh run diverged: start again with smaller steps."""


def _step_sizes(est, backoffs):
    """``(inner_lr, record)``: the inner step size after ``backoffs`` halvings (see ``_stepsize``)."""
    factor = 0.5**backoffs
    record = {"inner_lr": float(est.inner_lr) * factor, "backoffs": backoffs, "factor": factor}
    return record["inner_lr"], record


def _run(est, task_sampler, validation_tasks, device, group, backoffs):
    writer = group is None or group.rank == 0
    saved_seed = MetaFitRun.saved_seed(est, writer)
    # A resumed run keeps its seed (it matters when random_state is not an integer).
    seed = saved_seed if saved_seed is not None else seed_from_random_state(est.random_state)
    if group is not None:
        seed = group.agree_seed(seed)  # random_state=None draws a seed per process
    init_seed, task_seed = np.random.SeedSequence(seed).generate_state(2)
    sampler, family = est._meta_training_tasks(task_sampler)
    auto_validation, by_size, finite = None, None, False
    if validation_tasks is None:
        # Whole tasks held out before any meta-training task is drawn.
        sampler, by_size, finite = _selftune.hold_out(est, sampler, int(task_seed))
        if by_size is not None:
            auto_validation = by_size[_selftune.monitored_size(est)]
    early_stopping = est.early_stopping
    if _selftune.is_auto(early_stopping):
        # A warm start continues the run to n_meta_iter, as one run would.
        early_stopping = (validation_tasks is not None or finite) and not est.warm_start
    # Fresh tasks of an infinite sampler are scored at the end only, unless early stopping.
    monitored = validation_tasks
    if monitored is None and early_stopping:
        monitored = auto_validation
    run = MetaFitRun(est, monitored, group, early_stopping=bool(early_stopping))
    source = TaskSource(sampler, int(task_seed))
    run.attach(source, seed)
    if run.theta is None:  # a fresh start
        scaling = _statistics(est, source, family)
        run.start(scaling, source.signature, family.state())
    family.restore(run.family_state)
    n_features, n_outputs = run.signature
    net, theta = est._build_net(n_features, n_outputs, int(init_seed), family.input_shape)
    run.check_weights(net.n_params)
    inner_lr, steps_record = _step_sizes(est, backoffs)
    run.adaptation = _monitor_adaptation(est, inner_lr)
    if run.theta is not None:
        theta = torch.as_tensor(np.asarray(run.theta, dtype=np.float32))
    theta = theta.to(device)
    loss = LOSSES[est._loss]
    n_slots, slots, optimizer_state = est.meta_batch_size, None, run.optimizer_state
    if group is not None:
        slots = group.share(est.meta_batch_size)
        n_slots = slots[1] - slots[0]
        # Adam's state is saved one row per slot of the whole meta-batch: take ours.
        optimizer_state = group.local_rows(optimizer_state)
    ws = net.workspace(n_slots, theta)
    optimizer = _engine.InnerOptimizer(est.inner_optimizer, inner_lr, net, ws, optimizer_state)
    run.bind(net, loss, theta, optimizer, device)
    chunks = _chunks(
        est, source, run.scaling, device, run.start_iter, run.n_meta_iter, run.signature, slots
    )
    reducer = None
    if group is not None:
        params = _fingerprints.fingerprint_params(est)
        group.handshake(
            params, net.n_params, run.start_iter, run.n_meta_iter, n_features, n_outputs
        )
        reducer = group.reducer(net, run.loss_sums)
    # To pick the calling thread's CPU thread count (full-task batches are
    # sized as the demo's 50 points).
    work = calling_thread_work(net, optimizer, n_slots, est.inner_batch_size or 50, device)
    try:
        with fast_cpu_math(device, work, est.n_threads), run:
            _engine.meta_train(
                net,
                loss,
                theta,
                chunks,
                optimizer,
                ws,
                n_meta_iter=run.n_meta_iter,
                meta_lr=est.meta_lr,
                meta_lr_schedule=est.meta_lr_schedule,
                inner_steps=est.inner_steps,
                start_iter=run.start_iter,
                on_iteration=run.on_iteration,
                loss_sums=run.loss_sums,
                dropout_seed=int(init_seed),
                n_threads=est.n_threads,
                reducer=reducer,
            )
    except EarlyStop:
        pass
    except _engine.MetaDiverged as exc:
        if run.start_iter == 0 and backoffs < _stepsize.MAX_BACKOFFS:
            raise _Restart from None
        raise FloatingPointError(
            f"Meta-training diverged: the weights became NaN or infinite by meta-iteration "
            f"{exc.args[0]}. The step sizes are likely too large for this data "
            f"(inner_lr={est.inner_lr}, halved {backoffs} times to {inner_lr:.3g}; meta_lr={est.meta_lr}"
            + (", standardize=False" if not est.standardize else "")
            + "); try smaller values"
            + (" or standardize=True" if not est.standardize else "")
            + ". The estimator was left unchanged."
        ) from None
    except KeyboardInterrupt:
        run.interrupted()
        raise
    theta = run.final_theta(theta)
    # The mean of the optimiser's rows (a collective in a data-parallel run: on every rank).
    mean_state = run.optimizer_rows(per_slot=False)
    if validation_tasks is not None:
        by_size = {None: validation_tasks}
    choice = _choose_adaptation(est, run, net, theta, device, inner_lr, by_size, mean_state)
    _set_meta_state(est, net, theta, run, family, source, run.optimizer_rows(), device)
    est.inner_lr_, est.step_size_info_ = inner_lr, steps_record
    (est.adapt_steps_, est.adapt_lr_, est.adaptation_scores_), by_support = choice
    if by_support is None:
        est.__dict__.pop("adaptation_by_support_", None)
    else:
        est.adaptation_by_support_ = by_support
    if group is not None:
        group.finish()  # every rank got here: none can fail any more
    return est


def _monitor_adaptation(est, inner_lr):
    """``(steps, lr)`` of the validation during meta-training."""
    steps = _selftune.STEP_CANDIDATES if _selftune.is_auto(est.adapt_steps) else (est.adapt_steps,)
    if _selftune.is_auto(est.adapt_lr):
        lr = _selftune.MONITOR_LR_FACTOR * inner_lr
    else:
        lr = inner_lr if est.adapt_lr is None else est.adapt_lr
    return tuple(int(s) for s in steps), float(lr)


def _choose_adaptation(est, run, net, theta, device, inner_lr, by_size, optimizer_state):
    """``((adapt_steps_, adapt_lr_, adaptation_scores_), adaptation_by_support_)``.

    ``by_size`` maps support sizes to held-out splits (None: the user's
    validation tasks, as they are).  The first size's choice is
    ``adapt_steps_`` and ``adapt_lr_``; with several sizes,
    ``adaptation_by_support_`` holds every size's choice as rows
    ``(n_support, adapt_steps, adapt_lr)``.  Every rank of a data-parallel run
    scores the same tasks from the same weights, so every rank makes the same
    choice.
    """
    steps, lr = run.adaptation
    auto = _selftune.is_auto(est.adapt_steps) or _selftune.is_auto(est.adapt_lr)
    if not auto or by_size is None:
        fallback = _selftune.DEFAULT_ADAPT_STEPS if len(steps) > 1 else steps[0]
        return (fallback, lr, None), None
    init = Initialisation(net, theta, run.scaling, device, optimizer_state)
    est_view = _AdaptView(est, inner_lr)
    choices = {}
    for size, validation in by_size.items():
        tasks = est._prepare_tasks(validation, with_query_y=True, signature=run.signature)
        choices[size] = _selftune.choose_adaptation(est_view, tasks, init, inner_lr)
    first = next(iter(choices.values()))
    if len(choices) == 1:
        return first, None
    rows = [(size, steps, lr) for size, (steps, lr, _) in sorted(choices.items())]
    return first, np.array(rows, dtype=np.float64)


class _AdaptView:
    """The estimator as the choice of adaptation sees it: its step size is ``inner_lr_``."""

    def __init__(self, est, inner_lr):
        self._est, self._inner_lr = est, inner_lr

    def __getattr__(self, name):
        return getattr(self._est, name)

    def _adapt_lr_param(self):
        return self._inner_lr if self._est.adapt_lr is None else self._est.adapt_lr


def _set_meta_state(est, net, theta, run, family, source, optimizer_state, device):
    """Only now, after meta-training succeeded, does the estimator change."""
    for attr in ("params_", "support_X_", "classes_", "_y_1d", "feature_names_in_"):
        est.__dict__.pop(attr, None)
    est.meta_params_ = theta.detach().cpu().numpy().copy()
    est.x_mean_, est.x_scale_, est.y_mean_, est.y_scale_ = run.scaling.as_tuple()
    est.n_features_in_, est.n_outputs_ = run.signature
    names = source.feature_names if run.feature_names is None else run.feature_names
    if names is not None:
        est.feature_names_in_ = np.asarray(names, dtype=object)
    est.inner_optimizer_state_ = optimizer_state
    family.set_state(est)
    est.meta_config_ = est._meta_config()
    run.finish(est)
    est._cache = {"net": net, "device": device, "device_param": str(est.device)}
