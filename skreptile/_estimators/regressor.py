"""ReptileRegressor: few-shot regression from a meta-learned initialisation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .base import BaseReptile
from .batch_adaptation import FewShotTasks
from .docstrings import fill
from .pooled_base import PooledBaseMixin

if TYPE_CHECKING:
    from typing_extensions import Self


@fill
class ReptileRegressor(PooledBaseMixin, RegressorMixin, BaseReptile):
    """Few-shot regressor whose initial weights are meta-learned with Reptile.

    :meth:`meta_fit` learns, over many small related tasks, weights from which a
    few gradient steps fit a new task well (Nichol, Achiam & Schulman, 2018, "On
    First-Order Meta-Learning Algorithms").  :meth:`fit` then adapts those
    weights to a handful of labelled points of a new task, always starting again
    from the meta-learned initialisation, and :meth:`predict` predicts.  Without
    ``meta_fit``, ``fit`` trains the network from a random initialisation.

    Reptile, serial (``meta_batch_size=1``): sample a task, run ``inner_steps``
    gradient steps on it from the current weights ``theta`` to get ``phi``, and
    move ``theta <- theta + eps * (phi - theta)``, ``eps`` falling linearly from
    ``meta_lr`` to 0.  Batched (``meta_batch_size=n``): adapt ``n`` tasks from
    the same ``theta`` as one tensor computation and move towards the mean of
    their ``phi``.

    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default=(64, 64)
        Widths of the hidden layers of the multi-layer perceptron.
    activation : {"tanh", "relu", "logistic", "identity"}, default="tanh"
        Non-linearity of the hidden layers.
    module : callable or None, default=None
        ``module(n_features, n_outputs)`` returns the ``torch.nn.Module`` to use
        instead of the perceptron (a class or any factory).  Its own
        initialisation, seeded by ``random_state``, is the starting point.
    n_meta_iter : int, default=15000
        Meta-iterations (outer steps) of :meth:`meta_fit`: the length of the
        run, or its upper bound with early stopping.  15,000 on the lean
        CPU engine takes less time than 10,000 did before it, and gives a
        better initialisation on the sine demo (held-out MSE 0.021 against
        0.029, mean of 12 seeds); on real tables early stopping decides.
    meta_batch_size : int, default=8
        Tasks per meta-iteration; 1 is the serial algorithm.
    meta_lr : float, default=1.0
        Outer step size ``eps`` at the first meta-iteration.  With several tasks
        per meta-iteration, 1.0 moves ``theta`` to the mean of their adapted
        weights; the serial algorithm of the paper uses 0.1.
    {shared_meta}
    adapt_steps : int or "auto", default="auto"
        Full-batch gradient steps taken by :meth:`fit`.  "auto" chooses, after
        :meth:`meta_fit`, among 0, 1, 2, 4, ..., 128 the number with the
        smallest query error on the held-out validation tasks (see
        ``validation_fraction``), from one batched adaptation curve per
        candidate step size; ``adapt_steps_`` records it (32 without
        validation tasks).  Not a meta-shaping parameter: explicit values can
        be searched with ``GridSearchCV`` on a meta-fitted model.
    adapt_lr : float, "auto" or None, default="auto"
        Step size of :meth:`fit`; None uses ``inner_lr_``.  "auto" chooses it
        with ``adapt_steps`` among 0.25, 0.5, 0.7 and 1 times ``inner_lr_``
        (the meta-training step size after any back-off), so it follows the
        data too; ``adapt_lr_`` records it (0.7 ``inner_lr_`` without
        validation tasks).
    standardize : bool, default=True
        Standardise inputs and targets with statistics of the meta-training tasks
        (or of the data given to ``fit`` when not meta-fitted), undone at predict.
        However small a column's spread (data in small units), it is scaled to
        unit variance; only a column constant to float64 rounding is left as is.
    {shared_run}
    base_estimator : "auto", scikit-learn regressor or None, default="auto"
        The statistician's model of a new group, beside the network.  Every
        prediction is ``mixed + weight * (network - mixed)``, the network's
        weight (0, 0.25, 0.5, 0.75 or 1; 0 is the statistician's model
        alone) chosen per support size on the held-out groups
        (``network_weights_``).  "auto" considers two statistician's
        models: a pooled ridge or histogram gradient-boosted model (the one
        with the lower cross-fitted error on groups it never saw, used only
        if it beats the overall mean by 5%) plus the group's offset, the BLUP
        of a random intercept (the mean support residual shrunk by the
        variances between and within groups, ``random_intercept_``); and a
        linear mixed model with a random intercept and random slopes, the
        group's effects by their BLUP (where enough groups have the rows to
        estimate the slopes' covariance).  The network meta-trains once, on
        the targets (``base_mode_="average"``); the statistician's model and
        weights with the lower held-out error are kept, and none where the
        network gets weight 1 at every support size.  None for generated
        tasks (an infinite sampler), without held-out groups, or with several
        targets.  An explicit regressor is used under the network instead:
        the network meta-learns and adapts the per-group correction of it
        plus the BLUP offset (``base_mode_="residuals"``), from out-of-group
        (``GroupKFold`` cross-fitted) residuals, never a fit of a group's own
        rows; a weight above 0 is used only where it beats 0 on the held-out
        groups by two standard errors of the per-group gains.  It needs a
        ``GroupTaskSampler`` or a list of tasks, and one target.  Either way
        the statistician's model is refitted on every row of the table,
        held-out groups included, once the weights are chosen.

    Attributes
    ----------
    inner_lr_ : float
        The inner step size meta-training ran with: ``inner_lr`` halved once
        per restart after a divergence (see Notes).
    step_size_info_ : dict
        ``{"inner_lr", "backoffs", "factor"}`` of that rule.
    adapt_steps_, adapt_lr_ : int, float
        The adaptation chosen on the validation tasks (or given), for
        ``n_support`` support rows (10 when None).
    adaptation_scores_ : dict or None
        Mean validation query error for every candidate step size (keys) after
        0, 1, 2, ..., 128 steps (values), when "auto" chose.
    adaptation_by_support_ : ndarray of shape (n_sizes, 3)
        Only with ``n_support=None``, "auto" adaptation and held-out tasks of
        a finite sampler: rows ``(n_support, adapt_steps, adapt_lr)``, the
        choice for each of 4, 10 and 25 support rows.  :meth:`fit` (and
        :meth:`few_shot_predict`, per task) then uses the row whose size is
        nearest the number of rows it is given, on a log scale.
    y_mean_, y_scale_ : ndarray of shape (n_outputs,)
        Target standardisation (of the residuals of ``base_estimator_`` when
        ``base_mode_="residuals"``).
    base_estimator_ : regressor, LinearMixedEffects or None
        The fitted pooled regressor beside the network, or (``"auto"``) the
        fitted linear mixed model (its ``beta``, ``G`` and ``sigma2``); None
        without one.
    base_mode_ : {"residuals", "average"}
        With a base model: whether the network was meta-trained on its
        residuals (and predicts the group's correction) or on the targets
        themselves (and its prediction is averaged with the pooled model and
        offset).
    base_scores_ : dict or None
        With ``base_estimator="auto"`` and held-out groups: the cross-fitted
        error of each candidate (and of the overall mean) that chose it and,
        where one was chosen, the mean held-out query MSE by support size of
        the network alone and averaged with the base model at the chosen
        weights.
    random_intercept_ : dict or None
        With a pooled regressor (None with the linear mixed model):
        ``{"between", "within"}``, the variances of the groups' offsets from
        the base model and of the rows around them (ANOVA moments of the
        cross-fitted residuals of every group, held-out ones included).  A new
        group's offset is the mean residual of its ``K`` support rows shrunk
        by ``K between / (K between + within)``, the BLUP of a random
        intercept.
    network_weights_ : dict
        With a base model and held-out groups: ``{support size: weight}``, the
        network's weight in ``pooled + offset + weight * (network - pooled -
        offset)`` chosen on the held-out groups; ``fit`` with ``K`` rows uses
        that of the size nearest ``K`` (log scale).  A weight of 0 leaves the
        network out: the model is the mixed model.
    group_offset_, network_weight_ : float (or ndarray), float
        The group's offset (its random effects with the linear mixed model)
        and the network's weight of the last :meth:`fit`.
    n_outputs_ : int
        Number of targets.
    support_X_ : ndarray of shape (n_samples, n_features), float32
        Training inputs of the last :meth:`fit`, kept only for networks with
        batch normalisation (non-transductive prediction).
    {shared_attributes}

    See Also
    --------
    skreptile.SineTaskSampler : The sine-wave tasks of the Reptile paper.
    sklearn.neural_network.MLPRegressor : A perceptron trained from scratch.
    skreptile.pipeline.meta_fit_pipeline : Meta-fit a pipeline, preprocessing frozen.

    Notes
    -----
    Step sizes follow the data: the weights are checked every 100
    meta-iterations, and a fresh run whose weights stop being finite restarts
    from its initial weights with ``inner_lr`` halved (at most 6 times); with
    ``adapt_lr="auto"`` the adaptation step size is a multiple of the
    resulting ``inner_lr_``.  So defaults do not diverge on standardised
    tables whatever the number or correlation of the features.

    {shared_notes}

    Examples
    --------
    >>> import numpy as np
    >>> from skreptile import ReptileRegressor, SineTaskSampler
    >>> model = ReptileRegressor(n_meta_iter=200, random_state=0)
    >>> model = model.meta_fit(SineTaskSampler(random_state=0))
    >>> x = np.linspace(-5, 5, 10)[:, None]
    >>> model = model.fit(x, 2.0 * np.sin(x[:, 0] + 1.0))
    >>> model.predict(x).shape
    (10,)
    >>> from sklearn.base import clone
    >>> fresh = clone(model)  # the meta-learned initialisation, not the adaptation
    >>> bool(np.array_equal(fresh.meta_params_, model.meta_params_)), hasattr(fresh, "params_")
    (True, False)
    """

    _parameter_constraints = {
        **BaseReptile._parameter_constraints,
        "base_estimator": [StrOptions({"auto"}), HasMethods(["fit", "predict"]), None],
    }

    def __init__(
        self,
        hidden_layer_sizes=(64, 64),
        activation="tanh",
        module=None,
        n_meta_iter=15000,
        meta_batch_size=8,
        meta_lr=1.0,
        meta_lr_schedule="linear",
        inner_steps=5,
        inner_batch_size=10,
        inner_lr=0.1,
        inner_optimizer="sgd",
        adapt_steps="auto",
        adapt_lr="auto",
        standardize=True,
        transductive=False,
        device="auto",
        n_threads="auto",
        random_state=None,
        verbose=0,
        early_stopping="auto",
        validation_fraction=0.2,
        n_support=None,
        tol=1e-3,
        n_iter_no_change=10,
        monitor_interval=100,
        warm_start=False,
        checkpoint_path=None,
        checkpoint_interval=1000,
        callbacks=None,
        base_estimator="auto",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.module = module
        self.n_meta_iter = n_meta_iter
        self.meta_batch_size = meta_batch_size
        self.meta_lr = meta_lr
        self.meta_lr_schedule = meta_lr_schedule
        self.inner_steps = inner_steps
        self.inner_batch_size = inner_batch_size
        self.inner_lr = inner_lr
        self.inner_optimizer = inner_optimizer
        self.adapt_steps = adapt_steps
        self.adapt_lr = adapt_lr
        self.standardize = standardize
        self.transductive = transductive
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_support = n_support
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.monitor_interval = monitor_interval
        self.warm_start = warm_start
        self.checkpoint_path = checkpoint_path
        self.checkpoint_interval = checkpoint_interval
        self.callbacks = callbacks
        self.base_estimator = base_estimator

    def fit(self, X: ArrayLike, y: ArrayLike) -> Self:
        """Adapt the meta-learned initialisation to the labelled points ``(X, y)``.

        Every call starts again from the initialisation learned by
        :meth:`meta_fit` (or from a fresh random one if it was never called).
        Everything is checked before anything changes: a refused or failed
        ``fit`` leaves the estimator as it was.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs of the new task's support points, with the features (and
            column names, for a DataFrame) of the meta-training tasks.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.

        Returns
        -------
        self : object
            The adapted estimator.
        """
        with self._unchanged_on_error():
            self._check_fit_preconditions()
            meta_fitted = self._is_meta_fitted()
            quick = self._quick_Xy(X, y) if meta_fitted else None
            if quick is None:
                X, y = validate_data(
                    self,
                    X,
                    y,
                    reset=not meta_fitted,
                    multi_output=True,
                    y_numeric=True,
                    dtype=np.float64,
                )
            else:
                X, y = quick
            Y, y_1d = self._encode_targets(y, self.n_outputs_ if meta_fitted else None, "y")
            # With a base model the prediction averages the network with it and the
            # group's shrunk offset (its random intercept).
            target, level, weight = self._support_targets(X, Y)
            self._fit(X, target, y_1d)
            self.group_offset_, self.network_weight_ = level, weight
        return self

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict targets with the adapted network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictions, in the units of the training targets.
        """
        check_is_fitted(self)
        quick = self._quick_X(X)
        X = validate_data(self, X, reset=False, dtype=np.float64) if quick is None else quick
        pred = self._decode(self._outputs(X), self._y_1d, "predict")
        shift = (self.__dict__.get("group_offset_", 0.0), self.__dict__.get("network_weight_", 1.0))
        return self._plus_base(pred, X, shift)

    def _quick_Xy(self, X, y):
        """``(X, y)`` when plainly valid (see :meth:`_quick_X`), else None for ``validate_data``."""
        if (
            type(y) is np.ndarray
            and y.dtype.kind in "fiu"
            and 1 <= y.ndim <= 2
            and y.size >= 1
            and len(y) == len(X)
            and self._quick_X(X) is not None
            and (y.dtype.kind != "f" or np.isfinite(y).all())
        ):
            return X, y
        return None

    def _quick_tasks(self, X_support, y_support, X_query):
        if not all(type(a) is np.ndarray for a in (X_support, y_support, X_query)):
            return None
        n_features = self.__dict__.get("n_features_in_", -1)
        if (
            X_support.dtype.kind != "f"
            or X_query.dtype.kind != "f"
            or y_support.dtype.kind not in "fiu"
            or X_support.ndim != 3
            or X_query.ndim != 3
            or y_support.ndim not in (2, 3)
            or X_support.shape[2] != n_features
            or X_query.shape[2] != n_features
            or y_support.shape[:2] != X_support.shape[:2]
            or min(X_support.shape[:2]) < 1
            or X_query.shape[1] < 1
            or (y_support.ndim == 3 and y_support.shape[2] != self.n_outputs_)
            or (y_support.ndim == 2 and self.n_outputs_ != 1)
            or "feature_names_in_" in self.__dict__
            or not np.isfinite(X_support).all()
            or not np.isfinite(X_query).all()
            or not np.isfinite(y_support).all()
        ):
            return None
        Xs = X_support.astype(np.float64, copy=False)
        Xq = X_query.astype(np.float64, copy=False)
        Ys = y_support.astype(np.float64, copy=False)
        y_1d = Ys.ndim == 2
        if y_1d:
            Ys = Ys[:, :, None]
        return FewShotTasks(list(Xs), list(Ys), list(Xq), None, [y_1d] * len(Xs))

    # ------------------------------------------------------ family hooks
    def _scaling_modes(self, input_shape=None):
        return ("per_feature", True) if self.standardize else (None, False)

    def _encode_targets(self, y, n_outputs, where):
        """2-D float targets, and whether they were 1-D."""
        y = np.asarray(y, dtype=np.float64)
        Y = y[:, None] if y.ndim == 1 else y
        if n_outputs is not None and Y.shape[1] != n_outputs:
            raise ValueError(
                f"{where} has {Y.shape[1]} outputs, but the meta-learned initialisation "
                f"predicts {n_outputs}."
            )
        return Y, y.ndim == 1

    def _encode_query(self, y, y_1d, where):
        return self._encode_targets(y, None, where)[0]

    def _decode(self, scaled, y_1d, kind, scaling=None):
        y = (scaling or self._scaling()).y_inverse(scaled)
        return y[:, 0] if y_1d else y

    def _query_losses(self, tasks, scaled, scaling):
        """Mean squared error of every task's query points, in the targets' units."""
        return np.array(
            [np.mean((scaling.y_inverse(s) - y) ** 2) for s, y in zip(scaled, tasks.Y_query)]
        )

    def _set_fit_info(self, y_1d):
        self._y_1d = y_1d

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
