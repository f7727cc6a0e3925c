"""Machinery shared by the Reptile estimators: meta_fit, fit from the initialisation.

The learned state is kept in numpy arrays (``meta_params_``, ``params_`` and the
scaling statistics) so that estimators pickle, clone and move between machines
without torch objects; the torch network and the tensors on the device are a
cache rebuilt on demand.
"""

import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import _engine, _monitor
from ._batches import build_minibatches
from ._device import fast_cpu_math, resolve_device, seeded_global_rng
from ._losses import LOSSES
from ._networks import ACTIVATIONS, BatchedMLP, BatchedModule
from ._state import LearnedStateMixin
from .tasks._base import TaskStream, seed_from_random_state, stack_if_equal

# The first meta-training tasks, over which the scaling statistics are gathered.
N_STATS_TASKS = 256
# Upper bound on the floats of one chunk of minibatches moved to the device.
CHUNK_FLOATS = 1 << 21
MAX_CHUNK_ITERS = 256


def _scale_stats(X, y, standardize):
    """Per-feature and per-output mean and scale over all points of ``X`` and ``y``."""
    n_features, n_outputs = X.shape[-1], y.shape[-1]
    if not standardize:
        return np.zeros(n_features), np.ones(n_features), np.zeros(n_outputs), np.ones(n_outputs)
    X = X.reshape(-1, n_features)
    y = y.reshape(-1, n_outputs)

    def _safe_std(a):
        std = a.std(axis=0)
        # A constant column carries no scale: leave it unscaled rather than divide by 0.
        return np.where(std > 1e-12 * np.maximum(1.0, np.abs(a.mean(axis=0))), std, 1.0)

    return X.mean(axis=0), _safe_std(X), y.mean(axis=0), _safe_std(y)


def _concat_points(tasks):
    if isinstance(tasks, tuple):
        return tasks
    return np.concatenate([X for X, _ in tasks]), np.concatenate([y for _, y in tasks])


def _check_adaptation(loss_before, loss_after, lr):
    """Fail loudly when adaptation diverged instead of returning garbage predictions.

    Non-finite weights raise; a support loss that grew (gradient descent with a
    step size above the curvature's limit) warns, naming the step size.
    """
    if not bool(torch.isfinite(loss_after).all()):
        raise FloatingPointError(
            f"Adaptation diverged (non-finite loss on the training points); "
            f"adapt_lr={lr} is likely too large."
        )
    grew = loss_after > 1.5 * loss_before + 1e-6
    if bool(grew.any()):
        n_grew, n_tasks = int(grew.sum()), grew.numel()
        which = "the task" if n_tasks == 1 else f"{n_grew} of {n_tasks} tasks"
        warnings.warn(
            f"Adaptation increased the loss on the training points of {which} "
            f"(step size adapt_lr={lr} is likely too large for this initialisation; "
            "a longer meta_fit or a smaller adapt_lr helps).",
            ConvergenceWarning,
            stacklevel=4,
        )


class BaseReptile(LearnedStateMixin, BaseEstimator):
    """Shared implementation of :class:`ReptileRegressor` (and later classifiers)."""

    _loss = "squared_error"

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
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "monitor_interval": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "checkpoint_path": [str, os.PathLike, None],
        "checkpoint_interval": [Interval(Integral, 1, None, closed="left")],
    }

    # ------------------------------------------------------------------ helpers
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, Integral):
            return (int(sizes),)
        sizes = tuple(int(s) for s in sizes)
        if any(s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive, got {self.hidden_layer_sizes}.")
        return sizes

    def _build_net(self, n_features, n_outputs, seed):
        """The batched network and its initial flat weights, seeded by ``seed``.

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
            module = self._make_module(n_features, n_outputs)
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

    def _make_module(self, n_features, n_outputs):
        """The user's ``torch.nn.Module`` (a hook: the classifier adapts it to images)."""
        return self.module(n_features, n_outputs)

    def _scaling(self, X, Y):
        """``(x_mean, x_scale, y_mean, y_scale)`` of the points ``X``, ``Y`` (a hook)."""
        return _scale_stats(X, Y, self.standardize)

    def _net(self):
        """The network of the learned state, rebuilt after unpickling."""
        cache = self.__dict__.setdefault("_cache", {})
        if "net" not in cache:
            n_features = getattr(self, "n_features_meta_", None) or self.n_features_in_
            cache["net"], _ = self._build_net(n_features, self.n_outputs_, 0)
        return cache["net"]

    def _device(self):
        cache = self.__dict__.setdefault("_cache", {})
        if cache.get("device_param") != str(self.device):
            # A model loaded where its device is missing runs on the CPU (see _state.py).
            fallback = self._device_of_fallback()
            cache["device"] = fallback if fallback is not None else resolve_device(self.device)
            cache["device_param"] = str(self.device)
        return cache["device"]

    def _to_tensor(self, array, device):
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)

    # -------------------------------------------------------------- meta_fit
    def meta_fit(self, task_sampler, validation_tasks=None):
        """Meta-learn an initialisation from tasks drawn from ``task_sampler``.

        Parameters
        ----------
        task_sampler : callable, sequence of (X, y) or TaskSampler
            Where tasks come from: a callable ``sampler(rng) -> (X, y)`` with
            ``rng`` a :class:`numpy.random.Generator`, a finite sequence of
            ``(X, y)`` tasks, or one of skreptile's samplers (such as
            :class:`~skreptile.SineTaskSampler` or
            :class:`~skreptile.GroupTaskSampler`), which draw many tasks at once.
        validation_tasks : sequence of (X_support, y_support, X_query, y_query), default=None
            Held-out tasks scored every ``monitor_interval`` meta-iterations: the
            model adapts on the support points as :meth:`fit` does and its mean
            squared error on the query points goes into ``history_``; needed by
            ``early_stopping``.  :func:`skreptile.evaluation.split_support_query`
            makes them from whole tasks.

        Returns
        -------
        self : object
            The estimator with ``meta_params_`` learned; call :meth:`fit` to adapt.
        """
        self._validate_params()
        device = resolve_device(self.device)
        seed = seed_from_random_state(self.random_state)
        init_seed, batch_seed, task_seed = np.random.SeedSequence(seed).generate_state(3)
        stream = TaskStream(task_sampler, task_seed)
        batch_rng = np.random.default_rng(batch_seed)
        # Fresh start, warm start or resumption from a checkpoint.
        run = _monitor.MetaFitRun(self, stream, batch_rng, validation_tasks)

        if run.theta is None:
            if stream.kind == "sequence":
                stats_tasks = stream.tasks
            else:
                n_stats = max(1, min(N_STATS_TASKS, self.n_meta_iter * self.meta_batch_size))
                stats_tasks = stream.peek(n_stats)
            X_all, y_all = _concat_points(stats_tasks)
            n_features, n_outputs = stream.signature
            scaling = self._scaling(X_all, y_all)
            del X_all, y_all, stats_tasks
            net, theta = self._build_net(n_features, n_outputs, int(init_seed))
            run.start(scaling, (n_features, n_outputs))
        else:
            scaling, (n_features, n_outputs) = run.scaling, run.signature
            net, _ = self._build_net(n_features, n_outputs, int(init_seed))
            theta = torch.as_tensor(np.asarray(run.theta, dtype=np.float32))
        theta = theta.to(device)
        loss = LOSSES[self._loss]
        run.bind(net, loss, theta, device)
        chunks = self._chunks(stream, batch_rng, scaling, device, n_features, n_outputs, run)

        interrupted = False
        # Products of one inner step, to pick the CPU thread count (full-task
        # batches are sized as the demo's 50 points).
        work = net.work(self.meta_batch_size, self.inner_batch_size or 50)
        try:
            with fast_cpu_math(device, work), run:
                _engine.meta_train(
                    net,
                    loss,
                    theta,
                    chunks,
                    n_meta_iter=self.n_meta_iter,
                    meta_batch_size=self.meta_batch_size,
                    meta_lr=self.meta_lr,
                    meta_lr_schedule=self.meta_lr_schedule,
                    inner_steps=self.inner_steps,
                    inner_optimizer=self.inner_optimizer,
                    inner_lr=self.inner_lr,
                    start_iter=run.start_iter,
                    on_iteration=run.on_iteration,
                    loss_sums=run.loss_sums,
                )
        except _monitor.EarlyStop:
            pass
        except _engine.MetaDiverged as exc:
            raise FloatingPointError(
                f"Meta-training diverged: the weights became NaN or infinite by meta-iteration "
                f"{exc.args[0]}. The step sizes are likely too large for this data "
                f"(inner_lr={self.inner_lr}, meta_lr={self.meta_lr}"
                + (", standardize=False" if not self.standardize else "")
                + "); try smaller values"
                + (" or standardize=True" if not self.standardize else "")
                + ". The estimator was left unchanged."
            ) from None
        except KeyboardInterrupt:
            interrupted = True  # theta holds the last completed meta-iteration
        if interrupted:
            if not bool(torch.isfinite(theta).all()):
                raise FloatingPointError(
                    "meta_fit was interrupted and the weights were not finite; "
                    "the estimator was left unchanged."
                )
            run.interrupted()
            warnings.warn(
                "meta_fit was interrupted: keeping the weights of the last completed "
                "meta-iteration"
                + (" (the best validated ones: early_stopping=True)" if self.early_stopping else "")
                + (
                    f" (a checkpoint of it is in {self.checkpoint_path})."
                    if self.checkpoint_path is not None
                    else "."
                ),
                RuntimeWarning,
                stacklevel=2,
            )

        theta = run.final_theta(theta)
        self._set_meta_state(net, theta, scaling, n_features, n_outputs, device)
        run.finish(self, completed=not interrupted)
        return self

    def _chunks(self, stream, rng, scaling, device, n_features, n_outputs, run=None):
        """Yield device tensors of inner minibatches, a chunk of meta-iterations at a time.

        Chunks start at multiples of ``chunk_iters``, so that a run resumed from
        a checkpoint (``run.chunk_start``, ``run.start_iter``) draws the chunk it
        was in again and skips the meta-iterations already done.
        """
        x_mean, x_scale, y_mean, y_scale = scaling
        T, S = self.meta_batch_size, self.inner_steps
        per_iter = T * S * (self.inner_batch_size or 64) * (n_features + n_outputs)
        chunk_iters = max(1, min(MAX_CHUNK_ITERS, CHUNK_FLOATS // per_iter))
        iteration = 0 if run is None else run.chunk_start
        skip = 0 if run is None else run.start_iter - run.chunk_start
        while iteration < self.n_meta_iter:
            k = min(chunk_iters, self.n_meta_iter - iteration)
            if run is not None:
                run.on_chunk(iteration, stream, rng)
            tasks = stack_if_equal(stream.draw(k * T))
            xb, yb, weight = build_minibatches(rng, tasks, k, T, S, self.inner_batch_size)
            iteration += k
            if skip:
                xb, yb = xb[skip:], yb[skip:]
                weight = weight if isinstance(weight, float) else weight[skip:]
                skip, done = 0, skip >= k
                if done:
                    continue
            xb = self._to_tensor((xb - x_mean) / x_scale, device)
            yb = self._to_tensor((yb - y_mean) / y_scale, device)
            if not isinstance(weight, float):
                weight = self._to_tensor(weight, device)
            yield xb, yb, weight

    def _set_meta_state(self, net, theta, scaling, n_features, n_outputs, device):
        # Only now, after meta-training succeeded, does the estimator change.
        for attr in ("params_",):
            self.__dict__.pop(attr, None)
        self.meta_params_ = theta.detach().cpu().numpy().copy()
        self.x_mean_, self.x_scale_, self.y_mean_, self.y_scale_ = scaling
        self.n_features_meta_ = n_features
        self.n_outputs_ = n_outputs
        self.meta_config_ = self._meta_config()
        self._cache = {"net": net, "device": device, "device_param": str(self.device)}

    # ------------------------------------------------------------------- fit
    def _is_meta_fitted(self):
        return hasattr(self, "meta_params_")

    def _adapt(self, init, X, Y):
        """Adapt a copy of the flat weights ``init`` to ``X`` and ``Y``; return the result."""
        net = self._net()
        ws = self._adapt_tasks(init, X[None], Y[None])
        return net.task_params(ws, 0)

    def _adapt_tasks(self, init, X, Y):
        """Adapt one copy of ``init`` per task to stacked ``X (n_tasks, n, d)`` and ``Y``.

        All tasks are adapted together, as during meta-training; the result is
        the workspace holding every task's adapted weights.
        """
        device = self._device()
        net = self._net()
        x = self._to_tensor((X - self.x_mean_) / self.x_scale_, device)
        y = self._to_tensor((Y - self.y_mean_) / self.y_scale_, device)
        init = self._to_tensor(init, device)
        ws = net.workspace(len(X), init)
        net.broadcast(init, ws)
        lr = self.inner_lr if self.adapt_lr is None else self.adapt_lr
        optimizer = _engine.InnerOptimizer(self.inner_optimizer, lr, ws.params)
        loss = LOSSES[self._loss]
        weight = 1.0 / X.shape[1]
        with fast_cpu_math(device, net.work(*X.shape[:2])), torch.no_grad():
            loss_before = loss.value(net.forward_tasks(ws, x), y, weight)
            _engine.adapt(net, loss, ws, x, y, weight, self.adapt_steps, optimizer)
            loss_after = loss.value(net.forward_tasks(ws, x), y, weight)
        _check_adaptation(loss_before, loss_after, lr)
        return ws

    def _predict_tasks(self, ws, X):
        """Predictions, in scaled units, of every adapted task of ``ws`` on stacked ``X``."""
        x = self._to_tensor((X - self.x_mean_) / self.x_scale_, ws.params.device)
        with torch.no_grad(), fast_cpu_math(x.device, self._net().work(*X.shape[:2])):
            out = self._net().forward_tasks(ws, x)
        return out.cpu().numpy().astype(np.float64)

    def _predict_scaled(self, X):
        check_is_fitted(self)
        self._check_meta_config()
        device = self._device()
        net = self._net()
        # On the CPU the perceptron predicts in float64: BLAS picks kernels by
        # matrix size, and in float32 a row's prediction would then depend (at
        # 1e-6) on how many rows are predicted with it.  It costs microseconds.
        dtype = torch.float64 if device.type == "cpu" and isinstance(net, BatchedMLP) else None
        cache = self.__dict__.setdefault("_cache", {})
        params = cache.get("params")
        if params is None or params.device != device:
            params = cache["params"] = self._to_tensor(self.params_, device)
        x = self._to_tensor((X - self.x_mean_) / self.x_scale_, device)
        if dtype is not None:
            params, x = params.to(dtype), x.to(dtype)
        with torch.no_grad(), fast_cpu_math(device, net.work(1, len(X))):
            out = net.predict(params, x)
        return out.cpu().numpy().astype(np.float64)

    def __sklearn_is_fitted__(self):
        # Meta-fitted is not fitted: predictions come only after adaptation.
        return hasattr(self, "params_")

    def _check_fit_preconditions(self):
        """Fail before ``fit`` changes anything: bad parameters, missing device, stale init."""
        self._validate_params()
        self._device()
        self._check_meta_config()

    def _fit_scaled(self, X, Y):
        """Adapt to ``X`` and 2-D ``Y`` (already validated) and store ``params_``."""
        if self._is_meta_fitted():
            if X.shape[1] != self.n_features_meta_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but the meta-learned initialisation expects "
                    f"{self.n_features_meta_} (the tasks given to meta_fit)."
                )
            if Y.shape[1] != self.n_outputs_:
                raise ValueError(
                    f"y has {Y.shape[1]} outputs, but the meta-learned initialisation predicts "
                    f"{self.n_outputs_}."
                )
            init = self.meta_params_
        else:
            # Not meta-fitted: a plain network trained from a fresh random
            # initialisation, scaled by the data it is fitted on.
            seed = seed_from_random_state(self.random_state)
            init_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
            net, theta = self._build_net(X.shape[1], Y.shape[1], init_seed)
            init = theta.numpy()
            self.x_mean_, self.x_scale_, self.y_mean_, self.y_scale_ = self._scaling(X, Y)
            self.n_outputs_ = Y.shape[1]
            self._cache["net"] = net
        params = self._adapt(init, X, Y)
        self.params_ = params.detach().cpu().numpy().copy()
        self._cache["params"] = params
        return self

    def torch_module(self):
        """The adapted network as a plain ``torch.nn.Module`` on the CPU.

        Returns
        -------
        module : torch.nn.Module
            A copy of the network with the weights of the last :meth:`fit`,
            independent of the estimator.
        """
        check_is_fitted(self)
        return self._net().to_torch_module(torch.as_tensor(self.params_))
