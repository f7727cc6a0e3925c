"""``BaseReptile``: what the Reptile estimators share, and the hooks in which they differ.

The learned state is kept in numpy arrays (``meta_params_``, ``params_`` and the
scaling statistics) so that estimators pickle, clone and move between machines
without torch objects; the torch network and the tensors on the device are a
cache rebuilt on demand.  ``meta_fit`` hands the training loop
(:mod:`skreptile._training`) the estimator's settings and
:class:`~skreptile._estimators.meta_fit_hooks.EstimatorHooks` and stores the result.
``fit`` adapts on the backend the engine chooses (:mod:`skreptile._estimators.single_task`);
many tasks at once go through :mod:`skreptile._estimators.batch_adaptation`.  The two
estimators differ only by the family hooks, the abstract methods of :class:`BaseReptile`.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._engine import (
    LOSSES,
    Initialisation,
    LeanMLP,
    Scaling,
    choose_backend,
    placement,
    resolve_device,
)
from .._training import selftune as _selftune
from .._training.interface import TaskFamily
from .._training.loop import run_meta_fit
from .adaptation import adapt_lr_for, adapt_steps_for, support_size
from .batch_adaptation import BatchAdaptation, prepare_tasks
from .constraints import PARAMETER_CONSTRAINTS, hidden_sizes
from .doc_link import url_params
from .few_shot import FewShotMixin
from .learned_state import LearnedStateMixin, store_meta_fit, unchanged_on_error
from .meta_fit_hooks import EstimatorHooks
from .networks import build_network, has_batch_norm
from .single_task import adapted_outputs, fit_one_task
from .table_input import task_sampler_of
from .validation import quick_X, validate_params_once

if TYPE_CHECKING:
    from typing_extensions import Self


class BaseReptile(LearnedStateMixin, FewShotMixin, BaseEstimator, metaclass=abc.ABCMeta):
    """Shared implementation of :class:`ReptileRegressor` and :class:`ReptileClassifier`.

    The two differ only by the family hooks, the abstract methods below: how
    targets are encoded and predictions read, the loss of held-out tasks, and
    what ``meta_fit`` learns about the tasks beyond their arrays.
    """

    _loss = "squared_error"

    # The "?" of the HTML display links to the estimator's page in skreptile's API reference.
    _doc_link_module = "skreptile"
    _doc_link_template = "{url}"
    _doc_link_url_param_generator = url_params  # called as a method: the estimator

    _parameter_constraints = dict(PARAMETER_CONSTRAINTS)

    # ------------------------------------------------------------ the network
    def _validate_params(self):
        super()._validate_params()
        # The entries of hidden_layer_sizes, which scikit-learn's constraints do not check.
        if self.module is None:
            self._hidden_sizes()

    def _hidden_sizes(self):
        return hidden_sizes(self.hidden_layer_sizes)

    def _build_net(self, n_features, n_outputs, seed, input_shape=None):
        """The batched network and its initial flat weights, seeded by ``seed``.

        ``input_shape`` is the ``(channels, height, width)`` of image inputs.
        A user's module is checked here, at ``meta_fit`` (or at ``fit`` without
        it): it must have parameters, and map a batch of inputs
        ``(batch, n_features)`` to outputs ``(batch, n_outputs)``.
        """
        hidden = None if self.module is not None else self._hidden_sizes()
        return build_network(
            self.module,
            self._make_module,
            hidden,
            self.activation,
            n_features,
            n_outputs,
            seed,
            input_shape,
        )

    def _make_module(self, n_features, n_outputs, input_shape=None):
        """The user's ``torch.nn.Module`` (a hook: the classifier adapts it to images)."""
        return self.module(n_features, n_outputs)

    def _net(self):
        """The network of the learned state, rebuilt after unpickling."""
        cache = self.__dict__.setdefault("_cache", {})
        if "net" not in cache:
            cache["net"], _ = self._build_net(
                self.n_features_in_, self.n_outputs_, 0, getattr(self, "input_shape_", None)
            )
        return cache["net"]

    def _forced_device(self):
        """The device every call is forced onto, or None under ``"auto"``.

        Raises where an explicit device is not available.  Kept per value of
        the ``device`` parameter, not per device a call ran on: under
        ``"auto"`` each call chooses its own (:meth:`_place`).
        """
        cache = self.__dict__.setdefault("_cache", {})
        if cache.get("device_param") != str(self.device):
            # A model loaded where its device is missing runs on the CPU (see learned_state.py).
            forced = self._device_of_fallback()
            if forced is None and not placement.is_auto(self.device):
                forced = resolve_device(self.device)
            cache["forced_device"] = forced
            cache["device_param"] = str(self.device)
        return cache["forced_device"]

    def _place(self, job, work=0):
        """The device of one call: ``job`` and its ``work`` decide under ``"auto"``.

        See :func:`skreptile._engine.placement.place`: ``fit`` and ``predict``
        run on the CPU, batched jobs on the accelerator above a measured work.
        """
        forced = self._forced_device()
        return placement.place("auto", job, work) if forced is None else forced

    def _converted(self, name, key, convert):
        """``convert(array)`` of the learned array ``name``, kept until ``name`` is replaced."""
        cache = self.__dict__.setdefault("_cache", {})
        array = self.__dict__[name]
        held = cache.get(key)
        if held is None or held[0] is not array:
            held = cache[key] = (array, convert(array))
        return held[1]

    def _cached_tensor(self, name, device):
        """The learned array ``name`` (e.g. ``"params_"``) as a float32 tensor on ``device``."""
        return self._converted(
            name,
            (name, str(device)),
            lambda a: torch.as_tensor(a, dtype=torch.float32, device=device),
        )

    def _scaling(self):
        return Scaling(self.x_mean_, self.x_scale_, self.y_mean_, self.y_scale_)

    def _support_context(self, net):
        """Whether query points are predicted in a batch with their support set."""
        return not self.transductive and has_batch_norm(net)

    def _is_meta_fitted(self):
        return hasattr(self, "meta_params_")

    def __sklearn_is_fitted__(self):
        # Meta-fitted is not fitted: predictions come only after adaptation.
        return hasattr(self, "params_")

    def _unchanged_on_error(self):
        """Leave the estimator exactly as it was if the block raises (:func:`unchanged_on_error`)."""
        return unchanged_on_error(self)

    # ------------------------------------------------------ family hooks
    @abc.abstractmethod
    def _encode_targets(self, y, n_outputs, where):
        """``(Y, info)``: targets as a 2-D float array for the loss, and what reads them back.

        ``n_outputs`` is the meta-learned number of outputs (None before
        ``meta_fit``); ``where`` names the targets in error messages.  ``info``
        is what :meth:`_decode` needs (the classes, or whether ``y`` was 1-D).
        """

    @abc.abstractmethod
    def _encode_query(self, y, info, where):
        """A held-out task's query targets in the form :meth:`_query_losses` scores."""

    @abc.abstractmethod
    def _decode(self, scaled, info, kind, scaling=None):
        """Predictions (``kind="predict"``) or raw scores (``"logits"``) from scaled outputs."""

    @abc.abstractmethod
    def _query_losses(self, tasks, scaled, scaling):
        """Every held-out task's query loss, from its scaled outputs (a float array)."""

    @abc.abstractmethod
    def _set_fit_info(self, info):
        """Keep what :meth:`_decode` needs after ``fit`` (``info`` of :meth:`_encode_targets`)."""

    @abc.abstractmethod
    def _scaling_modes(self, input_shape=None):
        """``(inputs, targets)`` of :meth:`skreptile._engine.scaling.Scaling.fit`."""

    def _meta_training_tasks(self, task_sampler):
        """The sampler ``meta_fit`` draws from and the record of what it learns about the tasks."""
        return task_sampler, TaskFamily()

    def _pooled_base(self, sampler, by_size, validation_tasks):
        """A pooled model under the network (:meth:`MetaFitHooks.pooled_base`): none by default."""
        return sampler, by_size, validation_tasks, None

    def _settle_base(self, task_sampler, validation_tasks, result, continued):
        """Settle the pooled model once ``meta_fit`` stored ``result``: none by default."""

    def _meta_family_state(self):
        """The family's part of the meta-learned state, as its :class:`TaskFamily` gives it."""
        return {}

    def _family_attributes(self, input_shape):
        """Learned attributes of the family, from what ``meta_fit`` learned about the tasks."""
        return {}

    # ------------------------------------------------------------- meta_fit
    def meta_fit(
        self, task_sampler: Any, y: Any = None, *, groups: Any = None, validation_tasks: Any = None
    ) -> Self:
        """Meta-learn an initialisation from tasks drawn from ``task_sampler``.

        Parameters
        ----------
        task_sampler : callable, sequence of (X, y), TaskSampler, or the table X
            Where tasks come from: a callable ``sampler(rng) -> (X, y)`` with
            ``rng`` a :class:`numpy.random.Generator`, a finite sequence of
            ``(X, y)`` tasks, or one of skreptile's samplers (such as
            :class:`~skreptile.SineTaskSampler`,
            :class:`~skreptile.GroupTaskSampler` or
            :class:`~skreptile.ClassTaskSampler`), which draw many tasks at once.
            With ``y`` and ``groups``: the inputs of one table (an array or a
            DataFrame), every group of rows a task.
        y : array-like of shape (n_samples,) or str, default=None
            With a table: its targets, or the name of their column.
        groups : array-like of shape (n_samples,) or str, default=None
            With a table: the group of every row, or the name of its column;
            the same as ``meta_fit(GroupTaskSampler(X, y, groups))``, whose
            options (``n_points``, ``preprocessor``, ...) the sampler sets.
        validation_tasks : sequence of (X_support, y_support, X_query, y_query), default=None
            Held-out tasks scored every ``monitor_interval`` meta-iterations: the
            model adapts on the support points as :meth:`fit` does and its
            query loss (squared error in the targets' units for regressors, log
            loss for classifiers) goes into ``history_``; needed by
            ``early_stopping``.  :func:`skreptile.evaluation.split_support_query`
            makes them from whole tasks.

        Returns
        -------
        self : object
            The estimator with ``meta_params_`` learned; call :meth:`fit` to adapt.
        """
        self._validate_params()
        task_sampler = task_sampler_of(task_sampler, y, groups)
        continued = self.warm_start and self._is_meta_fitted()
        with self._unchanged_on_error():
            result = run_meta_fit(EstimatorHooks(self), task_sampler, validation_tasks)
            store_meta_fit(self, result)
            self._settle_base(task_sampler, validation_tasks, result, continued)
        return self

    # ------------------------------------------------------------ adaptation
    # Classification counts support sizes in examples per class (a family hook).
    _shots_per_class = False

    def _support_size(self, Y):
        """The support size of encoded targets ``Y`` (:func:`support_size`)."""
        return support_size(Y, self._shots_per_class)

    def _adapt_lr(self, n_support=None):
        """The adaptation step size for ``n_support`` rows (:func:`adapt_lr_for`)."""
        return adapt_lr_for(self.adapt_lr, self.inner_lr, self.__dict__, n_support)

    def _adapt_steps(self, n_support=None):
        """The number of adaptation steps for ``n_support`` rows (:func:`adapt_steps_for`)."""
        return adapt_steps_for(self.adapt_steps, self.__dict__, n_support)

    def _initialisation(self, device):
        """The meta-learned :class:`Initialisation` on ``device``."""
        return Initialisation(
            self._net(),
            self._cached_tensor("meta_params_", device),
            self._scaling(),
            device,
            self._fit_optimizer_state(),
        )

    def _adaptation_curve(self, tasks, steps, init=None, lr=None, indices=None):
        """Scaled query outputs of held-out tasks after each number of ``steps``.

        From ``init`` (by default the meta-learned :class:`Initialisation`);
        see :meth:`BatchAdaptation.curve`.  The device is chosen for this call
        from its work (``"adapt"``: the tasks, the network's weights and the
        largest support set); an ``init`` elsewhere (meta-training's) is copied
        there, a vector of weights.
        """
        ids = range(len(tasks)) if indices is None else indices
        n_points = max((len(tasks.X_support[i]) for i in ids), default=1)
        net = self._net() if init is None else init.net
        device = self._place("adapt", placement.step_work(len(ids), net.n_params, n_points))
        init = self._initialisation(device) if init is None else placement.moved(init, device)
        adaptation = BatchAdaptation(
            init,
            LOSSES[self._loss],
            self.inner_optimizer,
            self.n_threads,
            self._support_context(init.net),
            lambda Y: self._adapt_lr(self._support_size(Y)),
            lambda rate: _selftune.backoff_rates(self, rate),
            getattr(self, "head_init", None),
        )
        return adaptation.curve(tasks, steps, lr=lr, indices=indices)

    def _prepare_tasks(self, tasks, with_query_y, signature=None):
        """Held-out tasks validated and encoded; ``signature`` by default the learned one."""
        n_features, n_outputs = signature or (self.n_features_in_, self.n_outputs_)
        return prepare_tasks(
            tasks,
            with_query_y,
            self._loss == "squared_error",
            lambda X, where: self._task_inputs(X, n_features, where),
            lambda y, where: self._encode_targets(y, n_outputs, where),
            self._encode_query,
        )

    def _task_inputs(self, X, n_features, where):
        """Flat inputs of a held-out task, checked against the meta-learned shape."""
        X = X.reshape(len(X), -1)
        if X.shape[1] != n_features:
            raise ValueError(
                f"{where} has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{n_features} features as input (the tasks given to meta_fit)."
            )
        return X

    # ------------------------------------------------------------------ fit
    def _check_fit_preconditions(self):
        """Fail before ``fit`` changes anything: bad parameters, missing device, stale init."""
        self._validate_params_once()
        self._forced_device()
        self._check_meta_config()

    def _validate_params_once(self):
        """``_validate_params``, skipped while the parameters are those last validated."""
        validate_params_once(self)

    def _quick_X(self, X):
        """``X`` when it is plainly valid for a fitted model, else None (see :func:`quick_X`)."""
        return quick_X(self, X)

    def _fit(self, X, Y, info):
        """Adapt to validated flat ``X`` and encoded 2-D ``Y``; store ``params_`` (see :func:`fit_one_task`)."""
        return fit_one_task(self, X, Y, info)

    def _fit_backend(self, net, device, n_points):
        """The backend ``fit`` adapts on (:func:`~skreptile._engine.choose_backend`).

        Only a meta-fitted model may take the numpy one: an unfitted one adapts
        a fresh torch initialisation.
        """
        return choose_backend(
            net,
            "fit",
            device,
            optimizer=self.inner_optimizer,
            n_points=n_points,
            numpy_allowed="meta_params_" in self.__dict__,
        )

    def _lean_fit_possible(self, net, device, n_points):
        """Whether ``fit`` takes the numpy engine."""
        return self._fit_backend(net, device, n_points).kind == "numpy"

    def _lean_theta(self):
        """``meta_params_`` as float32, converted once."""
        return self._converted(
            "meta_params_", "lean_theta", lambda a: np.asarray(a, dtype=np.float32)
        )

    def _lean_layers(self, net):
        """The adapted weights as float64 ``[W; b]`` blocks, converted once per ``fit``."""
        return self._converted(
            "params_",
            "lean_layers",
            lambda a: LeanMLP.layers_of(net.layer_sizes, np.asarray(a, dtype=np.float64)),
        )

    def _fit_optimizer_state(self):
        """Adam's state at the end of meta-training, averaged over task slots (or None)."""
        state = getattr(self, "inner_optimizer_state_", None)
        if state is None or self.inner_optimizer != "adam":
            return None
        return {
            "v": np.asarray(state["v"]).reshape(-1, len(self.meta_params_)).mean(0),
            "t": state["t"],
        }

    # -------------------------------------------------------------- predict
    def _outputs(self, X):
        """Network outputs, in scaled units, of the adapted model on flat ``X``."""
        return adapted_outputs(self, X)

    def torch_module(self) -> torch.nn.Module:
        """The adapted network as a plain ``torch.nn.Module`` on the CPU.

        Returns
        -------
        module : torch.nn.Module
            A copy of the network with the weights of the last :meth:`fit`,
            independent of the estimator.
        """
        check_is_fitted(self)
        return self._net().to_torch_module(torch.as_tensor(self.params_))
