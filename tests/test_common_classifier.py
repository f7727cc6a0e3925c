"""scikit-learn's common estimator checks for ReptileClassifier.

Never meta-fitted, the classifier is a plain neural-network classifier trained
from a random initialisation by ``fit``; that is what these checks exercise,
with the default perceptron and with a custom module that has batch
normalisation (predicted non-transductively, so that predictions do not depend
on which other points share the batch).
"""

from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from skreptile import ReptileClassifier


class BatchNormMLP(nn.Sequential):
    """A perceptron with batch normalisation (top-level, so that it pickles)."""

    def __init__(self, n_features, n_outputs):
        super().__init__(
            nn.Linear(n_features, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, n_outputs)
        )


# The default device, as for the regressor (tests/test_common.py): the checks
# call fit and predict only, which device="auto" runs on the CPU on any host.
@parametrize_with_checks(
    [
        ReptileClassifier(random_state=0),
        ReptileClassifier(module=BatchNormMLP, random_state=0),
    ]
)
def test_sklearn_compatible_classifier(estimator, check):
    check(estimator)
