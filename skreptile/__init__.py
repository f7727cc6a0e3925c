"""skreptile: Reptile meta-learning for scikit-learn.

Meta-learn, over many small related tasks, an initialisation from which a few
gradient steps fit a new task well; then use the model as any scikit-learn
estimator.
"""

from ._classifier import ReptileClassifier
from ._doc_link import link_to_api_reference
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

# The "?" of the HTML display links to the estimator's page in skreptile's API reference.
# (Here rather than in the classes until the estimator modules' refactoring lands.)
link_to_api_reference(ReptileClassifier, ReptileRegressor)
del link_to_api_reference

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
]
