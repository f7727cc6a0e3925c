"""One task: ``fit``'s adaptation and the adapted network's outputs, on the engine's backends."""

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._engine import (
    LOSSES,
    BatchedMLP,
    PackedTasks,
    Scaling,
    adapt_one,
    adapt_tasks,
    choose_backend,
    fast_cpu_math,
)
from .._engine.prototypes import flat_head, task_heads
from .._training import selftune as _selftune
from ..tasks._base import seed_from_random_state
from .batch_adaptation import outputs_with_support


def fit_one_task(est, X, Y, info):
    """``fit`` of ``est``: adapt to validated flat ``X`` and encoded 2-D ``Y``; store ``params_``.

    The meta-learned initialisation (or, without ``meta_fit``, a fresh one) is
    adapted on the backend :func:`~skreptile._engine.choose_backend` picks,
    with the step size backing off on a diverging adaptation.
    """
    if est._is_meta_fitted():
        net, theta = est._net(), est.meta_params_
        scaling, state = est._scaling(), est._fit_optimizer_state()
    else:
        # Not meta-fitted: a plain network trained from a fresh random
        # initialisation, scaled by the data it is fitted on.
        seed = seed_from_random_state(est.random_state)
        init_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        net, theta = est._build_net(
            X.shape[1], Y.shape[1], init_seed, est.__dict__.get("input_shape_")
        )
        inputs, targets = est._scaling_modes(est.__dict__.get("input_shape_"))
        scaling = Scaling.fit(X, Y, inputs=inputs, targets=targets)
        est.x_mean_, est.x_scale_, est.y_mean_, est.y_scale_ = scaling.as_tuple()
        est.n_outputs_ = Y.shape[1]
        est._cache = {}
        est._cache["net"] = net
        state = None
    device = est._place("fit")
    # 'auto': the step size is halved on a task whose support loss diverged
    # or grew, as few_shot_predict and the choice on validation tasks do.
    rates = _selftune.backoff_rates(est, est._adapt_lr(est._support_size(Y)))
    backend = est._fit_backend(net, device, len(X))
    head_init = getattr(est, "head_init", None)
    if backend.kind == "numpy":
        args = (
            est._lean_theta(),
            scaling.x(X).astype(np.float32),
            scaling.y(Y).astype(np.float32),
            est._adapt_steps(est._support_size(Y)),
        )
        if head_init == "prototypes":
            args = (_with_prototype_head(net, *args[:3]),) + args[1:]
    else:
        packed = PackedTasks(X[None], Y[None], None, scaling, device)
        theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32, device=device)
    loss = LOSSES[est._loss]
    for lr in rates:
        with fast_cpu_math(device, backend.work(1, len(X)), est.n_threads):
            if backend.kind == "numpy":
                params, before, after = adapt_one(backend, loss, *args, lr)
            else:
                ws, before, after = adapt_tasks(
                    net,
                    loss,
                    theta,
                    packed,
                    est._adapt_steps(est._support_size(Y)),
                    est.inner_optimizer,
                    lr,
                    state,
                    head_init=head_init,
                )
        if not bool(_selftune.adaptation_failed(before, after).any()):
            break
    if len(rates) == 1:
        _selftune.check_adaptation(before, after, lr, stacklevel=5)
    if backend.kind == "numpy":
        est.params_ = params
        est.__dict__.pop("support_X_", None)
        est._set_fit_info(info)
        return est
    est.params_ = net.task_params(ws, 0).detach().cpu().numpy().copy()
    if est._support_context(net):
        # Non-transductive batch norm predicts every point with the support set.
        est.support_X_ = X.astype(np.float32)
    else:
        est.__dict__.pop("support_X_", None)
    est._set_fit_info(info)
    return est


def _with_prototype_head(net, theta, x, y):
    """A float32 copy of the perceptron's flat ``theta`` with its output layer from ``x``'s prototypes."""
    W, b = task_heads(
        net, torch.from_numpy(theta), torch.from_numpy(x)[None], torch.from_numpy(y)[None]
    )
    theta = theta.copy()
    theta[net.head_slice()] = flat_head(W[0], b[0]).numpy()
    return theta


def adapted_outputs(est, X):
    """Network outputs, in scaled units, of the adapted ``est`` on flat ``X``."""
    check_is_fitted(est)
    est._check_meta_config()
    device, net = est._place("predict"), est._net()
    scaling = est._scaling()
    backend = choose_backend(
        net, "predict", device, n_points=len(X), numpy_allowed=not hasattr(est, "support_X_")
    )
    if backend.kind == "numpy":
        # The perceptron predicts in float64 on the CPU (see below), here in numpy.
        with fast_cpu_math(device, 0, est.n_threads):
            return backend.predict(est._lean_layers(net), scaling.x(X).astype(np.float64))
    params = est._cached_tensor("params_", device)
    with_support = est._support_context(net) and hasattr(est, "support_X_")
    # On the CPU the perceptron predicts in float64: BLAS picks kernels by
    # matrix size, and in float32 a row's prediction would then depend (at
    # 1e-6) on how many rows come with it.  Its inputs are not rounded to
    # float32 on the way either, as the numpy backend of fewer rows does not.
    exact = device.type == "cpu" and isinstance(net, BatchedMLP) and not with_support
    x = torch.as_tensor(
        scaling.x(X), dtype=torch.float64 if exact else torch.float32, device=device
    )
    with torch.no_grad(), fast_cpu_math(device, net.work(1, max(len(X), 1)), est.n_threads):
        if with_support:
            support = torch.as_tensor(
                scaling.x(est.support_X_.astype(np.float64)),
                dtype=torch.float32,
                device=device,
            )
            out = outputs_with_support(net, params[None], support[None], x[None])[0]
        else:
            if exact:
                params = params.double()
            out = net.predict(params, x)
    return out.cpu().numpy().astype(np.float64)
