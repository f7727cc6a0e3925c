"""The output layer set from class prototypes before adaptation (Proto-MAML).

Triantafillou et al. (2020, "Meta-Dataset", section 3) start each task's
adaptation with the output layer that makes the network a nearest-centroid
classifier of its penultimate features ``z``: with ``c_k`` the mean feature
vector of class ``k``'s support points,

    W_k = 2 c_k,    b_k = -||c_k||^2,

so that ``W_k z + b_k = ||z||^2 - ||z - c_k||^2``: the softmax ranks the
classes as the squared Euclidean distances to their centroids do.

:func:`prototype_head` is the formula; :func:`task_heads` gathers a
meta-batch's points (full batches, or one minibatch a step) and asks the
network (:meth:`~skreptile._engine.torch_mlp.BatchedMLP.features`, or
:class:`~skreptile._engine.torch_module.BatchedModule`'s) for their features
at the shared starting weights; backends then write the heads into their task
slots (``set_heads``).  No gradient flows through the prototypes (first order).
"""

import torch

HEAD_INITS = ("meta", "prototypes")

# Below the smallest bias of the present classes, the bias of an output that
# has no support point (a task with fewer classes than outputs): its logit
# starts that far below every present class's for non-negative features (ReLU's),
# its softmax share is then exp(-EMPTY_MARGIN) = 0 in float32, so its gradient
# is zero and it stays there.  Finite, so that no softmax meets inf - inf.
EMPTY_MARGIN = 1e4


def prototype_head(features, onehot, mask=None):
    """Output weights and biases from class means of penultimate features.

    Parameters
    ----------
    features : Tensor of shape (n_tasks, n_points, d)
    onehot : Tensor of shape (n_tasks, n_points, n_way)
        One-hot targets (the class of every point).
    mask : Tensor of shape (n_tasks, n_points) or None
        Which points count (padding excluded).

    Returns
    -------
    W : Tensor of shape (n_tasks, n_way, d)
        ``2 c_k``; zero for a class without points.
    b : Tensor of shape (n_tasks, n_way)
        ``-||c_k||^2``; for a class without points, the smallest present bias
        minus :data:`EMPTY_MARGIN`.
    """
    onehot = onehot.to(features.dtype)
    if mask is not None:
        onehot = onehot * mask.to(features.dtype)[..., None]
    counts = onehot.sum(1)  # (n_tasks, n_way)
    present = counts > 0
    sums = torch.bmm(onehot.transpose(1, 2), features)  # (n_tasks, n_way, d)
    centroids = sums / counts.clamp(min=1)[..., None]
    W = 2.0 * centroids
    b = -(centroids * centroids).sum(-1)
    if not bool(present.all()):
        lowest = torch.where(present, b, torch.full_like(b, float("inf"))).amin(1, keepdim=True)
        lowest = torch.where(torch.isfinite(lowest), lowest, torch.zeros_like(lowest))
        b = torch.where(present, b, lowest - EMPTY_MARGIN)
    return W, b


def task_points(a, per_step):
    """A meta-batch's arrays as ``(n_tasks, n_points, ...)``: minibatches of all steps together."""
    if not per_step:
        return a
    a = a.transpose(0, 1)  # (n_tasks, n_steps, batch, ...)
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:])


def task_heads(net, theta, x, y, weight=None):
    """Every task's prototype head at the shared weights ``theta``: ``(W, b)``.

    ``x`` is ``(n_tasks, n_points, n_in)`` (full batch) or ``(n_steps,
    n_tasks, batch, n_in)`` (one minibatch a step: the prototypes are then
    the means over all the task's minibatches), ``y`` its one-hot targets
    laid out alike; ``weight`` a float or the per-point weights (zero on
    padding).  ``net`` is a torch backend with ``features``.
    """
    per_step = x.dim() == 4
    with torch.no_grad():
        points = task_points(x, per_step)
        onehot = task_points(y, per_step)
        mask = None
        if torch.is_tensor(weight):
            mask = task_points(weight, per_step).reshape(points.shape[:2]) > 0
        return prototype_head(net.features(theta, points), onehot, mask)


def flat_head(W, b):
    """One task's head ``(W (n_way, d), b (n_way,))`` as the perceptron's last ``[W; b]`` block.

    The perceptron's flat weights end with the output layer's ``W`` as ``(d,
    n_way)`` and its bias: this vector replaces their last ``(d + 1) * n_way``
    values.
    """
    return torch.cat([W.t().reshape(-1), b.reshape(-1)])
