"""The public few-shot methods of the estimators: many new tasks adapted at once.

:class:`FewShotMixin` gives :class:`~skreptile._estimators.base.BaseReptile`
``few_shot_predict`` and ``staged_few_shot_predict``.  It uses only the
members it declares below as abstract, which the base class defines; the
machinery is :mod:`skreptile._estimators.batch_adaptation`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_is_fitted


class FewShotMixin(abc.ABC):
    """``few_shot_predict`` and ``staged_few_shot_predict`` of :class:`BaseReptile`."""

    _loss: str

    @abc.abstractmethod
    def _check_meta_config(self):
        """Raise if a parameter that shaped the initialisation changed since ``meta_fit``."""

    @abc.abstractmethod
    def _prepare_tasks(self, tasks, with_query_y, signature=None):
        """Held-out tasks validated and encoded (:class:`FewShotTasks`)."""

    @abc.abstractmethod
    def _adaptation_curve(self, tasks, steps, init=None, lr=None, indices=None):
        """Scaled query outputs after each number of ``steps`` (:meth:`BatchAdaptation.curve`)."""

    @abc.abstractmethod
    def _adapt_steps(self, n_support=None):
        """The number of adaptation steps for ``n_support`` rows."""

    @abc.abstractmethod
    def _support_size(self, Y):
        """The support size of encoded support targets ``Y`` (rows, or shots per class)."""

    @abc.abstractmethod
    def _decode(self, scaled, info, kind, scaling=None):
        """Predictions from scaled outputs (a family hook)."""

    def staged_few_shot_predict(
        self: Any,  # the estimator this mixes into
        X_support: Sequence[ArrayLike],
        y_support: Sequence[ArrayLike],
        X_query: Sequence[ArrayLike],
        steps: Sequence[int],
        method: str = "predict",
    ) -> dict[int, list[np.ndarray]]:
        """Predict many new tasks after each number of adaptation steps in ``steps``.

        As :meth:`few_shot_predict`, but every task is adapted once, up to the
        largest number of ``steps``, and its query points are predicted along
        the way: the learning curve of adaptation, which
        :func:`skreptile.evaluation.evaluate_few_shot` scores.  The step size
        is the estimator's for each task's number of support points.

        Parameters
        ----------
        X_support, y_support, X_query : sequence of array-like
            One array per task, as for :meth:`few_shot_predict`.
        steps : sequence of int
            Numbers of adaptation steps to predict after (0: the meta-learned
            initialisation itself).
        method : {"predict", "predict_proba"}, default="predict"
            What to return per task: predictions, or (classifiers) the
            probabilities of the task's classes, its sorted support labels.

        Returns
        -------
        staged : dict of int to list of ndarray
            For each number of steps, one array per task.
        """
        check_is_fitted(self, "meta_params_")
        self._check_meta_config()
        if method not in ("predict", "predict_proba") or (
            method == "predict_proba" and self._loss == "squared_error"
        ):
            raise ValueError(
                f"method must be 'predict' (or 'predict_proba' for a classifier), got {method!r}."
            )
        tasks = self._prepare_tasks(list(zip(X_support, y_support, X_query)), with_query_y=False)
        tasks, levels = self._less_base(tasks)
        kind = "predict" if method == "predict" else "proba"
        curve = self._adaptation_curve(tasks, steps)
        return {
            s: [
                self._plus_base(self._decode(out, info, kind), Xq, level)
                for out, info, Xq, level in zip(scaled, tasks.info, tasks.X_query, levels)
            ]
            for s, scaled in curve.items()
        }

    def few_shot_predict(
        self: Any,  # the estimator this mixes into
        X_support: Sequence[ArrayLike] | np.ndarray,
        y_support: Sequence[ArrayLike] | np.ndarray,
        X_query: Sequence[ArrayLike] | np.ndarray,
    ) -> np.ndarray | list[np.ndarray]:
        """Adapt to many new tasks at once and predict their query points.

        Equivalent to ``fit(X_support[t], y_support[t]).predict(X_query[t])``
        for every task ``t``, but all tasks are adapted together, as in
        meta-training, which is much faster for many tasks.  The estimator
        itself is left unchanged.

        Parameters
        ----------
        X_support : array-like of shape (n_tasks, n_support, ...) or list of arrays
            Training points of every task, flat or (classifier) images; a list
            allows tasks of different sizes.
        y_support : array-like of shape (n_tasks, n_support[, n_outputs]) or list of arrays
            Their targets (classifier: every task has its own classes).
        X_query : array-like of shape (n_tasks, n_query, ...) or list of arrays
            Points to predict, for every task.

        Returns
        -------
        y_pred : ndarray of shape (n_tasks, n_query[, n_outputs]) or list of ndarray
            Predictions per task; a list when the query sets differ in size.
        """
        check_is_fitted(self, "meta_params_")
        self._check_meta_config()
        stacked = [np.ndim(a) for a in (X_support, X_query) if isinstance(a, np.ndarray)]
        if any(d < 3 for d in stacked) or not (len(X_support) == len(y_support) == len(X_query)):
            raise ValueError(
                "few_shot_predict needs X_support (n_tasks, n_support, ...), y_support "
                "(n_tasks, n_support) and X_query (n_tasks, n_query, ...) with the same n_tasks "
                "(or lists of one array per task)."
            )
        tasks = self._quick_tasks(X_support, y_support, X_query)
        if tasks is None:
            tasks = self._prepare_tasks(
                list(zip(X_support, y_support, X_query)), with_query_y=False
            )
        tasks, levels = self._less_base(tasks)
        # 'auto' adaptation may differ with the number of support rows: group the tasks.
        by_steps: dict[int, list[int]] = {}
        for i in range(len(tasks.X_support)):
            size = self._support_size(tasks.Y_support[i])
            by_steps.setdefault(self._adapt_steps(size), []).append(i)
        scaled = [None] * len(tasks)
        for steps, group in by_steps.items():
            curve = self._adaptation_curve(tasks, [steps], indices=group)[steps]
            for i in group:
                scaled[i] = curve[i]
        preds = [
            self._plus_base(self._decode(s, info, "predict"), Xq, level)
            for s, info, Xq, level in zip(scaled, tasks.info, tasks.X_query, levels)
        ]
        if len({p.shape for p in preds}) == 1:
            return np.stack(preds)
        return preds

    def _quick_tasks(self, X_support, y_support, X_query):
        """Plainly valid stacked arrays as :class:`FewShotTasks`, or None to check each task."""
        return None

    def _less_base(self, tasks):
        """``(tasks, levels)``: encoded tasks with support targets less the pooled model's
        predictions and each task's offset (``levels``); none here."""
        return tasks, [0.0] * len(tasks)

    def _plus_base(self, pred, X, level):
        """Decoded predictions of flat ``X`` plus the pooled model's and the offset ``level``."""
        return pred
