"""Watching, stopping and resuming meta-training.

:class:`MetaFitRun` is the bookkeeping of one ``meta_fit`` call: where it
starts (afresh, from a warm start or from a checkpoint), the progress bar, the
history of losses, validation and early stopping, and the checkpoint file.
``BaseReptile.meta_fit`` calls it through a few hooks.

Resuming reproduces an uninterrupted run exactly because everything random in
meta-training comes from two numpy generators, the task stream's and the one
that orders points into minibatches, and tasks are drawn a chunk of
meta-iterations at a time.  A checkpoint at meta-iteration ``i`` holds the
weights after ``i`` iterations and the generators' states at the start of the
chunk containing ``i``: the resumed run draws that chunk again, identically,
and skips the iterations already done.

Checkpoints are ``.npz`` files of plain arrays and a JSON header (no pickle),
written to a temporary file and moved into place with :func:`os.replace`, so
that a crash while writing leaves the previous checkpoint intact.
"""

import hashlib
import json
import math
import numbers
import os
import tempfile

import numpy as np
import torch

from ._adaptation import PackedTasks, adaptation_curve

CHECKPOINT_FORMAT = 1

# Parameters that do not change what meta_fit computes, ignored when resuming.
_NOT_FINGERPRINTED = {"verbose", "checkpoint_path", "checkpoint_interval", "warm_start", "device"}


class EarlyStop(Exception):
    """Raised from the iteration callback to end meta-training early."""


# --------------------------------------------------------------- files
def _encode(obj, arrays):
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__nd__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"Cannot store {type(obj).__name__} in a checkpoint.")


def _decode(obj, arrays):
    if isinstance(obj, dict):
        if "__nd__" in obj:
            return arrays[obj["__nd__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def save_checkpoint(path, state):
    """Write ``state`` (nested dicts, lists, tuples, arrays, scalars) to ``path`` atomically."""
    arrays = {}
    header = json.dumps(_encode(state, arrays))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".skreptile-ckpt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __header__=np.array(header), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "__header__"}
        header = json.loads(str(data["__header__"]))
    return _decode(header, arrays)


# ---------------------------------------------------------- fingerprints
def _describe(value):
    if isinstance(value, list):
        value = tuple(value)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return repr(value)


def fingerprint(est):
    """The parameters that decide what ``meta_fit`` computes, as strings."""
    out = {}
    for name, value in sorted(est.get_params(deep=False).items()):
        if name in _NOT_FINGERPRINTED:
            continue
        if name == "random_state" and not isinstance(value, numbers.Integral):
            continue  # the checkpoint holds the generators' states themselves
        out[name] = _describe(value)
    return out


def _digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------ validation
def check_validation_tasks(validation_tasks):
    """Validation tasks as ``(X_support, Y_support, X_query, Y_query)`` with 2-D targets."""
    if validation_tasks is None:
        return None
    from .evaluation import _check_split

    try:
        tasks = _check_split(validation_tasks)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "validation_tasks must be a sequence of (X_support, y_support, X_query, y_query) "
            f"tuples, such as skreptile.evaluation.split_support_query returns: {exc}"
        ) from exc
    two_d = lambda y: y[:, None] if y.ndim == 1 else y  # noqa: E731
    return [(Xs, two_d(ys), Xq, two_d(yq)) for Xs, ys, Xq, yq in tasks]


# ------------------------------------------------------------------ runs
class MetaFitRun:
    """The bookkeeping of one ``meta_fit`` call; see the module docstring.

    After construction, ``theta`` is None for a fresh start (the caller then
    initialises and calls :meth:`start`), or holds the weights to continue
    from, with ``scaling`` and ``signature``.
    """

    def __init__(self, est, stream, batch_rng, validation_tasks):
        self.est = est
        self.stream = stream
        self.batch_rng = batch_rng
        self.n_meta_iter = est.n_meta_iter
        self.validation = check_validation_tasks(validation_tasks)
        if est.early_stopping and self.validation is None:
            raise ValueError(
                "early_stopping=True needs validation tasks: pass validation_tasks to meta_fit, "
                "for example skreptile.evaluation.split_support_query(held_out_tasks, n_support)."
            )
        self.validation_digest = (
            None if self.validation is None else _digest([a for t in self.validation for a in t])
        )
        self.path = None if est.checkpoint_path is None else os.fspath(est.checkpoint_path)
        self.theta = self.scaling = self.signature = None
        self.offset = self.start_iter = self.chunk_start = self.last_record = 0
        self.iteration = 0
        keys = ["meta_iter", "train_loss", "adapted_train_loss"]
        if self.validation is not None:
            keys.append("validation_loss")
        self.history = {k: [] for k in keys}
        self.best = None  # {"loss", "iteration", "theta"} of the best validation so far
        self.bad_rounds = 0
        self.loss_state = np.zeros(2, dtype=np.float32)
        self.chunk_state = None
        self.resumed_from = None
        self.bar = None
        if self.path is not None and os.path.exists(self.path):
            try:
                state = load_checkpoint(self.path)
            except Exception as exc:
                raise ValueError(
                    f"checkpoint_path={self.path!r} exists but is not a readable skreptile "
                    f"checkpoint ({type(exc).__name__}: {exc}); delete it or choose another path."
                ) from exc
            self._resume(state)
        elif est.warm_start and est._is_meta_fitted():
            self._warm_start()

    # -- where training starts ----------------------------------------------
    def _resume(self, state):
        path = self.path
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a skreptile checkpoint of a known format.")
        mine, theirs = fingerprint(self.est), state["params"]
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            details = ", ".join(f"{k}: {theirs.get(k)} then, {mine.get(k)} now" for k in differ)
            raise ValueError(
                f"The checkpoint {path} was written by a meta_fit with other parameters "
                f"({details}). Resume with the same parameters, or delete the file or choose "
                "another checkpoint_path to start afresh."
            )
        if state["validation_digest"] != self.validation_digest:
            raise ValueError(
                f"The checkpoint {path} was written with other validation tasks; resume with "
                "the same validation_tasks, or delete the file to start afresh."
            )
        self.stream.set_state(state["stream"])
        self.batch_rng.bit_generator.state = state["batch_rng"]
        self.theta = state["theta"]
        self.scaling = tuple(state["scaling"])
        self.signature = tuple(int(v) for v in state["signature"])
        self.offset = int(state["offset"])
        self.start_iter = self.iteration = int(state["iteration"])
        self.chunk_start = int(state["chunk_start"])
        self.last_record = int(state["last_record"])
        self.loss_state = np.asarray(state["loss_sums"], dtype=np.float32)
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.best = state["best"]
        self.bad_rounds = int(state["bad_rounds"])
        self.resumed_from = self.start_iter

    def _warm_start(self):
        est = self.est
        self.theta = est.meta_params_
        self.scaling = (est.x_mean_, est.x_scale_, est.y_mean_, est.y_scale_)
        self.signature = (int(est.n_features_meta_), int(est.n_outputs_))
        if self.stream.signature is not None and tuple(self.stream.signature) != self.signature:
            raise ValueError(
                f"warm_start=True: the tasks have {self.stream.signature[0]} features and "
                f"{self.stream.signature[1]} outputs, but the meta-learned initialisation has "
                f"{self.signature[0]} and {self.signature[1]}."
            )
        self.offset = int(getattr(est, "n_meta_iter_", 0))
        previous = getattr(est, "history_", None) or {}
        n_prev = len(previous.get("meta_iter", []))
        for key in set(self.history) | set(previous):
            values = list(previous.get(key, [math.nan] * n_prev))
            self.history[key] = values
        # Continue the random streams where the last meta_fit left them, so that
        # a warm start sees new tasks rather than the same ones again.
        saved = getattr(est, "_meta_rng_state", None)
        if saved is not None and saved["stream"]["kind"] == self.stream.kind:
            state = dict(saved["stream"], buffer=None, signature=self.signature)
            if self.stream.kind == "sequence":
                state["order"] = np.empty(0, dtype=np.intp)
            self.stream.set_state(state)
            self.batch_rng.bit_generator.state = saved["batch_rng"]
        else:
            self.stream.signature = self.signature

    def start(self, scaling, signature):
        """Record the scaling and task shape of a fresh start."""
        self.scaling = scaling
        self.signature = tuple(int(v) for v in signature)

    def bind(self, net, loss, theta, device):
        """Attach the network and the device tensor ``theta`` that meta-training updates."""
        self.net, self.loss, self.theta_t, self.device = net, loss, theta, device
        self.loss_sums = torch.as_tensor(self.loss_state, device=device)
        # The sums as of the last completed meta-iteration: an interruption inside
        # one leaves its partial loss in loss_sums, which a checkpoint must not keep.
        self.loss_done = self.loss_sums.clone()
        if self.validation is not None:
            self.packed = PackedTasks(
                [(Xs, Ys) for Xs, Ys, _, _ in self.validation],
                [(Xq, Yq) for _, _, Xq, Yq in self.validation],
                self.scaling,
                device,
            )
            self.query_y = np.zeros(
                (len(self.validation), self.packed.xq.shape[1], self.signature[1])
            )
            for t, (_, _, _, Yq) in enumerate(self.validation):
                self.query_y[t, : len(Yq)] = Yq
            self.query_mask = (np.arange(self.query_y.shape[1]) < self.packed.query_sizes[:, None])[
                :, :, None
            ]

    # -- hooks of the training loop --------------------------------------------
    def __enter__(self):
        if self.est.verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.n_meta_iter, initial=self.start_iter, desc="meta_fit", unit="it"
            )
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False

    def on_chunk(self, iteration, stream, rng):
        """Remember the generators' states before drawing the chunk starting at ``iteration``."""
        self.chunk_state = (iteration, stream.get_state(), rng.bit_generator.state)

    def on_iteration(self, iteration):
        """Called after every meta-iteration (numbered from 1 within this call)."""
        self.iteration = iteration
        self.loss_done.copy_(self.loss_sums)
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
            "meta_iter": self.offset + iteration,
            "train_loss": float(sums[0] / n),
            "adapted_train_loss": float(sums[1] / n),
        }
        stop = False
        if self.validation is not None:
            loss = self._validate()
            entry["validation_loss"] = loss
            if self.best is None or loss < self.best["loss"]:
                theta = self.theta_t.detach().cpu().numpy().copy()
                self.best = {"loss": loss, "iteration": self.offset + iteration, "theta": theta}
                self.bad_rounds = 0
            else:
                self.bad_rounds += 1
                stop = self.est.early_stopping and self.bad_rounds >= self.est.n_iter_no_change
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

    def _validate(self):
        """Mean query MSE, in the targets' units, of the validation tasks after adaptation."""
        est = self.est
        lr = est.inner_lr if est.adapt_lr is None else est.adapt_lr
        scaled = adaptation_curve(
            self.net,
            self.loss,
            self.theta_t,
            self.packed,
            [est.adapt_steps],
            est.inner_optimizer,
            lr,
        )[est.adapt_steps]
        _, _, y_mean, y_scale = self.scaling
        with np.errstate(all="ignore"):  # a diverged adaptation scores infinity
            squared = np.where(
                self.query_mask, (scaled * y_scale + y_mean - self.query_y) ** 2, 0.0
            )
        per_task = squared.sum(axis=(1, 2)) / (self.packed.query_sizes * self.signature[1])
        loss = float(per_task.mean())
        return loss if math.isfinite(loss) else math.inf

    # -- checkpoints and the end -------------------------------------------
    def save(self, iteration):
        """Write a checkpoint of the state after ``iteration`` meta-iterations."""
        chunk_start, stream_state, rng_state = self.chunk_state
        state = {
            "format": CHECKPOINT_FORMAT,
            "params": fingerprint(self.est),
            "validation_digest": self.validation_digest,
            "theta": self.theta_t.detach().cpu().numpy().copy(),
            "scaling": tuple(np.asarray(a, dtype=np.float64) for a in self.scaling),
            "signature": list(self.signature),
            "offset": self.offset,
            "iteration": iteration,
            "chunk_start": chunk_start,
            "stream": stream_state,
            "batch_rng": rng_state,
            "last_record": self.last_record,
            "loss_sums": self.loss_done.cpu().numpy(),
            "history": self.history,
            "best": self.best,
            "bad_rounds": self.bad_rounds,
        }
        save_checkpoint(self.path, state)

    def interrupted(self):
        """Keep a checkpoint of the last completed meta-iteration after an interruption."""
        if self.path is not None and self.chunk_state is not None:
            self.save(self.iteration)

    def final_theta(self, theta):
        """The weights to keep: the best validated ones with early stopping, else ``theta``."""
        if self.est.early_stopping and self.best is not None:
            return torch.as_tensor(self.best["theta"], device=theta.device)
        return theta

    def finish(self, est, completed=True):
        """Set the monitor's fitted attributes; remove the checkpoint of a completed run."""
        est.history_ = {k: list(v) for k, v in self.history.items()}
        est.n_meta_iter_ = self.offset + self.iteration
        if self.best is not None:
            est.best_iteration_ = int(self.best["iteration"])
            est.best_validation_loss_ = float(self.best["loss"])
        else:
            for attr in ("best_iteration_", "best_validation_loss_"):
                est.__dict__.pop(attr, None)
        est._meta_rng_state = {
            "stream": self.stream.get_state(buffer=False),
            "batch_rng": self.batch_rng.bit_generator.state,
        }
        if completed and self.path is not None and os.path.exists(self.path):
            os.remove(self.path)
