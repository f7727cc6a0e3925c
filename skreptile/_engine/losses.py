"""Per-task losses with their gradient with respect to the network outputs.

Every loss is a weighted sum over a task's points: ``weight`` is ``1 / n_points``
(a float) when all tasks use the same number of points, or a
``(n_tasks, n_points, 1)`` tensor with zeros on padding when they do not.
"""

import torch


class SquaredError:
    """Mean squared error over points and outputs, as ``(f(x) - y).pow(2).mean()``."""

    name = "squared_error"

    @staticmethod
    def value(outputs, y, weight):
        """Loss of each task (summed over its points, weighted), shape ``(...)``."""
        return ((outputs - y).pow(2) * weight).sum((-2, -1)) / outputs.shape[-1]

    @staticmethod
    def output_grad(outputs, y, weight, out=None):
        """d(loss)/d(outputs) for every task at once (into ``out`` when given)."""
        scale = 2.0 / outputs.shape[-1]
        diff = torch.sub(outputs, y, out=out) if out is not None else outputs - y
        if isinstance(weight, float):
            return diff.mul_(scale * weight)
        return diff.mul_(weight).mul_(scale)


class CrossEntropy:
    """Softmax cross-entropy against one-hot targets ``y`` of shape ``(..., n_points, n_classes)``.

    Targets stay one-hot floats (rather than class indices) so that padded
    points, all-zero rows with zero weight, drop out exactly as for the
    squared error.
    """

    name = "cross_entropy"

    @staticmethod
    def value(outputs, y, weight):
        """Loss of each task (summed over its points, weighted), shape ``(...)``."""
        nll = -(torch.log_softmax(outputs, dim=-1) * y).sum(-1, keepdim=True)
        return (nll * weight).sum((-2, -1))

    @staticmethod
    def output_grad(outputs, y, weight, out=None):
        """``(softmax(outputs) - y) * weight``, stable for large logits (into ``out`` when given)."""
        if out is None:
            out = torch.empty_like(outputs)
        # softmax(z) = exp(z - max z) / sum exp(z - max z), written into ``out``.
        torch.sub(outputs, outputs.amax(dim=-1, keepdim=True), out=out)
        out.exp_()
        out.div_(out.sum(dim=-1, keepdim=True))
        out.sub_(y)
        return out.mul_(weight)


LOSSES = {"squared_error": SquaredError, "cross_entropy": CrossEntropy}
