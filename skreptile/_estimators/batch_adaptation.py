"""Adaptation of many new tasks at once: the machinery of few-shot prediction, evaluation and validation.

Held-out tasks are validated and encoded (:func:`prepare_tasks`, with the
estimator's hooks), packed into :class:`~skreptile._engine.packing.PackedTasks`
a pack at a time (:func:`task_packs`), and adapted by
:func:`~skreptile._engine.inner.adapt_tasks`, predicting along the way at every
number of steps asked for (:class:`BatchAdaptation`).  Nothing here reads an
estimator: what an adaptation needs is given explicitly.
"""

import numpy as np
import torch

from .._engine import PackedTasks, adapt_tasks, calling_thread_work, fast_cpu_math
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


def prepare_tasks(tasks, with_query_y, numeric_y, inputs, encode_targets, encode_query):
    """Validate and encode held-out tasks into :class:`FewShotTasks`.

    ``inputs(X, where)`` gives a task's flat inputs, ``encode_targets(y,
    where)`` its encoded targets and their ``info``, ``encode_query(y, info,
    where)`` its encoded query targets (the estimator's hooks, bound to its
    learned shapes).
    """
    checked = check_split(tasks, numeric_y=numeric_y, with_query_y=with_query_y)
    Xs, Ys, Xq, Yq, info = [], [], [], [], []
    for i, task in enumerate(checked):
        where = f"Task {i}"
        xs = inputs(task[0], where)
        xq = inputs(task[2], where)
        ys, task_info = encode_targets(task[1], where)
        Xs.append(xs)
        Ys.append(ys)
        Xq.append(xq)
        info.append(task_info)
        if with_query_y:
            Yq.append(encode_query(task[3], task_info, where))
    return FewShotTasks(Xs, Ys, Xq, Yq if with_query_y else None, info)


def outputs_with_support(net, params, support, queries):
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


def task_packs(tasks, context, indices):
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


class BatchAdaptation:
    """Adapts many held-out tasks from one initialisation and predicts their query points.

    Parameters
    ----------
    init : Initialisation
        The network, weights, scaling, device and inner optimiser state to adapt from.
    loss : Loss
        The engine's loss.
    optimizer : {"sgd", "adam"}
    n_threads : int, "auto" or None
        The estimator's parameter (blocks of tasks on threads).
    context : bool
        Whether query points are predicted in a batch with their task's
        support set (non-transductive batch normalisation).
    lr_for : callable
        ``lr_for(Y_support)``: the step size for a task of those support targets.
    backoff : callable
        ``backoff(lr)``: the step sizes to try in turn on tasks whose adaptation
        failed (see :func:`skreptile._training.selftune.backoff_rates`).
    head_init : {"meta", "prototypes"} or None, default=None
        Where every task's output layer starts: the initialisation's, or its
        support set's class prototypes (the classifier's parameter).
    """

    def __init__(self, init, loss, optimizer, n_threads, context, lr_for, backoff, head_init=None):
        self.init, self.loss, self.optimizer, self.n_threads = init, loss, optimizer, n_threads
        self.context, self.lr_for, self.backoff = context, lr_for, backoff
        self.head_init = head_init

    def curve(self, tasks, steps, lr=None, indices=None):
        """Scaled query outputs of every task after each number of steps in ``steps``.

        ``lr`` is the step size (by default :attr:`lr_for` each task's number
        of support rows).  ``indices``: only those tasks (the others' outputs
        stay None).  Returns ``{n_steps: list of ndarray (n_query,
        n_outputs)}``; tasks whose adaptation diverged give non-finite
        outputs, which callers judge.  A task whose support loss diverged or
        grew is adapted again with the next step size of :attr:`backoff`.
        """
        wanted = sorted({int(s) for s in steps})
        out = {s: [None] * len(tasks) for s in wanted}
        indices = range(len(tasks)) if indices is None else indices
        by_lr = {}
        for i in indices:
            rate = self.lr_for(tasks.Y_support[i]) if lr is None else lr
            by_lr.setdefault(rate, []).append(i)
        for first_rate, group in by_lr.items():
            pending = task_packs(tasks, self.context, group)
            for rate in self.backoff(first_rate):
                if not pending:
                    break
                pending = self._adapt_packs(tasks, pending, wanted, out, rate)
        return out

    def _adapt_packs(self, tasks, packs, wanted, out, lr):
        """Adapt the tasks of ``packs``, a pack at a time, with step size ``lr``, writing ``out``.

        Returns the packs (lists of task numbers) of the tasks whose adaptation
        failed (see :func:`skreptile._training.selftune.adaptation_failed`).
        """
        net, theta, scaling, device, state = self.init
        context = self.context
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
                        pred = outputs_with_support(net, rows, packed.xs[tasks], xq)
                    else:
                        pred = net.forward_tasks(ws, xq)
                pred = pred.cpu().numpy().astype(np.float64)
                for j in range(tasks.start, tasks.stop):
                    out[step][ids[j]] = pred[j - tasks.start, : packed.query_sizes[j]]

            work = calling_thread_work(net, self.optimizer, len(ids), packed.xs.shape[1], device)
            with fast_cpu_math(device, work, self.n_threads):
                _, before, after = adapt_tasks(
                    net,
                    self.loss,
                    theta,
                    packed,
                    wanted[-1],
                    self.optimizer,
                    lr,
                    state,
                    on_step=predict_when_wanted,
                    n_threads=self.n_threads,
                    head_init=self.head_init,
                )
            bad = _selftune.adaptation_failed(before, after).cpu().numpy()
            if bad.any():
                failed.append([i for i, b in zip(ids, bad) if b])
        return failed
