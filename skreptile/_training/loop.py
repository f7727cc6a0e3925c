"""The one meta-training loop: Reptile's outer loop around the engine, with callbacks.

:func:`run_meta_fit` is given the settings, the estimator family's
:class:`~skreptile._training.interface.MetaFitHooks`, the tasks and the
callbacks, never the estimator itself (see :mod:`skreptile._training.interface`).
It decides where the run starts (:class:`~skreptile._training.run.TrainingRun`),
holds tasks out (:mod:`skreptile._training.selftune`), draws the tasks a chunk
of meta-iterations at a time, runs :func:`skreptile._engine.outer.meta_train`
with the callbacks of :mod:`skreptile._training.callbacks` at every
meta-iteration, backs off diverging step sizes
(:mod:`skreptile._training.stepsize`), chooses the adaptation on the held-out
tasks, and returns a :class:`~skreptile._training.interface.MetaFitResult`.
"""

import numpy as np
import torch

from .. import _engine
from .._engine import (
    LOSSES,
    Initialisation,
    calling_thread_work,
    fast_cpu_math,
    outer,
    placement,
    resolve_device,
)
from ..tasks._base import TaskSource, draws_on_device, seed_from_random_state
from ..tasks._split import check_split
from . import callbacks as _callbacks
from . import chunks as _tasks
from . import distributed as _distributed
from . import selftune as _selftune
from . import stepsize as _stepsize
from .interface import MetaFitResult
from .run import TrainingRun, saved_seed


class EarlyStop(Exception):
    """A callback set ``run.stop``: meta-training ends after this iteration."""


def run_meta_fit(hooks, task_sampler, validation_tasks):
    """Meta-train on ``task_sampler``; the :class:`MetaFitResult` (see ``BaseReptile.meta_fit``).

    A fresh run that diverges restarts with the inner step size halved, at most
    ``stepsize.MAX_BACKOFFS`` times (see :mod:`skreptile._training.stepsize`).

    When the default process group of ``torch.distributed`` holds several
    ranks, every rank runs this with the same arguments and adapts its share
    of each meta-batch (:mod:`skreptile._training.distributed`).  The weights
    are the same on every rank, so a divergence (and its restart) happens on all.
    """
    settings = hooks.settings
    # A forced device is checked before any work; "auto" is decided in _run,
    # from the network's size (placement.place), except in a data-parallel
    # run: its ranks must agree on a device before the network is known (and
    # NCCL needs CUDA), so it takes the accelerator where there is one.
    device = None if placement.is_auto(settings.device) else resolve_device(settings.device)
    group = _distributed.current_group(device or resolve_device("auto"))
    if group is not None:
        device = group.device
    with _distributed.guard(group):
        restart = None  # the halvings of a restart; None: as a checkpoint or warm start says
        bases = {}  # pooled base models by task seed: a restart with the same seed reuses its fit
        while True:
            try:
                return _run(hooks, task_sampler, validation_tasks, device, group, restart, bases)
            except _Restart as exc:
                restart = exc.args[0] + 1


# Points a task of an inner step when inner_batch_size is None (full tasks),
# sized as the demo's 50 points: the tasks are drawn only once the device is chosen.
FULL_TASK_POINTS = 50


def _inner_points(settings):
    """Points of one task in one inner step."""
    return settings.inner_batch_size or FULL_TASK_POINTS


def _step_work(settings, net):
    """Multiply-adds of one inner step of a meta-iteration (:func:`placement.step_work`)."""
    return placement.step_work(settings.meta_batch_size, net.n_params, _inner_points(settings))


class _Restart(Exception):
    """A fresh run diverged: start again with smaller steps (``args[0]``: its halvings)."""


def _step_sizes(settings, backoffs):
    """``(inner_lr, record)``: the inner step size after ``backoffs`` halvings (see ``stepsize``)."""
    factor = 0.5**backoffs
    record = {"inner_lr": float(settings.inner_lr) * factor, "backoffs": backoffs, "factor": factor}
    return record["inner_lr"], record


def _check_validation(hooks, validation_tasks, early_stopping):
    """Refuse malformed validation tasks, and early stopping without any, before any work."""
    if validation_tasks is not None:
        # Checked now, encoded once the shapes of the tasks are known.
        try:
            check_split(validation_tasks, numeric_y=hooks.loss_name == "squared_error")
        except (TypeError, ValueError) as exc:
            raise ValueError(
                "validation_tasks must be a sequence of (X_support, y_support, X_query, "
                "y_query) tuples, such as skreptile.evaluation.split_support_query "
                f"returns: {exc}"
            ) from exc
    if early_stopping and validation_tasks is None:
        raise ValueError(
            "early_stopping=True needs validation tasks: pass validation_tasks to meta_fit, "
            "for example skreptile.evaluation.split_support_query(held_out_tasks, n_support)."
        )


def _run(hooks, task_sampler, validation_tasks, device, group, restart, bases):
    settings = hooks.settings
    writer = group is None or group.rank == 0
    # A restart never reads the file: it held the diverged attempt's state, and rank 0
    # removes it while the other ranks would read it.
    resumed_seed = None if restart is not None else saved_seed(settings.checkpoint_path, writer)
    # A resumed run keeps its seed (it matters when random_state is not an integer).
    seed = (
        resumed_seed if resumed_seed is not None else seed_from_random_state(settings.random_state)
    )
    if group is not None:
        seed = group.agree_seed(seed)  # random_state=None draws a seed per process
    init_seed, task_seed = np.random.SeedSequence(seed).generate_state(2)
    sampler, family = hooks.meta_training_tasks(task_sampler)
    auto_validation, by_size, finite = None, None, False
    if validation_tasks is None:
        # Whole tasks held out before any meta-training task is drawn.
        sampler, by_size, finite = _selftune.hold_out(
            settings, sampler, int(task_seed), hooks.shots_per_class
        )
    # A pooled model under the network (the regressor's base_estimator): targets become residuals.
    # The hold-out is a function of the seed, so the same seed gives the same fit.
    prepared = bases.get(int(task_seed))
    if prepared is None:
        prepared = hooks.pooled_base(sampler, by_size, validation_tasks)
        if prepared[3] is not None:
            bases[int(task_seed)] = prepared
    sampler, by_size, validation_tasks, base = prepared
    if by_size is not None:  # the monitored size comes first
        auto_validation = next(iter(by_size.values()))
    early_stopping = settings.early_stopping
    if _selftune.is_auto(early_stopping):
        # A warm start continues the run to n_meta_iter, as one run would.
        early_stopping = (validation_tasks is not None or finite) and not settings.warm_start
    early_stopping = bool(early_stopping)
    # Fresh tasks of an infinite sampler are scored at the end only, unless early stopping.
    monitored = validation_tasks
    if monitored is None and early_stopping:
        monitored = auto_validation
    _check_validation(hooks, monitored, early_stopping)
    run = TrainingRun(settings, hooks.fingerprint, monitored, group, restart is None)
    source = TaskSource(sampler, int(task_seed))
    run.attach(source, seed, hooks.warm_start() if settings.warm_start else None, restart)
    # The halvings a checkpoint or a warm start carries on, or a restart's.
    backoffs = run.backoffs
    if run.theta is None:  # a fresh start
        scaling = _tasks.statistics(hooks, source, family)
        run.start(scaling, source.signature, family.state())
    family.restore(run.family_state)
    n_features, n_outputs = run.signature
    net, theta = hooks.build_net(n_features, n_outputs, int(init_seed), family.input_shape)
    run.check_weights(net.n_params)
    if device is None:
        device = placement.place(settings.device, "meta_train", _step_work(settings, net))
    run.check_draws(draws_on_device(source.sampler, device))
    inner_lr, steps_record = _step_sizes(settings, backoffs)
    adaptation = _monitor_adaptation(settings, hooks, inner_lr)
    if run.theta is not None:
        theta = torch.as_tensor(np.asarray(run.theta, dtype=np.float32))
    theta = theta.to(device)
    loss = LOSSES[hooks.loss_name]
    n_slots, slots, optimizer_state = settings.meta_batch_size, None, run.optimizer_state
    if group is not None:
        slots = group.share(settings.meta_batch_size)
        n_slots = slots[1] - slots[0]
        # Adam's state is saved one row per slot of the whole meta-batch: take ours.
        optimizer_state = group.local_rows(optimizer_state)
    ws = net.workspace(n_slots, theta)
    optimizer = _engine.InnerOptimizer(settings.inner_optimizer, inner_lr, net, ws, optimizer_state)
    run.bind(net, theta, optimizer, device)
    callbacks = [_callbacks.History(), _callbacks.ProgressBar(settings.verbose)]
    if monitored is not None:
        tasks = hooks.prepare_tasks(monitored, with_query_y=True, signature=run.signature)
        validation = _callbacks.Validation(hooks, tasks, adaptation, early_stopping)
        callbacks.insert(0, validation)  # its loss completes the entry the others see
    callbacks.append(_callbacks.UserCallbacks(settings.callbacks))
    if run.path is not None:
        callbacks.append(_callbacks.Checkpoint())
    chunks = _tasks.for_run(
        settings, source, run.scaling, device, run.start_iter, run.n_meta_iter, run.signature, slots
    )
    reducer = None
    if group is not None:
        group.handshake(
            hooks.fingerprint, net.n_params, run.start_iter, run.n_meta_iter, n_features, n_outputs
        )
        reducer = group.reducer(net, run.loss_sums)

    def on_iteration(iteration):
        run.completed(iteration)
        if iteration % settings.monitor_interval == 0 or iteration == run.n_meta_iter:
            entry = run.take_losses(iteration)
            for callback in callbacks:
                callback.on_monitor(run, entry)
        if run.stop:
            raise EarlyStop
        for callback in callbacks:
            callback.on_iteration(run, iteration)

    # To pick the calling thread's CPU thread count.
    work = calling_thread_work(net, optimizer, n_slots, _inner_points(settings), device)
    try:
        for callback in callbacks:
            callback.on_train_begin(run)
        with fast_cpu_math(device, work, settings.n_threads):
            # A kept checkpoint of a completed run trains no further.
            if not run.finished:
                outer.meta_train(
                    net,
                    loss,
                    theta,
                    chunks,
                    optimizer,
                    ws,
                    n_meta_iter=run.n_meta_iter,
                    meta_lr=settings.meta_lr,
                    meta_lr_schedule=settings.meta_lr_schedule,
                    inner_steps=settings.inner_steps,
                    start_iter=run.start_iter,
                    on_iteration=on_iteration,
                    loss_sums=run.loss_sums,
                    dropout_seed=int(init_seed),
                    n_threads=settings.n_threads,
                    reducer=reducer,
                    head_init=settings.head_init,
                )
    except EarlyStop:
        pass
    except _engine.MetaDiverged as exc:
        if run.fresh and backoffs < _stepsize.MAX_BACKOFFS:
            run.discard_checkpoint()
            raise _Restart(backoffs) from None
        unscaled = not settings.standardize
        resumed = "" if run.saved is None else f" (resumed from the checkpoint {run.path})"
        raise FloatingPointError(
            f"Meta-training diverged: the weights became NaN or infinite by meta-iteration "
            f"{exc.args[0]}{resumed}. The step sizes are likely too large for this data "
            f"(inner_lr={settings.inner_lr}, halved {backoffs} times to {inner_lr:.3g}; "
            f"meta_lr={settings.meta_lr}"
            + (", standardize=False" if unscaled else "")
            + "); try smaller values"
            + (" or standardize=True" if unscaled else "")
            + ". The estimator was left unchanged."
        ) from None
    except KeyboardInterrupt:
        for callback in callbacks:
            callback.on_interrupt(run)
        _callbacks.warn_interrupted(run)
        raise
    finally:
        chunks.close()  # stops a prefetch thread on an early stop or an interrupt
        for callback in callbacks:
            callback.close(run)
    theta = run.final_theta(theta, early_stopping)
    # The mean of the optimiser's rows (a collective in a data-parallel run: on every rank).
    mean_state = run.optimizer_rows(per_slot=False)
    if validation_tasks is not None:
        by_size = {None: validation_tasks}
    init = Initialisation(net, theta, run.scaling, device, mean_state)
    choice, by_support = _choose_adaptation(hooks, run, init, inner_lr, by_size, adaptation)
    optimizer_rows = run.optimizer_rows()
    for callback in callbacks:
        callback.on_train_end(run)
    names = source.feature_names if run.feature_names is None else run.feature_names
    result = MetaFitResult(
        meta_params=theta.detach().cpu().numpy().copy(),
        scaling=run.scaling,
        signature=run.signature,
        feature_names=names,
        input_shape=family.input_shape,
        optimizer_state=optimizer_rows,
        history={k: list(v) for k, v in run.history.items()},
        n_meta_iter=run.iteration,
        best=run.best,
        inner_lr=inner_lr,
        step_size_info=steps_record,
        adapt_steps=choice[0],
        adapt_lr=choice[1],
        adaptation_scores=choice[2],
        adaptation_by_support=by_support,
        net=net,
        device=device,
        base=base,
        seed=int(seed),
    )
    if group is not None:
        group.finish()  # every rank got here: none can fail any more
    return result


def _monitor_adaptation(settings, hooks, inner_lr):
    """``(steps, lr)`` of the validation during meta-training."""
    auto_steps = _selftune.is_auto(settings.adapt_steps)
    steps = _selftune.STEP_CANDIDATES if auto_steps else (settings.adapt_steps,)
    if _selftune.is_auto(settings.adapt_lr):
        lr = _selftune.MONITOR_LR_FACTOR * inner_lr
    else:
        lr = hooks.fixed_adapt_lr(inner_lr)
    return tuple(int(s) for s in steps), float(lr)


def _choose_adaptation(hooks, run, init, inner_lr, by_size, adaptation):
    """``((adapt_steps_, adapt_lr_, adaptation_scores_), adaptation_by_support_)``.

    ``by_size`` maps support sizes to held-out splits (None: the user's
    validation tasks, as they are).  The first size's choice is
    ``adapt_steps_`` and ``adapt_lr_``; with several sizes,
    ``adaptation_by_support_`` holds every size's choice as rows
    ``(n_support, adapt_steps, adapt_lr)``.  Every rank of a data-parallel run
    scores the same tasks from the same weights, so every rank makes the same
    choice.
    """
    settings = hooks.settings
    steps, lr = adaptation
    auto = _selftune.is_auto(settings.adapt_steps) or _selftune.is_auto(settings.adapt_lr)
    if not auto or by_size is None:
        fallback = _selftune.DEFAULT_ADAPT_STEPS if len(steps) > 1 else steps[0]
        return (fallback, lr, None), None
    choices = {}
    for size, validation in by_size.items():
        tasks = hooks.prepare_tasks(validation, with_query_y=True, signature=run.signature)
        choices[size] = _selftune.choose_adaptation(hooks, tasks, init, inner_lr)
    first = next(iter(choices.values()))
    if len(choices) == 1:
        return first, None
    rows = [(size, steps, lr) for size, (steps, lr, _) in sorted(choices.items())]
    return first, np.array(rows, dtype=np.float64)
