"""Honest few-shot evaluation on held-out tasks, against ordinary baselines.

The question a user of meta-learning has to answer is not "is the error low"
but "is it lower than what I would have done without it".  The functions here
answer it on held-out tasks: every task's points are split into a few support
points, on which the meta-learned model adapts and every baseline is fitted,
and query points, on which all are scored.  Means come with confidence
intervals over tasks, and paired differences with theirs.
"""

from ..tasks._split import split_support_query
from .baselines import default_baselines
from .mixed_baselines import LinearMixedModel, PooledRandomIntercept
from .results import FewShotResults, plot_few_shot
from .scoring import evaluate_few_shot

__all__ = [
    "FewShotResults",
    "LinearMixedModel",
    "PooledRandomIntercept",
    "default_baselines",
    "evaluate_few_shot",
    "plot_few_shot",
    "split_support_query",
]
