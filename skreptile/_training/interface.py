"""What the meta-training loop is given, and what it gives back.

The loop (:func:`~skreptile._training.loop.run_meta_fit`) never sees an
estimator.  It is given

* :class:`Settings`, the values of the estimator's parameters (plain data);
* a :class:`MetaFitHooks`, the few things only the estimator family knows
  (its loss, how it encodes targets and scores held-out tasks, its network),
  as public methods of an object the estimator builds;
* the task sampler, the validation tasks and the callbacks,

and returns a :class:`MetaFitResult`, which the estimator stores as its
learned attributes.  Until then nothing of the estimator changes, so a
failed or interrupted ``meta_fit`` leaves it as it was.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parameters of a ``meta_fit`` call, as values (see the estimators' docstrings)."""

    n_meta_iter: int
    meta_batch_size: int
    meta_lr: float
    meta_lr_schedule: str
    inner_steps: int
    inner_batch_size: int | None
    inner_lr: float
    inner_optimizer: str
    adapt_steps: Any
    adapt_lr: Any
    standardize: bool
    device: Any
    n_threads: Any
    random_state: Any
    verbose: int
    early_stopping: Any
    n_iter_no_change: int
    monitor_interval: int
    warm_start: bool
    checkpoint_path: Any
    checkpoint_interval: int
    validation_fraction: float | None = None
    n_support: int | None = None
    tol: float = 0.0
    callbacks: Any = None
    head_init: str | None = None  # the classifier's: 'meta' or 'prototypes'

    @classmethod
    def from_params(cls, params):
        """The settings among ``params`` (``get_params(deep=False)``); the others are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


class TaskFamily:
    """What ``meta_fit`` learns about the tasks beyond their arrays: nothing, for regression.

    The classifier's :class:`~skreptile._estimators.labels.ImageTasks` records
    the image shape.  The state is kept in checkpoints and restored on resume.
    """

    input_shape: tuple[int, ...] | None = None

    def state(self) -> dict:
        """The family's part of the run's state (JSON-able)."""
        return {}

    def restore(self, state: dict) -> None:
        """Continue from ``state`` (a checkpoint's or a warm start's)."""


@dataclasses.dataclass
class WarmStart:
    """The meta-learned state a ``warm_start`` run continues from."""

    theta: Any
    scaling: Any
    signature: tuple[int, int]
    feature_names: Any
    family_state: dict
    optimizer_state: Any
    n_meta_iter_done: int
    history: dict
    backoffs: int = 0  # the halvings of inner_lr it continues with (see stepsize)


@dataclasses.dataclass
class MetaFitResult:
    """What a completed ``meta_fit`` learned: the estimator's new attributes, as values."""

    meta_params: Any
    scaling: Any
    signature: tuple[int, int]
    feature_names: Any
    input_shape: Any
    optimizer_state: Any
    history: dict
    n_meta_iter: int
    best: dict | None
    inner_lr: float
    step_size_info: dict
    adapt_steps: int
    adapt_lr: float
    adaptation_scores: Any
    adaptation_by_support: Any
    net: Any
    device: Any
    base: Any = None  # what pooled_base learned (opaque to the loop)
    seed: int | None = None  # the run's seed: a second run from it holds out the same tasks


class MetaFitHooks(abc.ABC):
    """What an estimator family tells the meta-training loop; the estimator builds one.

    Attributes
    ----------
    settings : Settings
    fingerprint : dict of str to str
        The parameters that decide what ``meta_fit`` computes, described for
        checkpoints (:func:`~skreptile._training.fingerprints.fingerprint_params`).
    loss_name : str
        The engine's loss (:data:`skreptile._engine.losses.LOSSES`).
    shots_per_class : bool
        Whether support sizes count examples per class and tasks are held out
        by class (classification), rather than rows.
    """

    settings: Settings
    fingerprint: dict
    loss_name: str
    shots_per_class: bool = False

    def pooled_base(self, sampler, by_size, validation_tasks):
        """``(sampler, by_size, validation_tasks, base)`` with a pooled model under the network.

        ``by_size`` holds the held-out splits by support size (or None),
        ``validation_tasks`` the user's.  A family with a base model returns
        them with targets less its predictions, and ``base``, an object the
        loop passes on to :class:`MetaFitResult` untouched; by default nothing
        changes and ``base`` is None.
        """
        return sampler, by_size, validation_tasks, None

    @abc.abstractmethod
    def meta_training_tasks(self, task_sampler) -> tuple[Any, TaskFamily]:
        """The sampler to draw from and the :class:`TaskFamily` record of the tasks."""

    @abc.abstractmethod
    def scaling_modes(self, input_shape) -> tuple[Any, bool]:
        """``(inputs, targets)`` of :meth:`skreptile._engine.scaling.Scaling.fit`."""

    @abc.abstractmethod
    def build_net(self, n_features, n_outputs, seed, input_shape) -> tuple[Any, Any]:
        """The engine's network and its initial flat weights (a tensor)."""

    @abc.abstractmethod
    def prepare_tasks(self, tasks, with_query_y, signature):
        """Held-out ``(Xs, ys, Xq[, yq])`` tasks validated and encoded for adaptation."""

    @abc.abstractmethod
    def adaptation_curve(self, tasks, steps, init, lr):
        """Scaled query outputs after each number of ``steps``: ``{steps: [array per task]}``."""

    @abc.abstractmethod
    def query_losses(self, tasks, scaled, scaling):
        """Every task's query loss (squared error in the targets' units, or log loss)."""

    @abc.abstractmethod
    def warm_start(self) -> WarmStart | None:
        """The learned state to continue from, or None when the estimator was not meta-fitted."""

    @abc.abstractmethod
    def fixed_adapt_lr(self, inner_lr) -> float:
        """The adaptation step size when it is not ``'auto'``, for a run of step size ``inner_lr``."""
