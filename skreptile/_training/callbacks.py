"""The callbacks of the meta-training loop: validation and early stopping, history, progress, checkpoints.

The loop (:func:`~skreptile._training.loop.run_meta_fit`) calls, in list order:

* ``on_train_begin(run)`` once, before the first meta-iteration;
* ``on_monitor(run, entry)`` every ``monitor_interval`` meta-iterations (and
  after the last), with the history entry of that interval, which each
  callback may complete (validation adds its loss) before the next sees it;
  a callback sets ``run.stop`` to end meta-training after this iteration;
* ``on_iteration(run, iteration)`` after every meta-iteration that goes on;
* ``on_interrupt(run)`` when the run is interrupted (``KeyboardInterrupt``);
* ``on_train_end(run)`` after a completed run, and ``close(run)`` always.

``run`` is the :class:`~skreptile._training.run.TrainingRun`.  The users'
callbacks (the estimators' ``callbacks`` parameter) run through
:class:`UserCallbacks`, after the others have completed the entry.
"""

import math
import warnings

import numpy as np
import torch

from .._engine.outer import MetaDiverged
from .._engine.packing import Initialisation
from . import checkpoint as _checkpoint
from . import fingerprints as _fingerprints
from .fingerprints import DRAWS_KEY
from .run import validation_digest


class Callback:
    """A hook of the meta-training loop; every method does nothing unless overridden."""

    def on_train_begin(self, run):
        pass

    def on_monitor(self, run, entry):
        pass

    def on_iteration(self, run, iteration):
        pass

    def on_interrupt(self, run):
        pass

    def on_train_end(self, run):
        pass

    def close(self, run):
        pass


class Validation(Callback):
    """Scores the held-out tasks after adaptation; stops early when they stop improving.

    The score is the mean query loss after the best of the adaptation's
    numbers of steps (``adaptation = (steps, lr)``).  In a data-parallel run
    rank 0 alone validates and sends the loss to every rank, so that every
    rank takes the same decision.
    """

    def __init__(self, hooks, tasks, adaptation, early_stopping):
        self.hooks, self.tasks, self.adaptation = hooks, tasks, adaptation
        self.early_stopping = early_stopping

    def on_monitor(self, run, entry):
        if run.group is None:
            loss, steps = self._validate(run, run.optimizer_rows(per_slot=False))
        else:
            state = run.optimizer_rows(per_slot=False)  # a collective: on every rank
            loss, steps = self._validate(run, state) if run.writer else (0.0, 0.0)
            loss, steps = run.group.decide(loss), run.group.decide(steps)
        entry["validation_loss"] = loss
        entry["validation_adapt_steps"] = steps
        tol = run.settings.tol or 0.0
        if run.best is None or loss < run.best["loss"] * (1.0 - tol):
            run.bad_rounds = 0
        else:
            run.bad_rounds += 1
        if run.best is None or loss < run.best["loss"]:
            theta = run.theta_t.detach().cpu().numpy().copy()
            run.best = {"loss": loss, "iteration": entry["meta_iter"], "theta": theta}
        if self.early_stopping and run.bad_rounds >= run.settings.n_iter_no_change:
            run.stop = True

    def _validate(self, run, optimizer_state):
        """Mean query loss of the validation tasks after adaptation from the current weights."""
        init = Initialisation(run.net, run.theta_t, run.scaling, run.device, optimizer_state)
        steps, lr = self.adaptation
        curve = self.hooks.adaptation_curve(self.tasks, steps, init, lr)
        best, best_steps = math.inf, math.nan
        for s in steps:
            with np.errstate(all="ignore"):  # a diverged adaptation scores infinity
                loss = float(np.mean(self.hooks.query_losses(self.tasks, curve[s], run.scaling)))
            if math.isfinite(loss) and loss < best:
                best, best_steps = loss, float(s)
        return best, best_steps


class History(Callback):
    """Appends every entry to ``run.history`` (NaN for what an entry lacks)."""

    def on_monitor(self, run, entry):
        for key, values in run.history.items():
            values.append(entry.get(key, math.nan))


class ProgressBar(Callback):
    """A ``tqdm`` progress bar with the latest losses (``verbose >= 1``, rank 0); lines with 2."""

    def __init__(self, verbose):
        self.verbose, self.bar = verbose, None

    def on_train_begin(self, run):
        if self.verbose and run.writer:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=run.n_meta_iter, initial=run.start_iter, desc="meta_fit", unit="it"
            )

    def on_monitor(self, run, entry):
        if self.bar is None:
            return
        shown = {k: f"{v:.4g}" for k, v in entry.items() if k != "meta_iter"}
        self.bar.set_postfix(shown, refresh=False)
        if self.verbose >= 2:
            self.bar.write(
                f"meta-iteration {entry['meta_iter']}: "
                + ", ".join(f"{k}={v}" for k, v in shown.items())
            )

    def on_iteration(self, run, iteration):
        if self.bar is not None:
            self.bar.update(1)

    def close(self, run):
        if self.bar is not None:
            self.bar.close()


class Checkpoint(Callback):
    """Writes the run's state every ``checkpoint_interval`` meta-iterations, on interruption
    and at the end.

    Only finite weights are written: a checkpoint written before the
    divergence check would be resumed by the restart with smaller steps, and
    fail every rerun.  The completed run's checkpoint is kept (``finished``),
    so that a process that dies before the model is saved loses nothing; the
    user removes it.  Rank 0 alone writes; the optimiser's rows are gathered
    from every rank first.
    """

    def on_iteration(self, run, iteration):
        if iteration % run.settings.checkpoint_interval == 0 and iteration < run.n_meta_iter:
            if not _finite(run):  # the same weights on every rank: all raise
                raise MetaDiverged(iteration)
            self.save(run, iteration)

    def save(self, run, iteration, finished=False):
        """Write a checkpoint of the state after ``iteration`` meta-iterations."""
        optimizer = run.optimizer_rows()  # on every rank: it may gather
        if not run.writer:
            return
        names = run.source.feature_names
        state = {
            "format": _checkpoint.CHECKPOINT_FORMAT,
            "params": run.fingerprint,
            "tasks": {**_fingerprints.fingerprint_tasks(run.source), DRAWS_KEY: run.draws},
            "validation_digest": validation_digest(run.validation),
            "seed": run.run_seed,
            "theta": run.theta_t.detach().cpu().numpy().copy(),
            "scaling": tuple(np.asarray(a, dtype=np.float64) for a in run.scaling.as_tuple()),
            "signature": list(run.signature),
            "feature_names": None if names is None else [str(c) for c in names],
            "family": run.family_state,
            "optimizer": None
            if optimizer is None
            else {"v": np.atleast_2d(optimizer["v"]), "t": optimizer["t"]},
            "iteration": iteration,
            "last_record": run.last_record,
            "loss_sums": run.loss_done.cpu().numpy(),
            "history": run.history,
            "best": run.best,
            "bad_rounds": run.bad_rounds,
            "backoffs": run.backoffs,
            "fresh": run.fresh,
            "finished": finished,
        }
        _checkpoint.save_checkpoint(run.path, state)

    def on_interrupt(self, run):
        # Not in a data-parallel run: the other ranks are not at this point to
        # gather the optimiser's state; the last periodic checkpoint remains.
        saved = run.iteration > run.start_iter and run.group is None and _finite(run)
        if saved:
            self.save(run, run.iteration)
        run.checkpoint_saved = saved

    def on_train_end(self, run):
        if run.finished:  # resumed from the kept checkpoint: it is this run's already
            return
        try:
            self.save(run, run.iteration, finished=True)
        except OSError as exc:
            # The run is done and its result returned: only the copy on disk is missing.
            warnings.warn(
                f"meta_fit completed, but its final checkpoint could not be written ({exc}); "
                f"the checkpoint {run.path} holds the run as of its last periodic checkpoint.",
                RuntimeWarning,
                stacklevel=4,
            )


def _finite(run):
    return bool(torch.isfinite(run.theta_t).all())


def warn_interrupted(run):
    """Tell the user where the progress of an interrupted run is."""
    saved = getattr(run, "checkpoint_saved", False)
    warnings.warn(
        f"meta_fit was interrupted after meta-iteration {run.iteration}; the estimator "
        "was left as it was before the call"
        + (
            f", and the progress is in the checkpoint {run.path}: call meta_fit again "
            "to resume from it."
            if saved
            else ". Set checkpoint_path to keep the progress of an interrupted run."
            if run.group is None
            else ". A data-parallel run resumes from its last periodic checkpoint."
        ),
        RuntimeWarning,
        stacklevel=4,
    )


class UserCallbacks(Callback):
    """The estimator's ``callbacks`` parameter: each gets a copy of every history entry.

    A callback is a :class:`skreptile.callbacks.Callback` (its
    ``on_meta_fit_begin``, ``on_monitor`` and ``on_meta_fit_end`` are
    called) or any callable, called with the entry.
    """

    def __init__(self, callbacks):
        self.callbacks = list(callbacks or ())
        for i, callback in enumerate(self.callbacks):
            if not (callable(callback) or hasattr(callback, "on_monitor")):
                raise TypeError(
                    f"callbacks[{i}] is a {type(callback).__name__}, which meta_fit cannot call: "
                    "give a function taking the history entry (a dict), or a "
                    "skreptile.callbacks.Callback."
                )

    def on_train_begin(self, run):
        info = {"n_meta_iter": run.n_meta_iter, "start_iter": run.start_iter}
        for callback in self.callbacks:
            begin = getattr(callback, "on_meta_fit_begin", None)
            if begin is not None:
                begin(dict(info))

    def on_monitor(self, run, entry):
        for callback in self.callbacks:
            monitor = getattr(callback, "on_monitor", None)
            (monitor if monitor is not None else callback)(dict(entry))

    def on_train_end(self, run):
        for callback in self.callbacks:
            end = getattr(callback, "on_meta_fit_end", None)
            if end is not None:
                end({k: list(v) for k, v in run.history.items()})
