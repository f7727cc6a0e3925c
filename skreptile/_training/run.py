"""The state of one ``meta_fit`` run, and where it starts: afresh, from a checkpoint, or warm.

Resuming reproduces an uninterrupted run exactly because the tasks of
meta-iteration ``t`` and the order of their points depend only on the seed and
``t`` (:class:`~skreptile.tasks._base.TaskSource`): a checkpoint holds the
weights after ``t`` iterations, the inner optimiser's state and the
bookkeeping, and no random generator state.

``warm_start`` follows the convention of scikit-learn's gradient boosting:
``n_meta_iter`` is the length of the whole run, and a warm ``meta_fit``
continues from the ``n_meta_iter_`` iterations already done up to
``n_meta_iter``, on the step-size schedule of that whole run.

In a data-parallel run (:mod:`skreptile._training.distributed`) every rank
keeps this state identically; the inner optimiser's rows are gathered from
every rank when they are saved or kept.
"""

import math
import os
import warnings

import numpy as np
import torch

from .._engine.scaling import Scaling
from . import checkpoint as _checkpoint
from . import fingerprints as _fingerprints
from .fingerprints import DRAWS_KEY

HISTORY_KEYS = ("meta_iter", "train_loss", "adapted_train_loss")
# With the validation loss, the number of adaptation steps that scored it.
VALIDATION_KEYS = ("validation_loss", "validation_adapt_steps")


def saved_seed(path, writer=True):
    """The seed of the checkpoint at ``path`` that ``meta_fit`` will resume from, or None.

    ``writer``: whether this process may check the path (it writes probe
    files; in a data-parallel run rank 0 alone does).
    """
    if path is None:
        return None
    path = os.fspath(path)
    if writer:
        _checkpoint.check_checkpoint_path(path)
    if not os.path.exists(path):
        return None
    return int(_checkpoint.load_run_state(path)["seed"])


def validation_digest(validation):
    """A digest of the validation tasks, kept in checkpoints."""
    if validation is None:
        return None
    return _fingerprints.digest_arrays([np.asarray(a) for task in validation for a in task])


class TrainingRun:
    """Everything a ``meta_fit`` run changes, in one place; the estimator is not touched.

    After :meth:`attach`, ``theta`` is None for a fresh start (the caller then
    computes the scaling and calls :meth:`start`), or holds the weights to
    continue from, with ``scaling``, ``signature`` and the optimiser's state.

    Parameters
    ----------
    settings : Settings
    fingerprint : dict
        The parameters' description, checked against a checkpoint's.
    validation : sequence of tasks or None
        The held-out tasks scored at every monitor interval.
    group : Group or None
        The data-parallel group, or None in one process.
    resume : bool
        Whether to read the checkpoint (not in a restart after a divergence).
    """

    draws = "host"  # where the tasks are drawn, once check_draws has been told

    def __init__(self, settings, fingerprint, validation, group=None, resume=True):
        self.settings, self.fingerprint, self.group = settings, fingerprint, group
        self.writer = group is None or group.rank == 0
        self.validation = validation
        self.n_meta_iter = settings.n_meta_iter
        path = settings.checkpoint_path
        self.path = None if path is None else os.fspath(path)
        self.theta = self.scaling = self.signature = self.optimizer_state = None
        self.feature_names = None
        self.family_state = {}
        self.source = self.run_seed = None
        self.offset = self.start_iter = self.last_record = self.iteration = 0
        keys = HISTORY_KEYS + (VALIDATION_KEYS if validation is not None else ())
        self.history = {k: [] for k in keys}
        self.best = None  # {"loss", "iteration", "theta"} of the best validation so far
        self.bad_rounds = 0
        self.stop = False  # set by a callback to end meta-training after this iteration
        self.loss_state = np.zeros(2, dtype=np.float32)
        # The step-size back-off (see stepsize): the halvings of inner_lr this run
        # trains with, and whether it began from the initial weights, so that a
        # divergence may restart it with smaller steps (not a warm start).
        self.backoffs, self.fresh = 0, True
        self.finished = False  # a kept checkpoint of a completed run: nothing to train
        self.saved = None  # the checkpoint to resume from
        self.saved_draws = None  # where its tasks were drawn
        if self.path is not None:
            if self.writer:  # it writes probe files and removes stale ones
                _checkpoint.check_checkpoint_path(self.path)
            if resume and os.path.exists(self.path):
                self.saved = _checkpoint.load_run_state(self.path)

    def attach(self, source, seed, warm, restart=None):
        """Decide where training starts, now that the tasks are known.

        ``warm`` is the :class:`~skreptile._training.interface.WarmStart` to
        continue from when ``warm_start`` is set and the estimator was
        meta-fitted, else None.  ``restart``, the number of halvings of a
        restart after a divergence, makes it a fresh start whatever is saved.
        """
        self.source, self.run_seed = source, seed
        warm = warm if self.settings.warm_start else None
        if self.saved is not None and self.saved["finished"] and warm is not None:
            # A completed run's kept checkpoint: the warm start continues the estimator's
            # run, and its checkpoints replace the file.
            self.saved = None
        if restart is not None:
            # The diverged attempt's checkpoint holds its larger step size: never resumed;
            # nor is a warm start (only a fresh run backs off).
            self.saved, self.backoffs, warm = None, restart, None
        elif self.path is not None and self.writer:  # warned once, not at every restart
            self._check_resumable(self.saved is not None)
        if self.saved is not None:
            self._resume(self.saved)
        elif warm is not None:
            self._warm_start(warm)

    def _check_resumable(self, resuming):
        """Refuse to resume, and warn before writing, the run of a generator-seeded sampler."""
        if not _fingerprints.unsaved_generator(_fingerprints.fingerprint_tasks(self.source)):
            return
        advice = _fingerprints.unsaved_generator_advice()
        if resuming:
            raise ValueError(
                f"The checkpoint {self.path} cannot be resumed: {advice}. Delete the file "
                "or choose another checkpoint_path to start afresh."
            )
        warnings.warn(
            f"checkpoint_path={self.path!r}: this run's checkpoints cannot be resumed: {advice}.",
            RuntimeWarning,
            stacklevel=6,
        )

    def _resume(self, state):
        path = self.path
        tasks = dict(state["tasks"])
        # Where the tasks were drawn is checked once the device is known (check_draws).
        self.saved_draws = tasks.pop(DRAWS_KEY, "host")
        for what, then, now in (
            ("parameters", state["params"], self.fingerprint),
            ("tasks", tasks, _fingerprints.fingerprint_tasks(self.source)),
        ):
            differ = _fingerprints.differences(then, now)
            if differ and state["finished"]:
                raise ValueError(
                    f"The checkpoint {path} holds a completed meta_fit with other {what} "
                    f"({'; '.join(differ)}); it is kept after meta_fit so that the model "
                    "survives the process until it is saved. Once it is saved, delete the "
                    "file (os.remove), or choose another checkpoint_path."
                )
            if differ:
                raise ValueError(
                    f"The checkpoint {path} was written by a meta_fit with other {what} "
                    f"({'; '.join(differ)}). Resume with the same {what}, or delete the file "
                    "or choose another checkpoint_path to start afresh."
                )
        if state["validation_digest"] != validation_digest(self.validation):
            raise ValueError(
                f"The checkpoint {path} was written with other validation tasks; resume with "
                "the same validation_tasks, or delete the file to start afresh."
            )
        self.theta = state["theta"]
        self.scaling = Scaling(*state["scaling"])
        self.signature = tuple(int(v) for v in state["signature"])
        self.feature_names = state["feature_names"]
        self.family_state = state["family"]
        self.optimizer_state = state["optimizer"]
        self.start_iter = self.iteration = int(state["iteration"])
        self.loss_state = np.asarray(state["loss_sums"], dtype=np.float32)
        self.last_record = int(state["last_record"])
        if set(state["history"]) != set(self.history):
            raise _checkpoint.malformed(
                path, f"history keys {sorted(state['history'])}, expected {sorted(self.history)}"
            )
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.best = state["best"]
        self.bad_rounds = int(state["bad_rounds"])
        self.backoffs, self.fresh = int(state["backoffs"]), bool(state["fresh"])
        self.finished = bool(state["finished"])
        _checkpoint.check_against_run(path, state, self.settings)

    def check_draws(self, on_device):
        """Record where the run draws its tasks; a resumed run must draw where it was written.

        The host and the device draw other tasks from the same seed: a run
        written with one and resumed with the other would not be the run it
        continues (a GPU run with ``draw_on="auto"`` resumed on the CPU).
        """
        self.draws = "device" if on_device else "host"
        then = self.saved_draws
        if self.saved is not None and then != self.draws:
            raise ValueError(
                f"The checkpoint {self.path} was written by a meta_fit that drew its tasks on "
                f"the {then}, but this one draws them on the {self.draws} (the two draw other "
                "tasks from one seed). Resume on the same kind of device, or set the "
                f"sampler's draw_on={then!r}; or delete the file to start afresh."
            )

    def _warm_start(self, warm):
        done = warm.n_meta_iter_done
        if self.n_meta_iter < done:
            raise ValueError(
                f"warm_start=True: n_meta_iter={self.n_meta_iter} is the length of the whole "
                f"run, but {done} meta-iterations are done already. Set n_meta_iter above "
                f"{done} to continue, or warm_start=False to start afresh."
            )
        self.theta, self.scaling, self.signature = warm.theta, warm.scaling, warm.signature
        self.feature_names = warm.feature_names
        self.family_state = warm.family_state
        self.optimizer_state = warm.optimizer_state
        # The halvings of the run it continues: the original step size diverged there.
        self.backoffs, self.fresh = warm.backoffs, False
        if self.source.signature is not None and tuple(self.source.signature) != self.signature:
            raise ValueError(
                f"warm_start=True: the tasks have {self.source.signature[0]} features and "
                f"{self.source.signature[1]} outputs, but the meta-learned initialisation has "
                f"{self.signature[0]} and {self.signature[1]}."
            )
        self.start_iter = self.iteration = self.last_record = done
        previous = warm.history or {}
        n_prev = len(previous.get("meta_iter", []))
        for key in set(self.history) | set(previous):
            self.history[key] = list(previous.get(key, [math.nan] * n_prev))

    def start(self, scaling, signature, family_state):
        """Record the scaling, task shape and family state of a fresh start."""
        self.scaling = scaling
        self.signature = tuple(int(v) for v in signature)
        self.family_state = family_state

    def discard_checkpoint(self):
        """Remove the checkpoint of an attempt that diverged (its step size is abandoned)."""
        if self.path is not None and self.writer and os.path.exists(self.path):
            os.remove(self.path)

    def check_weights(self, n_params):
        """Refuse weights to continue from that do not fit the network."""
        if self.saved is not None:
            _checkpoint.check_weights(self.path, self.saved, n_params)
        elif self.theta is not None and len(self.theta) != n_params:
            raise ValueError(
                f"warm_start=True: the meta-learned weights have {len(self.theta)} values, but "
                f"the network has {n_params}; the architecture changed. Set warm_start=False "
                "to start afresh."
            )

    def bind(self, net, theta, optimizer, device):
        """Attach the network, the device tensor ``theta`` and the inner optimiser."""
        self.net, self.theta_t, self.optimizer, self.device = net, theta, optimizer, device
        self.loss_sums = torch.as_tensor(self.loss_state, device=device)
        # The sums as of the last completed meta-iteration: an interruption inside
        # one leaves its partial loss in loss_sums, which a checkpoint must not keep.
        self.loss_done = self.loss_sums.clone()

    def completed(self, iteration):
        """Meta-iteration ``iteration`` (numbered over the whole run) is done."""
        self.iteration = iteration
        self.loss_done.copy_(self.loss_sums)
        if self.path is not None:
            self.optimizer.mark_done()

    def take_losses(self, iteration):
        """The history entry of the meta-iterations since the last one; the sums restart."""
        n = iteration - self.last_record
        self.last_record = iteration
        sums = self.loss_sums.cpu().numpy().astype(np.float64)
        self.loss_sums.zero_()
        self.loss_done.zero_()
        return {
            "meta_iter": iteration,
            "train_loss": float(sums[0] / max(n, 1)),
            "adapted_train_loss": float(sums[1] / max(n, 1)),
        }

    def optimizer_rows(self, per_slot=True):
        """The inner optimiser's state, one row per slot of the whole meta-batch (or their mean).

        In a data-parallel run each rank holds the rows of its own slots: they
        are gathered (a collective, called on every rank), so that the state
        saved or kept does not depend on the number of ranks.
        """
        if self.group is None or self.optimizer.kind != "adam":
            return self.optimizer.state(per_slot, done=True)
        state = self.optimizer.state(done=True)
        rows = self.group.gather_rows(torch.as_tensor(state["v"], device=self.device))
        # The mean as the network's task_mean takes it, for one-process results.
        v = rows if per_slot else rows.mean(0)
        return {"v": v.cpu().numpy(), "t": state["t"]}

    def final_theta(self, theta, early_stopping):
        """The weights to keep: the best validated ones with early stopping, else ``theta``."""
        if early_stopping and self.best is not None:
            return torch.as_tensor(self.best["theta"], device=theta.device)
        return theta
