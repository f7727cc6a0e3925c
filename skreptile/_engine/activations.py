"""The activations, one table: every backend's forward and derivative, and torch's layer.

Each entry of :data:`ACTIVATIONS` holds what every engine needs of one
non-linearity: numpy's forward (in place) and derivative (from the
activation's output, as both hand-written backward passes use it), torch's
forward and backward (in place), and the ``torch.nn`` layer of an equivalent
``torch.nn.Sequential``.  The estimators' ``activation`` parameter accepts the
table's keys.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import expit
from torch import nn

_aten = torch.ops.aten


class Activation(NamedTuple):
    """One non-linearity, for every backend."""

    numpy_forward: Callable  # (z, out) -> None: f(z) into out
    numpy_derivative: Callable | None  # (h, out) -> None: f'(z) into out from h = f(z); None: 1
    torch_forward_: Callable  # (z) -> z: f(z) in place
    torch_backward_: Callable  # (grad, h) -> grad: grad * f'(z) in place, from h = f(z)
    layer: type  # the torch.nn layer


def _numpy_identity(z, out):
    if out is not z:
        out[...] = z


def _numpy_tanh_derivative(h, out):
    np.multiply(h, h, out=out)
    np.subtract(1.0, out, out=out)


def _numpy_logistic_derivative(h, out):
    np.subtract(1.0, h, out=out)
    np.multiply(out, h, out=out)


def _torch_tanh_(z):
    """tanh in place; on the CPU through numpy, on the tensor's own memory.

    Torch's CPU tanh runs at about 3.6 ns an element here (AMD EPYC, torch
    2.13), numpy's at 0.4, and tanh was the costliest operation of an
    adaptation step.
    """
    if z.device.type == "cpu" and z.dtype == torch.float32 and not z.requires_grad:
        array = z.numpy()
        np.tanh(array, out=array)
        return z
    return z.tanh_()


ACTIVATIONS = {
    "identity": Activation(_numpy_identity, None, lambda z: z, lambda grad, h: grad, nn.Identity),
    "logistic": Activation(
        expit,
        _numpy_logistic_derivative,
        lambda z: z.sigmoid_(),
        lambda grad, h: _aten.sigmoid_backward.grad_input(grad, h, grad_input=grad),
        nn.Sigmoid,
    ),
    "tanh": Activation(
        np.tanh,
        _numpy_tanh_derivative,
        _torch_tanh_,
        lambda grad, h: _aten.tanh_backward.grad_input(grad, h, grad_input=grad),
        nn.Tanh,
    ),
    "relu": Activation(
        lambda z, out: np.maximum(z, 0.0, out=out),
        lambda h, out: np.greater(h, 0.0, out=out),
        lambda z: z.relu_(),
        lambda grad, h: grad.masked_fill_(h <= 0, 0.0),
        nn.ReLU,
    ),
}


def numpy_derivative(h, out, activation):
    """``f'(z)`` into ``out``, from the activation's output ``h``; False for the identity."""
    derivative = ACTIVATIONS[activation].numpy_derivative
    if derivative is None:
        return False
    derivative(h, out)
    return True
