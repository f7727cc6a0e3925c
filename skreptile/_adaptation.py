"""Adapt many held-out tasks at once and predict their query points.

Shared by :func:`skreptile.evaluation.evaluate_few_shot` and the validation of
``meta_fit``.  Tasks are padded to common sizes: padded support points weigh
nothing in the loss, padded query points are ignored.  The steps are those of
:meth:`ReptileRegressor.fit` (full batch, the inner optimiser, ``adapt_lr``),
taken once for all step counts asked for: the predictions after ``s`` steps
are read on the way to the largest count.
"""

import numpy as np
import torch

from . import _engine

# Tasks adapted together, to bound memory on large evaluations.
BLOCK_TASKS = 1024


def _pad(arrays, width):
    """Stack 2-D arrays of different lengths into ``(n, max_len, width)``, zero-padded."""
    longest = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), longest, width))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


class PackedTasks:
    """Support and query points of several tasks as padded, scaled device tensors.

    Parameters
    ----------
    supports, queries : list of (X, Y)
        Per task, ``X`` of shape (n, n_features) and ``Y`` of shape (n, n_outputs),
        in the units of the data.  ``queries`` may hold ``Y=None``.
    scaling : tuple of ndarray
        ``(x_mean, x_scale, y_mean, y_scale)`` of the estimator.
    device : torch.device
    """

    def __init__(self, supports, queries, scaling, device):
        x_mean, x_scale, y_mean, y_scale = scaling
        n_features, n_outputs = len(x_mean), len(y_mean)
        sizes = np.array([len(X) for X, _ in supports])
        xs = _pad([(X - x_mean) / x_scale for X, _ in supports], n_features)
        ys = _pad([(Y - y_mean) / y_scale for _, Y in supports], n_outputs)
        xq = _pad([(X - x_mean) / x_scale for X, _ in queries], n_features)
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        self.n_tasks = len(supports)
        self.xs, self.ys, self.xq = as_tensor(xs), as_tensor(ys), as_tensor(xq)
        if (sizes == sizes[0]).all():
            self.weight = 1.0 / float(sizes[0])
        else:
            valid = np.arange(xs.shape[1]) < sizes[:, None]
            self.weight = as_tensor((valid / sizes[:, None])[:, :, None])
        self.query_sizes = np.array([len(X) for X, _ in queries])


def adaptation_curve(net, loss, theta, packed, steps, optimizer, lr):
    """Scaled query predictions of every task after each number of steps in ``steps``.

    Parameters
    ----------
    net : BatchedMLP or BatchedModule
    loss : loss class of :mod:`skreptile._losses`
    theta : Tensor
        The initial flat weights, on the device of ``packed``.
    packed : PackedTasks
    steps : sequence of int
        Numbers of adaptation steps at which to predict.
    optimizer : {"sgd", "adam"}
    lr : float

    Returns
    -------
    predictions : dict
        ``{n_steps: ndarray (n_tasks, n_query, n_outputs)}`` in scaled units;
        not finite for tasks whose adaptation diverged.
    """
    wanted = sorted({int(s) for s in steps})
    ws = net.workspace(packed.n_tasks, theta)
    net.broadcast(theta, ws)
    inner = _engine.InnerOptimizer(optimizer, lr, ws.params)
    out = {}

    def predict_when_wanted(step, ws):
        # A task whose adaptation diverged predicts NaN or infinity; callers decide.
        if step in wanted:
            with torch.no_grad():
                out[step] = net.forward_tasks(ws, packed.xq).cpu().numpy().astype(np.float64)

    _engine.adapt(
        net,
        loss,
        ws,
        packed.xs,
        packed.ys,
        packed.weight,
        wanted[-1],
        inner,
        on_step=predict_when_wanted,
    )
    return out
