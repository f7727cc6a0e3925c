"""Step sizes that follow the data: a curvature bound on the inner and adaptation steps.

Gradient descent on a loss whose Hessian has largest eigenvalue ``lambda``
diverges once the step size exceeds ``2 / lambda``; ``lambda`` grows with the
number and the correlation of the features, heavy tails and the network's
width, so no fixed step size is safe on every table.  Before meta-training,
:func:`sharpness` estimates ``lambda`` on inner minibatches of the first
tasks at the initial weights (power iteration on finite-difference
Hessian-vector products of the loss gradient), and the run uses

    ``inner_lr_ = min(inner_lr, SAFETY / lambda_max)``

with ``SAFETY = 1`` (half the stability limit, room for the curvature to grow
during meta-training); the adaptation step size shrinks by the same factor.
If meta-training diverges all the same, it restarts with both step sizes
halved (at most ``MAX_BACKOFFS`` times).  On the sine demo the bound is far
above the defaults, which are then used unchanged.
"""

import numpy as np
import torch

from ._networks import Workspace

SAFETY = 1.0
MAX_BACKOFFS = 4
N_CURVATURE_TASKS = 32
N_POWER_ITER = 10


def _grad_rows(net, ws):
    """Every task's flat gradient ``(n_tasks, n_params)``, read through the workspace's views."""
    swapped = Workspace(ws.n_tasks, ws.grad, ws.params, ws.grad_views, ws.param_views)
    return net.all_task_params(swapped).clone()


def sharpness(net, loss, theta, x, y, weight, n_iter=N_POWER_ITER, seed=0):
    """Largest Hessian eigenvalue of each task's loss at ``theta``, shape ``(n_tasks,)``.

    ``x`` is ``(n_tasks, n_points, n_in)``.  Power iteration with Hessian-vector
    products ``(g(theta + h v) - g(theta)) / h``.
    """
    n_tasks = x.shape[0]
    ws = net.workspace(n_tasks, theta)
    net.broadcast(theta, ws)
    base = net.all_task_params(ws).clone()
    with torch.no_grad():
        net.gradient(ws, x, y, weight, loss)
        g0 = _grad_rows(net, ws)
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(base.shape, generator=gen).to(base)
        v /= v.norm(dim=1, keepdim=True)
        lam = torch.zeros(n_tasks, dtype=base.dtype, device=base.device)
        h = 1e-3 * max(1.0, float(base.norm(dim=1).mean()))
        for _ in range(n_iter):
            net.set_task_params(ws, base + h * v)
            net.gradient(ws, x, y, weight, loss)
            hv = (_grad_rows(net, ws) - g0) / h
            lam = (hv * v).sum(1)
            norm = hv.norm(dim=1, keepdim=True)
            v = hv / norm.clamp_min(1e-12)
    lam = lam.detach().cpu().numpy().astype(np.float64)
    return np.where(np.isfinite(lam), lam, np.inf)


def curvature_tasks(tasks, batch_size, n_tasks=N_CURVATURE_TASKS):
    """Stacked ``(x, y)`` of one inner minibatch (the first rows) of up to ``n_tasks`` tasks."""
    tasks = list(tasks)[:n_tasks]
    m = min(min(len(X) for X, _ in tasks), batch_size or 10**9)
    X = np.stack([np.asarray(X, dtype=np.float64).reshape(len(X), -1)[:m] for X, _ in tasks])
    Y = np.stack([np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:m] for _, y in tasks])
    return X, Y, m


def safe_scale(net, loss, theta, tasks, scaling, encode, lr, batch_size, device):
    """The factor (at most 1) by which ``lr`` is shrunk: ``min(1, SAFETY / (lr * lambda_max))``.

    Returns ``(factor, lambda_max)``.
    """
    X, Y, m = curvature_tasks(tasks, batch_size)
    Y = encode(Y)
    x = torch.as_tensor(scaling.x(X.reshape(-1, X.shape[-1])).reshape(X.shape), dtype=torch.float32)
    y = torch.as_tensor(scaling.y(Y.reshape(-1, Y.shape[-1])).reshape(Y.shape), dtype=torch.float32)
    lam = sharpness(net, loss, theta, x.to(device), y.to(device), 1.0 / m)
    lam_max = float(np.max(lam))
    if not np.isfinite(lam_max) or lam_max <= 0:
        return 1.0, lam_max
    return min(1.0, SAFETY / (lr * lam_max)), lam_max
