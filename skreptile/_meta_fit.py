"""``meta_fit``: the Reptile outer loop around the engine, for both estimators.

Where a run starts (afresh, from a warm start or from a checkpoint), what it
records and when it stops is :class:`~skreptile._monitor.MetaFitRun`'s job;
this module draws the tasks, builds the network and runs
:func:`~skreptile._engine.meta_train`.  The estimator is changed only at the
very end, in :func:`_set_meta_state`; until then everything lives in locals,
so a failed or interrupted ``meta_fit`` leaves the estimator as it was.
"""

import numpy as np
import torch

from . import _distributed, _engine, _fingerprints
from ._batches import assemble_chunk, chunk_iterations, task_minibatches
from ._device import fast_cpu_math, resolve_device
from ._losses import LOSSES
from ._monitor import EarlyStop, MetaFitRun
from ._scaling import Scaling
from .tasks._base import ITERATIONS_PER_BLOCK, TaskSource, seed_from_random_state

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
        tasks, rng = source.block(block, T, block_end - block * ITERATIONS_PER_BLOCK)
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

    When the default process group of ``torch.distributed`` holds several
    ranks, every rank runs this with the same arguments and adapts its share
    of each meta-batch (:mod:`skreptile._distributed`).
    """
    est._validate_params()
    device = resolve_device(est.device)
    group = _distributed.current_group(device)
    with _distributed.guard(group):
        _run(est, task_sampler, validation_tasks, device, group)


def _run(est, task_sampler, validation_tasks, device, group):
    run = MetaFitRun(est, validation_tasks, group)
    # A resumed run keeps its seed (it matters when random_state is not an integer).
    seed = run.seed if run.seed is not None else seed_from_random_state(est.random_state)
    if group is not None:
        seed = group.agree_seed(seed)  # random_state=None draws a seed per process
    init_seed, task_seed = np.random.SeedSequence(seed).generate_state(2)
    sampler, family = est._meta_training_tasks(task_sampler)
    source = TaskSource(sampler, int(task_seed))
    run.attach(source, seed)
    if run.theta is None:  # a fresh start
        scaling = _statistics(est, source, family)
        run.start(scaling, source.signature, family.state())
    family.restore(run.family_state)
    n_features, n_outputs = run.signature
    net, theta = est._build_net(n_features, n_outputs, int(init_seed), family.input_shape)
    run.check_weights(net.n_params)
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
    optimizer = _engine.InnerOptimizer(est.inner_optimizer, est.inner_lr, net, ws, optimizer_state)
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
    # Products of one inner step, to pick the CPU thread count (full-task
    # batches are sized as the demo's 50 points).
    work = net.work(n_slots, est.inner_batch_size or 50)
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
                reducer=reducer,
            )
    except EarlyStop:
        pass
    except _engine.MetaDiverged as exc:
        raise FloatingPointError(
            f"Meta-training diverged: the weights became NaN or infinite by meta-iteration "
            f"{exc.args[0]}. The step sizes are likely too large for this data "
            f"(inner_lr={est.inner_lr}, meta_lr={est.meta_lr}"
            + (", standardize=False" if not est.standardize else "")
            + "); try smaller values"
            + (" or standardize=True" if not est.standardize else "")
            + ". The estimator was left unchanged."
        ) from None
    except KeyboardInterrupt:
        run.interrupted()
        raise
    theta = run.final_theta(theta)
    _set_meta_state(est, net, theta, run, family, source, run.optimizer_rows(), device)
    if group is not None:
        group.finish()  # every rank got here: none can fail any more


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
