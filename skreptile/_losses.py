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


LOSSES = {"squared_error": SquaredError}
