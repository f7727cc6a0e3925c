"""Watching, stopping and resuming meta-training.

:class:`MetaFitRun` is the bookkeeping of one ``meta_fit`` call: where it
starts (afresh, from a warm start or from a checkpoint), the progress bar, the
history of losses, validation and early stopping, and the checkpoint file.

Resuming reproduces an uninterrupted run exactly because the tasks of
meta-iteration ``t`` and the order of their points depend only on the seed and
``t`` (:class:`~skreptile.tasks._base.TaskSource`): a checkpoint holds the
weights after ``t`` iterations, the inner optimiser's state and the
bookkeeping, and no random generator state.

``warm_start`` follows the convention of scikit-learn's gradient boosting:
``n_meta_iter`` is the length of the whole run, and a warm ``meta_fit``
continues from the ``n_meta_iter_`` iterations already done up to
``n_meta_iter``, on the step-size schedule of that whole run.

In a data-parallel run (:mod:`skreptile._training.distributed`) every rank keeps this
bookkeeping, identically: the losses are the meta-batch's, the validation loss
is rank 0's, sent to all, so every rank takes the same decisions and ends with
the same fitted attributes.  Rank 0 alone validates, shows progress and writes
checkpoints; every rank reads the checkpoint it resumes from.
"""

import math
import os

import numpy as np
import torch

from .._engine.packing import Initialisation
from .._engine.scaling import Scaling
from ..tasks._split import check_split
from . import checkpoint as _checkpoint
from . import fingerprints as _fingerprints


def _validation_digest(validation):
    if validation is None:
        return None
    return _fingerprints.digest_arrays([np.asarray(a) for task in validation for a in task])


def _optimizer_rows(state):
    """Adam's per-slot state as ``(n_slots, n_params)`` rows (None for SGD)."""
    if state is None:
        return None
    return {"v": np.atleast_2d(state["v"]), "t": state["t"]}


class EarlyStop(Exception):
    """Raised from the iteration callback to end meta-training early."""


class MetaFitRun:
    """The bookkeeping of one ``meta_fit`` call; see the module docstring.

    After construction, ``theta`` is None for a fresh start (the caller then
    computes the scaling and calls :meth:`start`), or holds the weights to
    continue from, with ``scaling``, ``signature`` and the optimiser's state.
    """

    def __init__(self, est, validation_tasks, group=None, early_stopping=None):
        self.est = est
        self.group = group
        self.writer = group is None or group.rank == 0
        self.early_stopping = est.early_stopping if early_stopping is None else early_stopping
        # (steps, step size) of the validation adaptation; the minimum over steps counts.
        self.adaptation = None
        self.source = None
        self.n_meta_iter = est.n_meta_iter
        self.validation = validation_tasks
        if validation_tasks is not None:
            # Checked now, encoded once the shapes of the tasks are known.
            try:
                check_split(validation_tasks, numeric_y=est._loss == "squared_error")
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    "validation_tasks must be a sequence of (X_support, y_support, X_query, "
                    "y_query) tuples, such as skreptile.evaluation.split_support_query "
                    f"returns: {exc}"
                ) from exc
        if self.early_stopping and validation_tasks is None:
            raise ValueError(
                "early_stopping=True needs validation tasks: pass validation_tasks to meta_fit, "
                "for example skreptile.evaluation.split_support_query(held_out_tasks, n_support)."
            )
        self.path = None if est.checkpoint_path is None else os.fspath(est.checkpoint_path)
        self.theta = self.scaling = self.signature = self.optimizer_state = None
        self.feature_names = None
        self.family_state = {}
        self.offset = self.start_iter = self.last_record = self.iteration = 0
        keys = ["meta_iter", "train_loss", "adapted_train_loss"]
        if validation_tasks is not None:
            # With the loss, the number of adaptation steps that scored it.
            keys += ["validation_loss", "validation_adapt_steps"]
        self.history = {k: [] for k in keys}
        self.best = None  # {"loss", "iteration", "theta"} of the best validation so far
        self.bad_rounds = 0
        self.loss_state = np.zeros(2, dtype=np.float32)
        self.bar = None
        self.saved = None  # the checkpoint to resume from
        if self.path is not None:
            if self.writer:  # it writes probe files and removes stale ones
                _checkpoint.check_checkpoint_path(self.path)
            if os.path.exists(self.path):
                self.saved = _checkpoint.load_run_state(self.path)

    @staticmethod
    def saved_seed(est, writer=True):
        """The seed of the checkpoint ``meta_fit`` will resume from, or None.

        ``writer``: whether this process may check the path (it writes probe
        files; in a data-parallel run rank 0 alone does).
        """
        if est.checkpoint_path is None:
            return None
        path = os.fspath(est.checkpoint_path)
        if writer:
            _checkpoint.check_checkpoint_path(path)
        if not os.path.exists(path):
            return None
        return int(_checkpoint.load_run_state(path)["seed"])

    @property
    def seed(self):
        """The seed of the run being resumed, or None."""
        return None if self.saved is None else int(self.saved["seed"])

    def attach(self, source, seed):
        """Decide where training starts, now that the tasks are known."""
        self.source, self.run_seed = source, seed
        if self.saved is not None:
            self._resume(self.saved)
        elif self.est.warm_start and self.est._is_meta_fitted():
            self._warm_start()

    # -- where training starts ----------------------------------------------
    def _resume(self, state):
        path = self.path
        for what, then, now in (
            ("parameters", state["params"], _fingerprints.fingerprint_params(self.est)),
            ("tasks", state["tasks"], _fingerprints.fingerprint_tasks(self.source)),
        ):
            differ = _fingerprints.differences(then, now)
            if differ:
                raise ValueError(
                    f"The checkpoint {path} was written by a meta_fit with other {what} "
                    f"({'; '.join(differ)}). Resume with the same {what}, or delete the file "
                    "or choose another checkpoint_path to start afresh."
                )
        if state["validation_digest"] != _validation_digest(self.validation):
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

    def _warm_start(self):
        est = self.est
        done = int(getattr(est, "n_meta_iter_", 0))
        if self.n_meta_iter < done:
            raise ValueError(
                f"warm_start=True: n_meta_iter={self.n_meta_iter} is the length of the whole "
                f"run, but {done} meta-iterations are done already. Set n_meta_iter above "
                f"{done} to continue, or warm_start=False to start afresh."
            )
        self.theta = est.meta_params_
        self.scaling = est._scaling()
        self.signature = (int(est.n_features_in_), int(est.n_outputs_))
        self.feature_names = getattr(est, "feature_names_in_", None)
        self.family_state = est._meta_family_state()
        self.optimizer_state = getattr(est, "inner_optimizer_state_", None)
        if self.source.signature is not None and tuple(self.source.signature) != self.signature:
            raise ValueError(
                f"warm_start=True: the tasks have {self.source.signature[0]} features and "
                f"{self.source.signature[1]} outputs, but the meta-learned initialisation has "
                f"{self.signature[0]} and {self.signature[1]}."
            )
        self.start_iter = self.iteration = self.last_record = done
        previous = getattr(est, "history_", None) or {}
        n_prev = len(previous.get("meta_iter", []))
        for key in set(self.history) | set(previous):
            self.history[key] = list(previous.get(key, [math.nan] * n_prev))

    def start(self, scaling, signature, family_state):
        """Record the scaling, task shape and family state of a fresh start."""
        self.scaling = scaling
        self.signature = tuple(int(v) for v in signature)
        self.family_state = family_state

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

    def bind(self, net, loss, theta, optimizer, device):
        """Attach the network, the device tensor ``theta`` and the inner optimiser."""
        self.net, self.loss, self.theta_t, self.optimizer = net, loss, theta, optimizer
        self.device = device
        self.loss_sums = torch.as_tensor(self.loss_state, device=device)
        # The sums as of the last completed meta-iteration: an interruption inside
        # one leaves its partial loss in loss_sums, which a checkpoint must not keep.
        self.loss_done = self.loss_sums.clone()
        if self.validation is not None:
            self.tasks = self.est._prepare_tasks(
                self.validation, with_query_y=True, signature=self.signature
            )

    # -- hooks of the training loop --------------------------------------------
    def __enter__(self):
        if self.est.verbose and self.writer:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.n_meta_iter, initial=self.start_iter, desc="meta_fit", unit="it"
            )
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False

    def on_iteration(self, iteration):
        """Called after every meta-iteration (numbered over the whole run)."""
        self.iteration = iteration
        self.loss_done.copy_(self.loss_sums)
        if self.path is not None:
            self.optimizer.mark_done()
        if self.bar is not None:
            self.bar.update(1)
        if iteration % self.est.monitor_interval == 0 or iteration == self.n_meta_iter:
            self._record(iteration)
        if (
            self.path is not None
            and iteration % self.est.checkpoint_interval == 0
            and iteration < self.n_meta_iter
        ):
            self.save(iteration)

    def _record(self, iteration):
        n = iteration - self.last_record
        self.last_record = iteration
        sums = self.loss_sums.cpu().numpy().astype(np.float64)
        self.loss_sums.zero_()
        self.loss_done.zero_()
        entry = {
            "meta_iter": iteration,
            "train_loss": float(sums[0] / max(n, 1)),
            "adapted_train_loss": float(sums[1] / max(n, 1)),
        }
        stop = False
        if self.validation is not None:
            if self.group is None:
                loss, steps = self._validate(self.optimizer_rows(per_slot=False))
            else:
                state = self.optimizer_rows(per_slot=False)  # a collective: on every rank
                # Decided once, on rank 0, and sent to all: no rank can disagree.
                loss, steps = self._validate(state) if self.writer else (0.0, 0.0)
                loss, steps = self.group.decide(loss), self.group.decide(steps)
            entry["validation_loss"] = loss
            entry["validation_adapt_steps"] = steps
            tol = getattr(self.est, "tol", 0.0) or 0.0
            if self.best is None or loss < self.best["loss"] * (1.0 - tol):
                self.bad_rounds = 0
            else:
                self.bad_rounds += 1
            if self.best is None or loss < self.best["loss"]:
                theta = self.theta_t.detach().cpu().numpy().copy()
                self.best = {"loss": loss, "iteration": iteration, "theta": theta}
            stop = self.early_stopping and self.bad_rounds >= self.est.n_iter_no_change
        for key, values in self.history.items():
            values.append(entry.get(key, math.nan))
        if self.bar is not None:
            shown = {k: f"{v:.4g}" for k, v in entry.items() if k != "meta_iter"}
            self.bar.set_postfix(shown, refresh=False)
            if self.est.verbose >= 2:
                self.bar.write(
                    f"meta-iteration {entry['meta_iter']}: "
                    + ", ".join(f"{k}={v}" for k, v in shown.items())
                )
        if stop:
            raise EarlyStop

    def _validate(self, optimizer_state):
        """Mean query loss of the validation tasks after adaptation from the current weights."""
        est = self.est
        init = Initialisation(self.net, self.theta_t, self.scaling, self.device, optimizer_state)
        steps, lr = self.adaptation or ([est._adapt_steps()], est._adapt_lr())
        curve = est._adaptation_curve(self.tasks, steps, init, lr=lr)
        best, best_steps = math.inf, math.nan
        for s in steps:
            with np.errstate(all="ignore"):  # a diverged adaptation scores infinity
                loss = float(np.mean(est._query_losses(self.tasks, curve[s], self.scaling)))
            if math.isfinite(loss) and loss < best:
                best, best_steps = loss, float(s)
        return best, best_steps

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

    # -- checkpoints and the end -------------------------------------------
    def save(self, iteration):
        """Write a checkpoint of the state after ``iteration`` meta-iterations."""
        optimizer = self.optimizer_rows()  # on every rank: it may gather
        if not self.writer:
            return
        state = {
            "format": _checkpoint.CHECKPOINT_FORMAT,
            "params": _fingerprints.fingerprint_params(self.est),
            "tasks": _fingerprints.fingerprint_tasks(self.source),
            "validation_digest": _validation_digest(self.validation),
            "seed": self.run_seed,
            "theta": self.theta_t.detach().cpu().numpy().copy(),
            "scaling": tuple(np.asarray(a, dtype=np.float64) for a in self.scaling.as_tuple()),
            "signature": list(self.signature),
            "feature_names": None
            if self.source.feature_names is None
            else [str(c) for c in self.source.feature_names],
            "family": self.family_state,
            "optimizer": _optimizer_rows(optimizer),
            "iteration": iteration,
            "last_record": self.last_record,
            "loss_sums": self.loss_done.cpu().numpy(),
            "history": self.history,
            "best": self.best,
            "bad_rounds": self.bad_rounds,
        }
        _checkpoint.save_checkpoint(self.path, state)

    def interrupted(self):
        """Keep a checkpoint of the last completed meta-iteration after an interruption."""
        # Not in a data-parallel run: the other ranks are not at this point to
        # gather the optimiser's state; the last periodic checkpoint remains.
        saved = self.path is not None and self.iteration > self.start_iter and self.group is None
        if saved:
            self.save(self.iteration)
        import warnings

        warnings.warn(
            f"meta_fit was interrupted after meta-iteration {self.iteration}; the estimator "
            "was left as it was before the call"
            + (
                f", and the progress is in the checkpoint {self.path}: call meta_fit again "
                "to resume from it."
                if saved
                else ". Set checkpoint_path to keep the progress of an interrupted run."
                if self.group is None
                else ". A data-parallel run resumes from its last periodic checkpoint."
            ),
            RuntimeWarning,
            stacklevel=4,
        )

    def final_theta(self, theta):
        """The weights to keep: the best validated ones with early stopping, else ``theta``."""
        if self.early_stopping and self.best is not None:
            return torch.as_tensor(self.best["theta"], device=theta.device)
        return theta

    def finish(self, est):
        """Set the monitor's fitted attributes; remove the checkpoint of a completed run."""
        est.history_ = {k: list(v) for k, v in self.history.items()}
        est.n_meta_iter_ = self.iteration
        if self.best is not None:
            est.best_iteration_ = int(self.best["iteration"])
            est.best_validation_loss_ = float(self.best["loss"])
        else:
            for attr in ("best_iteration_", "best_validation_loss_"):
                est.__dict__.pop(attr, None)
        if self.writer and self.path is not None and os.path.exists(self.path):
            os.remove(self.path)
