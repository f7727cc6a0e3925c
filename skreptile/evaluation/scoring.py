"""``evaluate_few_shot``: every method adapted on the support points and scored on the query points."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.compose import TransformedTargetRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from .._estimators.base import BaseReptile
from ..tasks._split import as_task_list, check_split, split_support_query
from .baselines import baseline_items, baseline_scores
from .metrics import _ClassPrediction, _metric, _prediction, _score
from .results import FewShotResults

DEFAULT_STEPS = (0, 1, 2, 4, 8, 16, 32)


def _model_predictions(model, tasks, steps):
    """Query predictions of a meta-fitted model after each number of steps, per task."""
    support_X, support_y, query_X = ([t[i] for t in tasks] for i in range(3))
    if not is_classifier(model):
        return model.staged_few_shot_predict(support_X, support_y, query_X, steps)
    staged = model.staged_few_shot_predict(
        support_X, support_y, query_X, steps, method="predict_proba"
    )
    classes = [np.unique(np.asarray(y).reshape(len(y))) for y in support_y]
    return {s: [_ClassPrediction(c, p) for c, p in zip(classes, ps)] for s, ps in staged.items()}


def _unwrap(model):
    """The Reptile estimator, the preprocessing in front of it and the target transform (or None)."""
    target = None
    if isinstance(model, TransformedTargetRegressor):
        target, model = model, model.regressor
    if isinstance(model, Pipeline) and isinstance(model.steps[-1][1], BaseReptile):
        reptile, preprocessing = model.steps[-1][1], (model[:-1] if len(model.steps) > 1 else None)
    elif isinstance(model, BaseReptile):
        reptile, preprocessing = model, None
    else:
        raise TypeError(
            "model must be a skreptile estimator or a pipeline ending in one (such as "
            "meta_fit_pipeline and GroupTaskSampler.pipeline return), or a "
            f"TransformedTargetRegressor of either, got {type(model).__name__}; pass other "
            "estimators as baselines."
        )
    if target is not None and is_classifier(reptile):
        raise TypeError(
            f"A TransformedTargetRegressor cannot wrap the classifier {type(reptile).__name__}."
        )
    return reptile, preprocessing, target


def _fit_target_transform(target, ys):
    """What ``TransformedTargetRegressor.fit`` does to a task's support targets.

    Returns the fitted transformer (a ``FrozenEstimator``, as
    :meth:`GroupTaskSampler.pipeline` makes, is left as it is) and the
    transformed targets.
    """
    if target.transformer is not None:
        transformer = clone(target.transformer)
    else:
        transformer = FunctionTransformer(
            func=target.func, inverse_func=target.inverse_func, validate=True, check_inverse=False
        )
    y_2d = ys.reshape(-1, 1) if ys.ndim == 1 else ys
    out = np.asarray(transformer.fit(y_2d).transform(y_2d), dtype=np.float64)
    if ys.ndim == 1 and out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    return transformer, out


def _inverse_target_transform(transformer, pred, ndim):
    """What ``TransformedTargetRegressor.predict`` does to the predictions."""
    out = np.asarray(transformer.inverse_transform(pred.reshape(-1, 1) if pred.ndim == 1 else pred))
    if ndim == 1 and out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    return out


def _preprocessed(preprocessing, task):
    """A task's inputs through the pipeline's preprocessing, as its fit and predict would."""
    if not (isinstance(task, (tuple, list)) and len(task) == 4):
        return task  # check_split names the problem
    Xs, ys, Xq, yq = task
    return preprocessing.transform(Xs), ys, preprocessing.transform(Xq), yq


def _check_raw_columns(tasks):
    """A clear error for a DataFrame column that only a preprocessing step could use."""
    first = tasks[0] if tasks else None
    X = first[0] if isinstance(first, (tuple, list)) and first else None
    if not (hasattr(X, "columns") and hasattr(X, "dtypes")):
        return
    import pandas as pd

    fix = (
        "Evaluate the model with the preprocessing it was meta-trained with: "
        "sampler.pipeline(model) for a GroupTaskSampler with preprocessor=, or the pipeline "
        "meta_fit_pipeline returns."
    )
    # Every task's support and query rows: a missing value may be in any of them.
    frames = [
        part
        for task in tasks
        if isinstance(task, (tuple, list))
        for part in (task[0], task[2] if len(task) == 4 else None)
        if hasattr(part, "columns")
    ]
    for name in X.columns:
        col = X[name]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            raise ValueError(
                f"Column {name!r} of the tasks' X is not numeric (dtype {col.dtype}). {fix}"
            )
        missing = sum(int(frame[name].isna().sum()) for frame in frames if name in frame)
        if missing:
            raise ValueError(
                f"Column {name!r} of the tasks' X has {missing} missing value(s). {fix}"
            )


def evaluate_few_shot(
    model: Any,
    tasks: Any,
    *,
    n_support: int | None = None,
    adapt_steps: int | Sequence[int] = DEFAULT_STEPS,
    baselines: Mapping[str, Any] | Sequence[Any] | str | None = None,
    metric: str | Callable[..., float] | None = None,
    confidence: float = 0.95,
    random_state: Any = None,
) -> FewShotResults:
    """Score a meta-learned model and baselines on the query points of held-out tasks.

    For every task the model adapts on the support points, with each number of
    steps in ``adapt_steps``, and every baseline is fitted (a fresh clone per
    task) on the same support points; all predict the task's query points.

    Parameters
    ----------
    model : ReptileRegressor, ReptileClassifier, Pipeline, TransformedTargetRegressor or None
        The model to evaluate, usually meta-fitted, or a pipeline ending in one
        (as :func:`~skreptile.pipeline.meta_fit_pipeline` and
        :meth:`GroupTaskSampler.pipeline <skreptile.GroupTaskSampler.pipeline>`
        make: its frozen preprocessing transforms every task's points, raw
        DataFrame rows included), or a ``TransformedTargetRegressor`` of
        either (as ``GroupTaskSampler.pipeline`` makes with a
        ``target_transformer``: the support targets are transformed as its
        ``fit`` would, and the predictions inverted before they are scored, in
        the original units).  Its own parameters (``adapt_lr``,
        ``inner_optimizer``) give the adaptation; ``adapt_steps`` here
        overrides its ``adapt_steps``.  A model that was not meta-fitted is
        fitted from scratch on every task.  None evaluates the baselines only.
    tasks : GroupTaskSampler or sequence
        Held-out tasks: ``(X_support, y_support, X_query, y_query)`` tuples, or,
        with ``n_support``, ``(X, y)`` pairs or a
        :class:`~skreptile.GroupTaskSampler` to split at random.  ``X`` may be
        a DataFrame of raw columns when ``model`` is a pipeline that
        preprocesses them.
    n_support : int or None, default=None
        Support points per task when ``tasks`` are not split yet.
    adapt_steps : int or sequence of int, default=(0, 1, 2, 4, 8, 16, 32)
        Numbers of adaptation steps at which to score the model.
    baselines : "auto", dict of str to estimator, list of estimators or None, default=None
        Any scikit-learn regressors or classifiers, like the model (for example ``Ridge()`` or
        ``GaussianProcessRegressor()``), fitted on every task's support points.
        They see the points after the model's preprocessing, if it has any,
        images flattened to rows (skreptile's own estimators get them as
        they are), and the targets in their original units.  A list names
        them by class.  ``"auto"`` uses
        :func:`~skreptile.evaluation.default_baselines` for the model's kind:
        for classifiers 1-nearest-neighbour, nearest centroid and logistic
        regression.  The default, None, scores the model alone
        (baselines cost a fit per task, and the default leaves earlier
        results as they were).  A classifier baseline's accuracy is scored on
        its ``predict``.  Wrap an estimator already trained on other data in
        ``sklearn.frozen.FrozenEstimator`` to score it unchanged.  The
        statistician's baselines,
        :class:`~skreptile.evaluation.PooledRandomIntercept` and
        :class:`~skreptile.evaluation.LinearMixedModel`, are meta-fitted on the
        training groups first: their clones keep it, and each task's ``fit``
        adapts only the new group's random effects.  A baseline
        that cannot fit a task (logistic regression on a support set of one
        class) raises a ``ValueError`` naming it and the task.
    metric : str, callable or None, default=None
        Score of one task, computed on its query points: for regressors
        "mse" (the default), "rmse" or "mae"; for classifiers "accuracy" (the
        default, higher is better) or "log_loss".  A callable
        ``metric(y_true, y_pred) -> float`` (predicted labels for classifiers)
        is an error: lower must be better.
    confidence : float, default=0.95
        Level of the confidence intervals.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the support/query split when ``n_support`` is given.

    Returns
    -------
    results : FewShotResults
        Per-task errors; ``str(results)`` is a table of means with intervals,
        ``results.compare(a, b)`` gives a paired difference.

    See Also
    --------
    split_support_query : The random split used with ``n_support``.
    default_baselines : The baselines of ``baselines="auto"``.
    plot_few_shot : Error against adaptation steps, baselines as lines.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from skreptile import ReptileRegressor, SineTaskSampler
    >>> from skreptile.evaluation import evaluate_few_shot
    >>> model = ReptileRegressor(n_meta_iter=200, random_state=0)
    >>> model = model.meta_fit(SineTaskSampler(random_state=0))
    >>> X, y = SineTaskSampler().sample_batch(np.random.default_rng(1), 20)
    >>> results = evaluate_few_shot(
    ...     model, list(zip(X, y)), n_support=10, adapt_steps=[0, 8],
    ...     baselines={"Ridge": Ridge()}, random_state=0)
    >>> [row["method"] for row in results.summary()]
    ['ReptileRegressor', 'ReptileRegressor', 'Ridge']
    """
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    reptile, preprocessing, target = (None, None, None) if model is None else _unwrap(model)
    items = baseline_items(baselines, None if reptile is None else is_classifier(reptile))
    if model is None and not items:
        raise ValueError("Nothing to evaluate: give a model, baselines, or both.")
    classifier = is_classifier(reptile if reptile is not None else items[0][1])
    for name, est in items:
        if is_classifier(est) != classifier:
            raise ValueError(
                f"Baseline {name!r} is a {'classifier' if is_classifier(est) else 'regressor'}, "
                f"but the evaluation scores {'classifiers' if classifier else 'regressors'}."
            )
    metric_fn, metric_name, greater = _metric(metric, classifier)
    worst = -np.inf if greater else np.inf
    if n_support is not None:
        tasks = split_support_query(tasks, n_support, random_state=random_state)
    if preprocessing is not None:
        # The pipeline's frozen preprocessing, applied as its fit and predict would.
        tasks = [_preprocessed(preprocessing, task) for task in as_task_list(tasks)]
    else:
        _check_raw_columns(as_task_list(tasks))
    tasks = check_split(tasks, numeric_y=not classifier)
    # The model adapts on the support targets as TransformedTargetRegressor.fit gives them.
    transformers, model_tasks = None, tasks
    if target is not None:
        fitted = [_fit_target_transform(target, ys) for _, ys, _, _ in tasks]
        transformers = [t for t, _ in fitted]
        model_tasks = [(Xs, ys_t, Xq, yq) for (Xs, _, Xq, yq), (_, ys_t) in zip(tasks, fitted)]

    model_errors = None
    steps: list[int] = []
    if reptile is not None:
        asked = np.atleast_1d(np.asarray(adapt_steps))
        if asked.size == 0 or asked.dtype.kind not in "iu" or (asked < 0).any():
            raise ValueError(f"adapt_steps must be non-negative integers, got {adapt_steps!r}.")
        steps = [int(s) for s in asked]
        if hasattr(reptile, "meta_params_"):
            preds = _model_predictions(reptile, model_tasks, steps)
        else:
            preds = {
                s: [
                    _prediction(
                        clone(reptile).set_params(adapt_steps=s).fit(Xs, ys), Xq, classifier
                    )
                    for Xs, ys, Xq, _ in model_tasks
                ]
                for s in steps
            }
        if transformers is not None:
            preds = {
                s: [
                    _inverse_target_transform(tr, p, t[1].ndim)
                    for tr, p, t in zip(transformers, ps, tasks)
                ]
                for s, ps in preds.items()
            }
        model_errors = np.array(
            [[_score(metric_fn, t[3], p, worst) for t, p in zip(tasks, preds[s])] for s in steps]
        )
        diverged = ~np.isfinite(model_errors)
        if diverged.any():
            first = int(np.argmax(diverged.any(axis=1)))
            warnings.warn(
                f"Adaptation diverged on {int(diverged[first].sum())} of {len(tasks)} tasks "
                f"after {steps[first]} steps (and on {int(diverged[-1].sum())} after "
                f"{steps[-1]}); their score counts as the worst possible. The adaptation step "
                "size is likely too large for this model.",
                RuntimeWarning,
                stacklevel=2,
            )
    baseline_errors = baseline_scores(
        items, tasks, metric_fn, classifier, proba=metric_name == "log_loss"
    )
    return FewShotResults(
        type(reptile).__name__ if reptile is not None else None,
        steps,
        model_errors,
        baseline_errors,
        metric_name,
        confidence,
        greater,
    )
