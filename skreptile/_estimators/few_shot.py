"""Adaptation of many new tasks at once: ``few_shot_predict``, evaluation and validation.

Held-out tasks are validated and encoded by the estimator (:class:`FewShotTasks`),
packed into :class:`~skreptile._engine.packing.PackedTasks` a pack at a time, and
adapted by :func:`~skreptile._engine.inner.adapt_tasks`, predicting along the way at
every number of steps asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_is_fitted

from .._engine import (
    LOSSES,
    Initialisation,
    PackedTasks,
    adapt_tasks,
    calling_thread_work,
    fast_cpu_math,
)
from .._training import selftune as _selftune
from ..tasks._split import check_split

# Tasks in one pack (one PackedTasks, one call of adapt_tasks), to bound memory on large
# evaluations.
MAX_TASKS_PER_PACK = 1024
# Rows of one forward pass when query points are predicted one by one with
# their task's support set (non-transductive batch normalisation).
PREDICT_ROWS = 1024


class FewShotTasks:
    """Held-out tasks validated and encoded by an estimator, ready to pack.

    Attributes
    ----------
    X_support, Y_support, X_query : list of ndarray
        Flat inputs and encoded 2-D targets, per task.
    Y_query : list of ndarray or None
        Encoded query targets, when given.
    info : list
        What the estimator needs to read each task's predictions (its classes,
        or whether its targets were 1-D).
    """

    def __init__(self, X_support, Y_support, X_query, Y_query, info):
        self.X_support, self.Y_support = X_support, Y_support
        self.X_query, self.Y_query, self.info = X_query, Y_query, info

    def __len__(self):
        return len(self.X_support)


class FewShotMixin:
    """Batched few-shot adaptation and prediction of :class:`~skreptile._estimators.base.BaseReptile`."""

    @staticmethod
    def _with_support(net, params, support, queries):
        """Outputs ``(n_tasks, n_query, n_out)``, each query point in a batch with its task's support.

        ``params`` holds one row of weights per task; ``support`` and
        ``queries`` are ``(n_tasks, n, n_features)``.
        """
        n_tasks, n_support = support.shape[:2]
        n_query = queries.shape[1]
        per_task = torch.vmap(torch.vmap(net.predict, in_dims=(None, 0)), in_dims=(0, 0))
        step = max(1, PREDICT_ROWS // (n_support + 1))
        out = []
        for start in range(0, n_query, step):
            q = queries[:, start : start + step, None]
            batch = torch.cat([support[:, None].expand(n_tasks, q.shape[1], -1, -1), q], dim=2)
            out.append(per_task(params, batch)[:, :, -1])
        return torch.cat(out, dim=1)

    def _initialisation(self):
        """The meta-learned :class:`Initialisation` on the estimator's device."""
        device = self._device()
        return Initialisation(
            self._net(),
            self._cached_tensor("meta_params_", device),
            self._scaling(),
            device,
            self._fit_optimizer_state(),
        )

    def _prepare_tasks(self, tasks, with_query_y, signature=None):
        """Validate and encode held-out tasks into :class:`FewShotTasks`.

        ``signature`` is ``(n_features, n_outputs)``, by default the learned one.
        """
        n_features, n_outputs = signature or (self.n_features_in_, self.n_outputs_)
        checked = check_split(
            tasks, numeric_y=self._loss == "squared_error", with_query_y=with_query_y
        )
        Xs, Ys, Xq, Yq, info = [], [], [], [], []
        for i, task in enumerate(checked):
            where = f"Task {i}"
            xs = self._task_inputs(task[0], n_features, where)
            xq = self._task_inputs(task[2], n_features, where)
            ys, task_info = self._encode_targets(task[1], n_outputs, where)
            Xs.append(xs)
            Ys.append(ys)
            Xq.append(xq)
            info.append(task_info)
            if with_query_y:
                Yq.append(self._encode_query(task[3], task_info, f"Task {i}"))
        return FewShotTasks(Xs, Ys, Xq, Yq if with_query_y else None, info)

    def _quick_tasks(self, X_support, y_support, X_query):
        """:class:`FewShotTasks` from plainly valid stacked arrays, or None to validate per task.

        A hook: the regressor takes float arrays ``(n_tasks, n, n_features)``
        without checking each task separately (the per-task checks cost more
        than adapting the task).
        """
        return None

    def _task_inputs(self, X, n_features, where):
        """Flat inputs of a held-out task, checked against the meta-learned shape."""
        X = X.reshape(len(X), -1)
        if X.shape[1] != n_features:
            raise ValueError(
                f"{where} has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{n_features} features as input (the tasks given to meta_fit)."
            )
        return X

    def _adapt_lr_param(self):
        """``adapt_lr`` as given, None meaning the (effective) inner step size."""
        if self.adapt_lr is None:
            return self.__dict__.get("inner_lr_", self.inner_lr)
        return self.adapt_lr

    def _choice_for(self, n_support):
        """``(adapt_steps, adapt_lr)`` that ``meta_fit`` chose for ``n_support`` rows, or None.

        The choice of the support size nearest ``n_support`` on a log scale,
        when ``meta_fit`` chose one per size (``adaptation_by_support_``).
        """
        rows = self.__dict__.get("adaptation_by_support_")
        if rows is None or n_support is None:
            return None
        distance = np.abs(np.log(rows[:, 0]) - np.log(max(int(n_support), 1)))
        size, steps, lr = rows[int(np.argmin(distance))]
        return int(steps), float(lr)

    def _adapt_lr(self, n_support=None):
        """The adaptation step size for ``n_support`` rows: chosen by ``meta_fit`` for ``'auto'``."""
        if _selftune.is_auto(self.adapt_lr):
            choice = self._choice_for(n_support)
            if choice is not None:
                return choice[1]
            if "adapt_lr_" in self.__dict__:
                return self.adapt_lr_
            return _selftune.MONITOR_LR_FACTOR * self.__dict__.get("inner_lr_", self.inner_lr)
        return self._adapt_lr_param()

    def _adapt_steps(self, n_support=None):
        """The number of adaptation steps for ``n_support`` rows: chosen by ``meta_fit`` for ``'auto'``."""
        if _selftune.is_auto(self.adapt_steps):
            choice = self._choice_for(n_support)
            if choice is not None:
                return choice[0]
            return int(self.__dict__.get("adapt_steps_", _selftune.DEFAULT_ADAPT_STEPS))
        return int(self.adapt_steps)

    def _adaptation_curve(self, tasks, steps, init=None, lr=None, indices=None):
        """Scaled query outputs of every task after each number of steps in ``steps``.

        ``init`` is the :class:`Initialisation` to adapt from (by default the
        meta-learned one), ``lr`` the step size (by default the estimator's
        for each task's number of support rows).  ``indices``: only those
        tasks (the others' outputs stay None).  Returns ``{n_steps: list of
        ndarray (n_query, n_outputs)}``; tasks whose adaptation diverged give
        non-finite outputs, which callers judge.  With ``adapt_lr='auto'`` a
        task whose support loss diverged or grew is adapted again with half
        the step size (see ``fit``).
        """
        init = init or self._initialisation()
        wanted = sorted({int(s) for s in steps})
        out = {s: [None] * len(tasks) for s in wanted}
        indices = range(len(tasks)) if indices is None else indices
        by_lr = {}
        for i in indices:
            rate = self._adapt_lr(len(tasks.X_support[i])) if lr is None else lr
            by_lr.setdefault(rate, []).append(i)
        for first_rate, group in by_lr.items():
            pending = self._packs(tasks, self._support_context(init.net), group)
            for rate in _selftune.backoff_rates(self, first_rate):
                if not pending:
                    break
                pending = self._adapt_packs(tasks, pending, wanted, out, init, rate)
        return out

    def _adapt_packs(self, tasks, packs, wanted, out, init, lr):
        """Adapt the tasks of ``packs``, a pack at a time, with step size ``lr``, writing ``out``.

        Returns the packs (lists of task numbers) of the tasks whose adaptation
        failed (see :func:`skreptile._training.selftune.adaptation_failed`).
        """
        net, theta, scaling, device, state = init
        loss = LOSSES[self._loss]
        context = self._support_context(net)
        failed = []
        for ids in packs:
            packed = PackedTasks(
                [tasks.X_support[i] for i in ids],
                [tasks.Y_support[i] for i in ids],
                [tasks.X_query[i] for i in ids],
                scaling,
                device,
            )

            def predict_when_wanted(step, ws, tasks, packed=packed, ids=ids):
                if step not in wanted:
                    return
                xq = packed.xq[tasks]
                with torch.no_grad():
                    if context:
                        rows = net.all_task_params(ws)
                        pred = self._with_support(net, rows, packed.xs[tasks], xq)
                    else:
                        pred = net.forward_tasks(ws, xq)
                pred = pred.cpu().numpy().astype(np.float64)
                for j in range(tasks.start, tasks.stop):
                    out[step][ids[j]] = pred[j - tasks.start, : packed.query_sizes[j]]

            work = calling_thread_work(
                net, self.inner_optimizer, len(ids), packed.xs.shape[1], device
            )
            with fast_cpu_math(device, work, self.n_threads):
                _, before, after = adapt_tasks(
                    net,
                    loss,
                    theta,
                    packed,
                    wanted[-1],
                    self.inner_optimizer,
                    lr,
                    state,
                    on_step=predict_when_wanted,
                    n_threads=self.n_threads,
                )
            bad = _selftune.adaptation_failed(before, after).cpu().numpy()
            if bad.any():
                failed.append([i for i, b in zip(ids, bad) if b])
        return failed

    @staticmethod
    def _packs(tasks, context, indices):
        """Task numbers adapted together: packs of equal support size when batch norm needs it."""
        indices = list(indices)
        n = len(indices)
        if not context:
            return [indices[s : s + MAX_TASKS_PER_PACK] for s in range(0, n, MAX_TASKS_PER_PACK)]
        # Padding rows would enter the batch statistics: group tasks by support size.
        by_size = {}
        for i in indices:
            by_size.setdefault(len(tasks.X_support[i]), []).append(i)
        rows = max(len(tasks.X_support[i]) for i in indices) + 1
        per_pack = max(1, PREDICT_ROWS // rows)
        return [
            group[s : s + per_pack]
            for group in by_size.values()
            for s in range(0, len(group), per_pack)
        ]

    def staged_few_shot_predict(
        self: Any,  # the estimator this mixes into
        X_support: Sequence[ArrayLike],
        y_support: Sequence[ArrayLike],
        X_query: Sequence[ArrayLike],
        steps: Sequence[int],
        method: str = "predict",
    ) -> dict[int, list[np.ndarray]]:
        """Predictions of many new tasks after each number of adaptation steps in ``steps``.

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
        kind = "predict" if method == "predict" else "proba"
        curve = self._adaptation_curve(tasks, steps)
        return {
            s: [self._decode(out, info, kind) for out, info in zip(scaled, tasks.info)]
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
        # 'auto' adaptation may differ with the number of support rows: group the tasks.
        by_steps: dict[int, list[int]] = {}
        for i, X in enumerate(tasks.X_support):
            by_steps.setdefault(self._adapt_steps(len(X)), []).append(i)
        scaled = [None] * len(tasks)
        for steps, group in by_steps.items():
            curve = self._adaptation_curve(tasks, [steps], indices=group)[steps]
            for i in group:
                scaled[i] = curve[i]
        preds = [self._decode(s, info, "predict") for s, info in zip(scaled, tasks.info)]
        if len({p.shape for p in preds}) == 1:
            return np.stack(preds)
        return preds
