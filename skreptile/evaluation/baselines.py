"""Baselines of few-shot evaluation: the standard ones, and every baseline fitted on every task.

A baseline answers "what would I have done without meta-learning": an ordinary
estimator fitted on a task's support points alone.
:func:`~skreptile.evaluation.default_baselines` gives the usual ones;
``baseline_scores`` fits a fresh clone of each on every task and scores it on
the task's query points.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .._estimators.base import BaseReptile
from .metrics import _prediction

__all__ = ["default_baselines"]  # baseline_items and baseline_scores serve evaluate_few_shot


class _NearestCentroid(NearestCentroid):
    """``NearestCentroid`` whose probabilities exist with one example per class.

    scikit-learn scales its probabilities' distances by the within-class
    deviation, computed over ``n_samples - n_classes`` degrees of freedom: NaN
    with one example per class.  A zero deviation leaves a feature unscaled,
    as scikit-learn does for constant features.  ``predict`` is unchanged.
    """

    def fit(self, X, y):
        # The 0 / 0 is repaired below; a constant feature (a blank border pixel) is left
        # unscaled, which scikit-learn warns of on every task.
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "self.within_class_std_dev_ has at least 1 zero")
            super().fit(X, y)
        if hasattr(self, "within_class_std_dev_"):
            self.within_class_std_dev_ = np.nan_to_num(self.within_class_std_dev_)
        return self


# Name: factory of a fresh, unfitted estimator.  A new standard baseline is a new row.
# Every one must fit a support set of one example per class (or one point).
_DEFAULTS: dict[str, dict[str, Callable[[], Any]]] = {
    "classifier": {
        "1-NN": lambda: KNeighborsClassifier(n_neighbors=1),
        "nearest centroid": _NearestCentroid,
        # Standardised so that the default penalty (C=1) means the same whatever the
        # features' units; max_iter is generous because a few points converge slowly.
        "logistic regression": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=1000)
        ),
    },
    "regressor": {
        "support mean": DummyRegressor,
        "ridge": lambda: make_pipeline(StandardScaler(), Ridge()),
    },
}


def default_baselines(*, classifier: bool) -> dict[str, Any]:
    """Return the standard baselines of few-shot evaluation, fresh and unfitted.

    What ``evaluate_few_shot(..., baselines="auto")`` uses.  For classifiers:
    ``"1-NN"`` (the support example nearest to each query point),
    ``"nearest centroid"`` (the class whose support mean is nearest) and
    ``"logistic regression"`` (standardised inputs, default penalty), all on
    the inputs as the model sees them, images flattened to rows.  For
    regressors: ``"support mean"`` (the mean of the support targets) and
    ``"ridge"`` (standardised inputs, ``alpha=1``).  Every one fits a support
    set with a single example per class (or a single point).

    Parameters
    ----------
    classifier : bool
        Whether the baselines are for classification (True) or regression.

    Returns
    -------
    baselines : dict of str to estimator
        Baseline names and new estimators, to pass as ``baselines=`` (add to it
        or remove from it freely).

    Examples
    --------
    >>> from skreptile.evaluation import default_baselines
    >>> list(default_baselines(classifier=True))
    ['1-NN', 'nearest centroid', 'logistic regression']
    """
    table = _DEFAULTS["classifier" if classifier else "regressor"]
    return {name: make() for name, make in table.items()}


def baseline_items(baselines, classifier):
    """``(name, estimator)`` pairs from ``baselines=``; ``classifier`` is None without a model."""
    if isinstance(baselines, str):
        if baselines != "auto":
            raise ValueError(
                "baselines must be 'auto', a dict of names to estimators, a list of "
                f"estimators or None, got {baselines!r}."
            )
        if classifier is None:
            raise ValueError(
                "baselines='auto' takes its baselines from the model (classifier or regressor), "
                "but model is None. Pass default_baselines(classifier=True) (or False) instead."
            )
        return list(default_baselines(classifier=classifier).items())
    if baselines is None:
        return []
    if isinstance(baselines, Mapping):
        return list(baselines.items())
    items, seen = [], {}
    for est in baselines:
        name = type(est).__name__
        seen[name] = seen.get(name, 0) + 1
        items.append((name if seen[name] == 1 else f"{name} #{seen[name]}", est))
    return items


def _takes_images(est):
    """skreptile's own estimators read images as they are; others want rows of features."""
    if isinstance(est, Pipeline):
        est = est.steps[-1][1]
    return isinstance(est, BaseReptile)


def _failure(name, index, ys, classifier, exc):
    """The message of a baseline that cannot fit or predict a task."""
    what = f"{len(ys)} support point(s)"
    fix = "Leave it out of baselines, or give it tasks it can fit."
    if classifier:
        classes = np.unique(ys)
        shown = classes.tolist() if len(classes) <= 10 else f"{len(classes)} classes"
        what += f", {len(classes)} class(es): {shown}"
        if len(classes) < 2:
            fix = (
                "It may need at least 2 classes in every support set: give a larger "
                "n_support, or split the tasks so that each class has support points. " + fix
            )
    return f"Baseline {name!r} failed on task {index} ({what}): {str(exc).rstrip('.')}. {fix}"


def baseline_scores(items, tasks, metric_fn, classifier, proba):
    """Every baseline's score on every task: a fresh clone fitted on the support points.

    Images (``(n, C, H, W)`` inputs) are flattened to rows for all but
    skreptile's estimators.  ``proba``: whether the metric reads a
    classifier's probabilities.  A baseline that fails on a task raises a
    ``ValueError`` naming the baseline and the task.
    """
    scores = {}
    for name, est in items:
        flatten = not _takes_images(est)
        values = []
        for index, (Xs, ys, Xq, yq) in enumerate(tasks):
            if flatten and Xs.ndim > 2:
                Xs, Xq = Xs.reshape(len(Xs), -1), Xq.reshape(len(Xq), -1)
            try:
                fitted = clone(est).fit(Xs, ys)
                values.append(metric_fn(yq, _prediction(fitted, Xq, classifier, proba)))
            except Exception as exc:  # any estimator's failure, reported with its name and task
                raise ValueError(_failure(name, index, ys, classifier, exc)) from exc
        scores[name] = np.array(values)
    return scores
