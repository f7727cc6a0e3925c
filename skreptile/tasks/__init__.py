"""Task samplers: where meta-training tasks come from.

``meta_fit`` accepts a callable ``sampler(rng) -> (X, y)``, a sequence of
``(X, y)`` tasks, or a :class:`~skreptile.TaskSampler` such as
:class:`~skreptile.SineTaskSampler`, which draws many tasks at once.
"""

from ._base import TaskError, TaskSampler
from ._class import ClassTaskSampler
from ._group import GroupTaskSampler
from ._sine import SineTaskSampler

__all__ = ["ClassTaskSampler", "GroupTaskSampler", "SineTaskSampler", "TaskError", "TaskSampler"]
