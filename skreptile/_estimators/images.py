"""Image inputs: flat rows for the engine, image tensors for the user's network."""

import inspect

import numpy as np
import torch
from sklearn.utils.validation import check_array


def normalise_shape(shape):
    """``(channels, height, width)`` from a 3- or 2-element shape (None stays None)."""
    if shape is None:
        return None
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"input_shape must be (channels, height, width) or (height, width); got {shape}."
        )
    return shape


class ImageInput(torch.nn.Module):
    """Feeds flat inputs ``(..., n_features)`` to a network of images ``(..., C, H, W)``."""

    def __init__(self, net, shape):
        super().__init__()
        self.net = net
        self.shape = tuple(shape)

    def forward(self, x):
        return self.net(x.reshape(*x.shape[:-1], *self.shape))


def accepts_input_shape(factory):
    """Whether ``factory`` takes an ``input_shape`` keyword."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "input_shape" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def ndim(X):
    """Dimensions of array-likes and nested lists, None for anything else (left to validation)."""
    if hasattr(X, "ndim"):
        return X.ndim
    if isinstance(X, (list, tuple)):
        try:
            return np.ndim(X)
        except ValueError:
            return None
    return None


def flatten_images(X, expected):
    """Flat ``X`` from images ``(n, C, H, W)`` and their shape; other ``X`` as given.

    ``expected`` is the image shape the model was built for (None: any).
    """
    if ndim(X) != 4:
        return X, expected
    X = check_array(X, allow_nd=True, dtype=np.float64)
    shape = tuple(X.shape[1:])
    if expected is not None and shape != expected:
        raise ValueError(f"X has images of shape {shape}, but the model expects {expected}.")
    return X.reshape(len(X), -1), shape


def image_module(factory, n_features, n_outputs, input_shape):
    """``factory(n_features, n_outputs[, input_shape=...])``, fed images when ``input_shape`` is set."""
    kwargs = {}
    if input_shape is not None and accepts_input_shape(factory):
        kwargs["input_shape"] = input_shape
    module = factory(n_features, n_outputs, **kwargs)
    if not isinstance(module, torch.nn.Module):
        return module  # the estimator's base class reports it
    # Batch normalisation uses batch statistics only: BatchedModule sees to it.
    if input_shape is not None:
        if int(np.prod(input_shape)) != n_features:
            raise ValueError(
                f"input_shape={input_shape} has {int(np.prod(input_shape))} values, but the "
                f"inputs have {n_features} features."
            )
        module = ImageInput(module, input_shape)
    return module
