"""Tasks packed into device tensors for adaptation: one structure for every caller.

``fit`` (one task), batched few-shot prediction, :func:`evaluate_few_shot`
and the validation of ``meta_fit`` all adapt through :class:`PackedTasks`.
Tasks of equal sizes are stacked as they are (the fast path); tasks of
different sizes are zero-padded, the padded support points weighing nothing in
the loss and padded query points ignored.  Meta-training minibatches
(:mod:`skreptile._engine.minibatches`) use the same padding.
"""

from typing import NamedTuple

import numpy as np
import torch

from .scaling import Scaling


def pad_stack(arrays, width):
    """Stack 2-D arrays of different lengths into ``(n, longest, width)``, zero-padded."""
    longest = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), longest, width))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def _stack(arrays, width):
    """``(n, length, width)`` and the lengths, from a 3-D array or a list of 2-D arrays."""
    if isinstance(arrays, np.ndarray) and arrays.ndim == 3:
        return arrays, np.full(len(arrays), arrays.shape[1])
    sizes = np.array([len(a) for a in arrays])
    if (sizes == sizes[0]).all():
        return np.stack(arrays), sizes
    return pad_stack(arrays, width), sizes


class PackedTasks:
    """Support (and query) points of several tasks as scaled, padded device tensors.

    Parameters
    ----------
    X_support, Y_support : ndarray (n_tasks, n, d) or list of 2-D ndarray
        Per task, inputs and encoded 2-D targets, in the units of the data.
    X_query : ndarray, list of 2-D ndarray or None
        Per task, the points to predict.
    scaling : Scaling
    device : torch.device

    Attributes
    ----------
    xs, ys, xq : Tensor
        Scaled, padded support inputs and targets and query inputs.
    weight : float or Tensor of shape (n_tasks, n_support, 1)
        Weight of every support point in its task's loss (``1 / n`` or 0 on padding).
    support_sizes, query_sizes : ndarray of int
    ragged : bool
        Whether the support sets differ in size.
    """

    def __init__(self, X_support, Y_support, X_query, scaling, device):
        n_features, n_outputs = len(scaling.x_mean), len(scaling.y_mean)
        xs, self.support_sizes = _stack(X_support, n_features)
        ys, _ = _stack(Y_support, n_outputs)
        self.n_tasks = len(xs)
        self.xs = self._tensor(scaling.x(xs), device)
        self.ys = self._tensor(scaling.y(ys), device)
        sizes = self.support_sizes
        self.ragged = bool((sizes != sizes[0]).any())
        if not self.ragged:
            self.weight = 1.0 / float(sizes[0])
        else:
            valid = np.arange(xs.shape[1]) < sizes[:, None]
            self.weight = self._tensor((valid / sizes[:, None])[:, :, None], device)
        self.xq = self.query_sizes = None
        if X_query is not None:
            xq, self.query_sizes = _stack(X_query, n_features)
            self.xq = self._tensor(scaling.x(xq), device)

    @staticmethod
    def _tensor(array, device):
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=device)

    def subset(self, index):
        """The tasks ``index`` (an array of task numbers) as a new PackedTasks."""
        part = object.__new__(PackedTasks)
        part.n_tasks = len(index)
        t = torch.as_tensor(index, device=self.xs.device)
        part.support_sizes = self.support_sizes[index]
        n = int(part.support_sizes.max())
        part.xs, part.ys = self.xs[t, :n], self.ys[t, :n]
        part.ragged = bool((part.support_sizes != part.support_sizes[0]).any())
        if isinstance(self.weight, float):
            part.weight = self.weight
        elif not part.ragged:
            part.weight = 1.0 / float(part.support_sizes[0])
        else:
            part.weight = self.weight[t, :n]
        part.xq = part.query_sizes = None
        if self.xq is not None:
            part.query_sizes = self.query_sizes[index]
            part.xq = self.xq[t, : int(part.query_sizes.max())]
        return part


class Initialisation(NamedTuple):
    """Everything adaptation starts from: the learned state, or meta-training's current one."""

    net: object
    theta: torch.Tensor
    scaling: Scaling
    device: torch.device
    optimizer_state: dict | None
