"""Per-task scores of few-shot evaluation: errors for regressors, accuracy and log loss for classifiers."""

from __future__ import annotations

import numpy as np


class _ClassPrediction:
    """A classifier's prediction for one task: its classes, their probabilities, its labels.

    ``proba`` is None for an estimator without ``predict_proba``; ``labels``
    (its ``predict``) is None where they are the most probable classes.
    """

    def __init__(self, classes, proba, labels=None):
        self.classes = np.asarray(classes)
        self.proba = None if proba is None else np.asarray(proba)
        self.predicted = None if labels is None else np.asarray(labels)

    def labels(self):
        if self.predicted is not None:
            return self.predicted
        return self.classes[np.argmax(self.proba, axis=1)]


def _prediction(est, X, classifier, proba=True):
    """What the metric scores: values, or a classifier's classes, probabilities and labels.

    A classifier's labels are its ``predict``, which need not be the most
    probable class of its ``predict_proba`` (``NearestCentroid`` predicts the
    nearest centroid, but its probabilities scale distances per feature).
    ``proba=False`` skips the probabilities, for a metric of labels: some
    estimators' cannot be computed on every task (``NearestCentroid``'s with
    one example per class).
    """
    if not classifier:
        return est.predict(X)
    probabilities = est.predict_proba(X) if proba and hasattr(est, "predict_proba") else None
    return _ClassPrediction(est.classes_, probabilities, est.predict(X))


def _mse(y_true, y_pred):
    return float(np.mean((y_true - y_pred) ** 2))


def _rmse(y_true, y_pred):
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def _mae(y_true, y_pred):
    return float(np.mean(np.abs(y_true - y_pred)))


def _accuracy(y_true, pred):
    return float(np.mean(pred.labels() == y_true))


def _log_loss(y_true, pred):
    if pred.proba is None:
        raise ValueError(
            "metric='log_loss' needs probabilities, but the estimator has no predict_proba; "
            "score it with metric='accuracy'."
        )
    index = np.searchsorted(pred.classes, y_true).clip(0, len(pred.classes) - 1)
    p = np.where(pred.classes[index] == y_true, pred.proba[np.arange(len(y_true)), index], 0.0)
    return float(-np.mean(np.log(np.clip(p, 1e-15, 1.0))))


# name: (function, greater is better)
REGRESSION_METRICS = {"mse": (_mse, False), "rmse": (_rmse, False), "mae": (_mae, False)}
CLASSIFICATION_METRICS = {"accuracy": (_accuracy, True), "log_loss": (_log_loss, False)}


def _score(metric_fn, y_true, y_pred, worst):
    values = y_pred.proba if isinstance(y_pred, _ClassPrediction) else y_pred
    if values is not None and not np.isfinite(values).all():
        return worst
    return metric_fn(y_true, y_pred)


def _metric(metric, classifier):
    table = CLASSIFICATION_METRICS if classifier else REGRESSION_METRICS
    if metric is None:
        metric = "accuracy" if classifier else "mse"
    if callable(metric):
        fn = metric
        if classifier:
            fn = lambda y_true, pred: metric(y_true, pred.labels())  # noqa: E731
        return fn, getattr(metric, "__name__", "error"), False
    if metric in table:
        return table[metric][0], metric, table[metric][1]
    kind = "classifiers" if classifier else "regressors"
    raise ValueError(
        f"metric for {kind} must be one of {sorted(table)} or a callable, got {metric!r}."
    )
