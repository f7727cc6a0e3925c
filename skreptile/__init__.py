"""skreptile: Reptile meta-learning for scikit-learn.

Meta-learn, over many small related tasks, an initialisation from which a few
gradient steps fit a new task well; then use the model as any scikit-learn
estimator.
"""

from ._engine.device import cpu_threads
from ._estimators.classifier import ReptileClassifier
from ._estimators.learned_state import InconsistentVersionWarning
from ._estimators.regressor import ReptileRegressor
from ._version import __version__
from .tasks import ClassTaskSampler, GroupTaskSampler, SineTaskSampler, TaskError, TaskSampler

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
