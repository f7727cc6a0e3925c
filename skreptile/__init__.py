"""skreptile: Reptile meta-learning for scikit-learn.

Meta-learn, over many small related tasks, an initialisation from which a few
gradient steps fit a new task well; then use the model as any scikit-learn
estimator.
"""

from ._classifier import ReptileClassifier
from ._device import cpu_threads
from ._regressor import ReptileRegressor
from ._state import InconsistentVersionWarning
from ._version import __version__
from .tasks import (
    ClassTaskSampler,
    GroupTaskSampler,
    SineTaskSampler,
    TaskError,
    TaskSampler,
)

__all__ = [
    "ClassTaskSampler",
    "GroupTaskSampler",
    "InconsistentVersionWarning",
    "ReptileClassifier",
    "ReptileRegressor",
    "SineTaskSampler",
    "TaskError",
    "TaskSampler",
    "__version__",
    "cpu_threads",
]
