"""What the Reptile estimators share: the network, one adaptation path, the learned state.

The learned state is kept in numpy arrays (``meta_params_``, ``params_`` and the
scaling statistics) so that estimators pickle, clone and move between machines
without torch objects; the torch network and the tensors on the device are a
cache rebuilt on demand.

Every adaptation, whether :meth:`fit` on one task, :meth:`few_shot_predict`
on many, :func:`~skreptile.evaluation.evaluate_few_shot` or the validation of
``meta_fit``, packs its tasks into :class:`~skreptile._engine.packing.PackedTasks` and
runs :func:`~skreptile._engine.inner.adapt_tasks`.  The two estimators differ only
by their loss, how they encode targets and how they read predictions
(``_encode_targets`` and ``_decode``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn import get_config
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._engine import (
    ACTIVATIONS,
    LOSSES,
    BatchedMLP,
    BatchedModule,
    LeanMLP,
    PackedTasks,
    Scaling,
    adapt_one,
    adapt_tasks,
    choose_backend,
    fast_cpu_math,
    resolve_device,
    seeded_global_rng,
)
from .._training import selftune as _selftune
from .._training.loop import run_meta_fit
from ..tasks._base import seed_from_random_state
from .doc_link import url_params
from .few_shot import FewShotMixin
from .learned_state import LearnedStateMixin

# Parameter names of every estimator class (``_get_param_names`` inspects the signature).
_PARAM_NAMES: dict[type, list[str]] = {}

if TYPE_CHECKING:
    from typing_extensions import Self


def has_batch_norm(net):
    """Whether the network normalises over the batch (so predictions depend on the batch)."""
    module = getattr(net, "module", None)
    return module is not None and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()
    )


class PlainTasks:
    """What ``meta_fit`` learns about the tasks beyond their arrays: nothing, for regression.

    The classifier's counterpart records the image shape (see ``_labels.py``).
    """

    input_shape = None

    def state(self):
        return {}

    def restore(self, state):
        pass

    def set_state(self, est):
        pass


class BaseReptile(FewShotMixin, LearnedStateMixin, BaseEstimator):
    """Shared implementation of :class:`ReptileRegressor` and :class:`ReptileClassifier`."""

    _loss = "squared_error"

    # The "?" of the HTML display links to the estimator's page in skreptile's API reference.
    _doc_link_module = "skreptile"
    _doc_link_template = "{url}"
    _doc_link_url_param_generator = url_params  # called as a method: the estimator

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "module": [callable, None],
        "n_meta_iter": [Interval(Integral, 0, None, closed="left")],
        "meta_batch_size": [Interval(Integral, 1, None, closed="left")],
        "meta_lr": [Interval(Real, 0, None, closed="neither")],
        "meta_lr_schedule": [StrOptions({"linear", "constant"})],
        "inner_steps": [Interval(Integral, 1, None, closed="left")],
        "inner_batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "inner_lr": [Interval(Real, 0, None, closed="neither")],
        "inner_optimizer": [StrOptions({"sgd", "adam"})],
        "adapt_steps": [Interval(Integral, 0, None, closed="left")],
        "adapt_lr": [Interval(Real, 0, None, closed="neither"), None],
        "standardize": ["boolean"],
        "transductive": ["boolean"],
        "device": [str, torch.device],
        "n_threads": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "monitor_interval": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "checkpoint_path": [str, os.PathLike, None],
        "checkpoint_interval": [Interval(Integral, 1, None, closed="left")],
    }

    # ------------------------------------------------------------ the network
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, Integral):
            return (int(sizes),)
        sizes = tuple(int(s) for s in sizes)
        if any(s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive, got {self.hidden_layer_sizes}.")
        return sizes

    def _build_net(self, n_features, n_outputs, seed, input_shape=None):
        """The batched network and its initial flat weights, seeded by ``seed``.

        ``input_shape`` is the ``(channels, height, width)`` of image inputs.
        A user's module is checked here, at ``meta_fit`` (or at ``fit`` without
        it): it must have parameters, and map a batch of inputs
        ``(batch, n_features)`` to outputs ``(batch, n_outputs)``.
        """
        if self.module is None:
            net = BatchedMLP((n_features, *self._hidden_sizes(), n_outputs), self.activation)
            generator = torch.Generator().manual_seed(seed)
            return net, net.init_params(generator)
        # A user's module initialises itself from torch's global CPU generator:
        # seed that one alone for reproducibility, and restore it afterwards.
        # (torch.manual_seed would also reseed every CUDA device, for good.)
        with seeded_global_rng(seed):
            module = self._make_module(n_features, n_outputs, input_shape)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"module must build a torch.nn.Module from (n_features, n_outputs); "
                f"{self.module!r} returned {type(module).__name__}."
            )
        if not any(p.numel() for p in module.parameters()):
            raise ValueError(
                f"module={self.module!r} built a {type(module).__name__} without parameters: "
                "Reptile meta-learns the initial values of a network's parameters, so the "
                "module needs at least one."
            )
        net = BatchedModule(module.float())
        theta = net.init_params()
        # One forward pass on two dummy inputs (two: batch normalisation needs
        # more than one value per channel), as fit and predict will call it.
        try:
            with torch.no_grad():
                shape = tuple(net.predict(theta, torch.zeros(2, n_features)).shape)
        except Exception as exc:
            raise ValueError(
                f"module={self.module!r}, called as module(n_features={n_features}, "
                f"n_outputs={n_outputs}), failed on a batch of inputs of shape "
                f"(2, {n_features}): {exc}"
            ) from exc
        if shape != (2, n_outputs):
            raise ValueError(
                f"module={self.module!r}, called as module(n_features={n_features}, "
                f"n_outputs={n_outputs}), maps inputs of shape (2, {n_features}) to outputs "
                f"of shape {shape}; expected (2, {n_outputs}): one output per target "
                "(or per class) for each input."
            )
        return net, theta

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

    def _device(self):
        cache = self.__dict__.setdefault("_cache", {})
        if cache.get("device_param") != str(self.device):
            # A model loaded where its device is missing runs on the CPU (see _state.py).
            fallback = self._device_of_fallback()
            cache["device"] = fallback if fallback is not None else resolve_device(self.device)
            cache["device_param"] = str(self.device)
        return cache["device"]

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

    @contextlib.contextmanager
    def _unchanged_on_error(self):
        """Leave the estimator exactly as it was if the block raises (or is interrupted)."""
        saved = dict(self.__dict__)
        cache = dict(saved.get("_cache", {}))
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            if "_cache" in saved:
                self._cache = cache
            raise

    # ------------------------------------------------------ family hooks
    def _meta_training_tasks(self, task_sampler):
        """The sampler ``meta_fit`` draws from and the record of what it learns about the tasks."""
        return task_sampler, PlainTasks()

    def _meta_family_state(self):
        """The family's part of the meta-learned state, as :meth:`PlainTasks.state` gives it."""
        return {}

    # ------------------------------------------------------------- meta_fit
    def meta_fit(self, task_sampler: Any, validation_tasks: Sequence | None = None) -> Self:
        """Meta-learn an initialisation from tasks drawn from ``task_sampler``.

        Parameters
        ----------
        task_sampler : callable, sequence of (X, y) or TaskSampler
            Where tasks come from: a callable ``sampler(rng) -> (X, y)`` with
            ``rng`` a :class:`numpy.random.Generator`, a finite sequence of
            ``(X, y)`` tasks, or one of skreptile's samplers (such as
            :class:`~skreptile.SineTaskSampler`,
            :class:`~skreptile.GroupTaskSampler` or
            :class:`~skreptile.ClassTaskSampler`), which draw many tasks at once.
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
        with self._unchanged_on_error():
            run_meta_fit(self, task_sampler, validation_tasks)
        return self

    # ------------------------------------------------------------------ fit
    def _check_fit_preconditions(self):
        """Fail before ``fit`` changes anything: bad parameters, missing device, stale init."""
        self._validate_params_once()
        self._device()
        self._check_meta_config()

    def _validate_params_once(self):
        """``_validate_params``, skipped while the parameters are those last validated.

        scikit-learn validates the parameters at every ``fit`` (about 1 ms);
        adaptation is called over and over with the same ones.  The values
        validated last are remembered (the objects themselves: the constraints
        check types and ranges, which an object keeps for its life, or values
        that are immutable), and validation runs again when any of them is
        another object.  ``sklearn.set_config(skip_parameter_validation=True)``
        skips it altogether, as for scikit-learn's own estimators.
        """
        if get_config()["skip_parameter_validation"]:
            return
        cls = type(self)
        names = _PARAM_NAMES.get(cls)
        if names is None:
            names = _PARAM_NAMES[cls] = tuple(cls._get_param_names())
        state = self.__dict__
        values = tuple(state.get(name) for name in names)
        cache = state.setdefault("_cache", {})
        validated = cache.get("validated_params")
        if validated is not None and all(a is b for a, b in zip(validated, values)):
            return
        self._validate_params()
        cache["validated_params"] = values

    def _quick_X(self, X):
        """``X`` when it is plainly valid for a fitted model (what ``validate_data`` returns), else None.

        ``validate_data`` costs some 100 microseconds, most of it asking
        whether ``X`` is a data frame.  A float64 ndarray of finite values with
        the learned number of features, given to a model that learned no
        feature names, needs none of it; anything else goes through
        ``validate_data``, which checks and raises as before.
        """
        if (
            type(X) is np.ndarray
            and X.dtype == np.float64
            and X.ndim == 2
            and X.shape[0] >= 1
            and X.shape[1] == self.__dict__.get("n_features_in_", -1)
            and "feature_names_in_" not in self.__dict__
            and np.isfinite(X).all()
        ):
            return X
        return None

    def _fit(self, X, Y, info):
        """Adapt to validated flat ``X`` and encoded 2-D ``Y``; store ``params_``."""
        if self._is_meta_fitted():
            net, theta = self._net(), self.meta_params_
            scaling, state = self._scaling(), self._fit_optimizer_state()
        else:
            # Not meta-fitted: a plain network trained from a fresh random
            # initialisation, scaled by the data it is fitted on.
            seed = seed_from_random_state(self.random_state)
            init_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
            net, theta = self._build_net(
                X.shape[1], Y.shape[1], init_seed, self.__dict__.get("input_shape_")
            )
            inputs, targets = self._scaling_modes(self.__dict__.get("input_shape_"))
            scaling = Scaling.fit(X, Y, inputs=inputs, targets=targets)
            self.x_mean_, self.x_scale_, self.y_mean_, self.y_scale_ = scaling.as_tuple()
            self.n_outputs_ = Y.shape[1]
            self._cache = {}
            self._cache["net"] = net
            state = None
        device = self._device()
        # 'auto': the step size is halved on a task whose support loss diverged
        # or grew, as few_shot_predict and the choice on validation tasks do.
        rates = _selftune.backoff_rates(self, self._adapt_lr(len(X)))
        backend = choose_backend(
            net,
            "fit",
            device,
            optimizer=self.inner_optimizer,
            n_points=len(X),
            numpy_allowed=self._lean_fit_possible(net, device, len(X)),  # the tests' switch too
        )
        if backend.kind == "numpy":
            args = (
                self._lean_theta(),
                scaling.x(X).astype(np.float32),
                scaling.y(Y).astype(np.float32),
                self._adapt_steps(len(X)),
            )
        else:
            packed = PackedTasks(X[None], Y[None], None, scaling, device)
            theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32, device=device)
        loss = LOSSES[self._loss]
        for lr in rates:
            with fast_cpu_math(device, backend.work(1, len(X)), self.n_threads):
                if backend.kind == "numpy":
                    params, before, after = adapt_one(backend, loss, *args, lr)
                else:
                    ws, before, after = adapt_tasks(
                        net,
                        loss,
                        theta,
                        packed,
                        self._adapt_steps(len(X)),
                        self.inner_optimizer,
                        lr,
                        state,
                    )
            if not bool(_selftune.adaptation_failed(before, after).any()):
                break
        if len(rates) == 1:
            _selftune.check_adaptation(before, after, lr, stacklevel=4)
        if backend.kind == "numpy":
            self.params_ = params
            self.__dict__.pop("support_X_", None)
            self._set_fit_info(info)
            return self
        self.params_ = net.task_params(ws, 0).detach().cpu().numpy().copy()
        if self._support_context(net):
            # Non-transductive batch norm predicts every point with the support set.
            self.support_X_ = X.astype(np.float32)
        else:
            self.__dict__.pop("support_X_", None)
        self._set_fit_info(info)
        return self

    def _lean_fit_possible(self, net, device, n_points):
        """Whether ``fit`` takes the numpy engine (:func:`~skreptile._engine.choose_backend`).

        Only a meta-fitted model may: an unfitted one adapts a fresh torch
        initialisation.
        """
        backend = choose_backend(
            net,
            "fit",
            device,
            optimizer=self.inner_optimizer,
            n_points=n_points,
            numpy_allowed="meta_params_" in self.__dict__,
        )
        return backend.kind == "numpy"

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
        check_is_fitted(self)
        self._check_meta_config()
        device, net = self._device(), self._net()
        scaling = self._scaling()
        backend = choose_backend(
            net, "predict", device, n_points=len(X), numpy_allowed=not hasattr(self, "support_X_")
        )
        if backend.kind == "numpy":
            # The perceptron predicts in float64 on the CPU (see below), here in numpy.
            with fast_cpu_math(device, 0, self.n_threads):
                return backend.predict(self._lean_layers(net), scaling.x(X).astype(np.float64))
        params = self._cached_tensor("params_", device)
        x = torch.as_tensor(scaling.x(X), dtype=torch.float32, device=device)
        with torch.no_grad(), fast_cpu_math(device, net.work(1, max(len(X), 1)), self.n_threads):
            if self._support_context(net) and hasattr(self, "support_X_"):
                support = torch.as_tensor(
                    scaling.x(self.support_X_.astype(np.float64)),
                    dtype=torch.float32,
                    device=device,
                )
                out = self._with_support(net, params[None], support[None], x[None])[0]
            else:
                if device.type == "cpu" and isinstance(net, BatchedMLP):
                    # On the CPU the perceptron predicts in float64: BLAS picks
                    # kernels by matrix size, and in float32 a row's prediction
                    # would then depend (at 1e-6) on how many rows come with it.
                    params, x = params.double(), x.double()
                out = net.predict(params, x)
        return out.cpu().numpy().astype(np.float64)

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
