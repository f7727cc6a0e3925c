"""Task samplers: where meta-training tasks come from.

See :mod:`skreptile.tasks._base` for the protocol any sampler follows.
"""

from ._base import TaskError, TaskSampler
from ._class import ClassTaskSampler
from ._sine import SineTaskSampler

__all__ = ["ClassTaskSampler", "SineTaskSampler", "TaskError", "TaskSampler"]
