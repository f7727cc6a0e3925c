"""The estimators' networks: the perceptron of the parameters, or the user's module, checked."""

import torch

from .._engine import BatchedMLP, BatchedModule, seeded_global_rng


def has_batch_norm(net):
    """Whether the network normalises over the batch (so predictions depend on the batch)."""
    module = getattr(net, "module", None)
    return module is not None and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()
    )


def build_network(
    module, make_module, hidden_sizes, activation, n_features, n_outputs, seed, input_shape=None
):
    """The engine's network and its initial flat weights, seeded by ``seed``.

    ``module`` is the estimator's parameter (None: the perceptron of
    ``hidden_sizes`` and ``activation``); ``make_module(n_features,
    n_outputs, input_shape)`` builds the user's module from it.
    ``input_shape`` is the ``(channels, height, width)`` of image inputs.
    A user's module is checked here, at ``meta_fit`` (or at ``fit`` without
    it): it must have parameters, and map a batch of inputs
    ``(batch, n_features)`` to outputs ``(batch, n_outputs)``.
    """
    if module is None:
        net = BatchedMLP((n_features, *hidden_sizes, n_outputs), activation)
        generator = torch.Generator().manual_seed(seed)
        return net, net.init_params(generator)
    # A user's module initialises itself from torch's global CPU generator:
    # seed that one alone for reproducibility, and restore it afterwards.
    # (torch.manual_seed would also reseed every CUDA device, for good.)
    with seeded_global_rng(seed):
        built = make_module(n_features, n_outputs, input_shape)
    if not isinstance(built, torch.nn.Module):
        raise TypeError(
            f"module must build a torch.nn.Module from (n_features, n_outputs); "
            f"{module!r} returned {type(built).__name__}."
        )
    if not any(p.numel() for p in built.parameters()):
        raise ValueError(
            f"module={module!r} built a {type(built).__name__} without parameters: "
            "Reptile meta-learns the initial values of a network's parameters, so the "
            "module needs at least one."
        )
    net = BatchedModule(built.float())
    theta = net.init_params()
    # One forward pass on two dummy inputs (two: batch normalisation needs
    # more than one value per channel), as fit and predict will call it.
    try:
        with torch.no_grad():
            shape = tuple(net.predict(theta, torch.zeros(2, n_features)).shape)
    except Exception as exc:
        raise ValueError(
            f"module={module!r}, called as module(n_features={n_features}, "
            f"n_outputs={n_outputs}), failed on a batch of inputs of shape "
            f"(2, {n_features}): {exc}"
        ) from exc
    if shape != (2, n_outputs):
        raise ValueError(
            f"module={module!r}, called as module(n_features={n_features}, "
            f"n_outputs={n_outputs}), maps inputs of shape (2, {n_features}) to outputs "
            f"of shape {shape}; expected (2, {n_outputs}): one output per target "
            "(or per class) for each input."
        )
    return net, theta
