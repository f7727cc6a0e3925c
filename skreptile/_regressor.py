"""ReptileRegressor: few-shot regression from a meta-learned initialisation."""

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import BaseReptile


class ReptileRegressor(RegressorMixin, BaseReptile):
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
    n_meta_iter : int, default=10000
        Meta-iterations (outer steps) of :meth:`meta_fit`.
    meta_batch_size : int, default=8
        Tasks per meta-iteration; 1 is the serial algorithm.
    meta_lr : float, default=1.0
        Outer step size ``eps`` at the first meta-iteration.  With several tasks
        per meta-iteration, 1.0 moves ``theta`` to the mean of their adapted
        weights; the serial algorithm of the paper uses 0.1.
    meta_lr_schedule : {"linear", "constant"}, default="linear"
        "linear" anneals ``eps`` linearly to 0 over ``n_meta_iter``, as in the paper.
    inner_steps : int, default=5
        Gradient steps on each task per meta-iteration.
    inner_batch_size : int or None, default=10
        Points per inner step, visited in shuffled passes over the task; None
        uses all of a task's points at every step.
    inner_lr : float, default=0.1
        Step size of the inner optimiser (on standardised data).
    inner_optimizer : {"sgd", "adam"}, default="sgd"
        Inner optimiser; "adam" uses ``beta1 = 0`` as in the paper, its state
        reset for every task.
    adapt_steps : int, default=32
        Full-batch gradient steps taken by :meth:`fit`.
    adapt_lr : float or None, default=0.07
        Step size of :meth:`fit`; None uses ``inner_lr``.  The default is a
        little below ``inner_lr`` because adaptation takes more full-batch steps
        on fewer points than the inner loop; a smaller step stays stable there
        even from a briefly meta-trained initialisation (see the benchmarks).
    standardize : bool, default=True
        Standardise inputs and targets with statistics of the meta-training tasks
        (or of the data given to ``fit`` when not meta-fitted), undone at predict.
    device : str or torch.device, default="auto"
        Where the computation runs: "cpu", "cuda", "cuda:N", "mps", a
        ``torch.device``, or "auto", which picks CUDA, then MPS, then the CPU.
        A device that is not available is reported by :meth:`meta_fit` and
        :meth:`fit`, not when the estimator is created.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, the order of points and, unless the sampler
        has its own seed, the tasks drawn.  Same seed, same result on the CPU.
    verbose : int, default=0
        If positive, :meth:`meta_fit` shows a progress bar (rate, time left,
        latest losses); from 2, it also prints every entry of ``history_``.
    early_stopping : bool, default=False
        Stop :meth:`meta_fit` when the validation loss has not improved for
        ``n_iter_no_change`` consecutive checks, and keep the weights with the
        best validation loss.  Needs ``validation_tasks`` in :meth:`meta_fit`.
    n_iter_no_change : int, default=10
        Patience of early stopping, in validation checks (each
        ``monitor_interval`` meta-iterations).
    monitor_interval : int, default=100
        Meta-iterations between two entries of ``history_`` (and validation
        checks).
    warm_start : bool, default=False
        If True, :meth:`meta_fit` continues from the current ``meta_params_``
        (and scaling) for another ``n_meta_iter`` meta-iterations, drawing new
        tasks, instead of starting afresh; ``history_`` continues too.
    checkpoint_path : str, path-like or None, default=None
        File where :meth:`meta_fit` saves its state every ``checkpoint_interval``
        meta-iterations (atomically: a crash while writing keeps the previous
        one).  If the file exists when :meth:`meta_fit` starts, it resumes from
        it, to the result an uninterrupted run would have had; the parameters
        must be the same.  The file is removed when :meth:`meta_fit` completes.
    checkpoint_interval : int, default=1000
        Meta-iterations between two checkpoints.

    Attributes
    ----------
    meta_params_ : ndarray of shape (n_params,)
        Meta-learned initial weights, flattened (set by :meth:`meta_fit`).
    params_ : ndarray of shape (n_params,)
        Weights after the last :meth:`fit`.
    x_mean_, x_scale_ : ndarray of shape (n_features,)
        Input standardisation.
    y_mean_, y_scale_ : ndarray of shape (n_outputs,)
        Target standardisation.
    n_features_meta_ : int
        Number of features of the meta-training tasks.
    meta_config_ : dict
        The parameters that shaped ``meta_params_``, as :meth:`meta_fit` saw
        them; :meth:`fit` refuses to adapt if one has changed since.
    n_outputs_ : int
        Number of targets.
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :meth:`fit`, when they are all strings.
    history_ : dict of list
        Set by :meth:`meta_fit`, one entry every ``monitor_interval``
        meta-iterations: ``"meta_iter"`` (counted over warm starts),
        ``"train_loss"`` (mean loss of the meta-batch tasks at their first
        inner step, i.e. of the initialisation, in standardised units, averaged
        since the previous entry), ``"adapted_train_loss"`` (the same at the last
        inner step) and, with validation tasks, ``"validation_loss"`` (query
        mean squared error after adaptation, in the targets' units).
        ``pandas.DataFrame(history_)`` tabulates it.
    n_meta_iter_ : int
        Meta-iterations run so far, over warm starts (fewer than asked after
        early stopping).
    best_iteration_ : int
        Meta-iteration of the lowest validation loss (with validation tasks).
    best_validation_loss_ : float
        That loss.

    See Also
    --------
    skreptile.SineTaskSampler : The sine-wave tasks of the Reptile paper.
    sklearn.neural_network.MLPRegressor : A perceptron trained from scratch.
    skreptile.pipeline.meta_fit_pipeline : Meta-fit a pipeline, preprocessing frozen.

    Notes
    -----
    **Two kinds of learned state.** :meth:`meta_fit` learns the initialisation
    (``meta_params_``, the scaling statistics, ``meta_config_``); :meth:`fit`
    adapts a copy of it (``params_``, ``n_features_in_``).  Only :meth:`fit`
    makes the model fitted for ``check_is_fitted``.

    **Clone, cross-validation, grid search.** ``sklearn.base.clone`` keeps the
    meta-learned state and drops the adaptation (through
    ``__sklearn_clone__``), so ``cross_val_score`` and ``GridSearchCV`` on a
    meta-fitted model adapt every fold from the meta-learned initialisation,
    in joblib workers too.  The adaptation parameters (``adapt_steps``,
    ``adapt_lr``, ``device``, ``verbose``, and ``random_state``, which
    :meth:`fit` only uses without :meth:`meta_fit`) can be changed and searched
    freely.  The parameters that shaped the initialisation (``module``,
    ``hidden_layer_sizes`` and ``activation`` without a ``module``,
    ``standardize``, and the meta-training parameters ``n_meta_iter`` to
    ``inner_optimizer``) are recorded in ``meta_config_``: once one of them
    changes, :meth:`fit` and :meth:`predict` raise a ``ValueError`` until
    :meth:`meta_fit` is called again.  To tune the adaptation step size, use
    ``adapt_lr`` rather than ``inner_lr``.

    **Persistence.** ``pickle``, ``joblib`` and ``skops.io`` save the learned
    state as numpy arrays with the skreptile version; the torch network is
    rebuilt after loading.  A model saved with a device that the loading
    machine lacks (a CUDA model loaded without CUDA) runs on the CPU, with a
    warning; a model saved by another version of skreptile loads with an
    :class:`~skreptile.InconsistentVersionWarning`.  ``module`` is saved by
    reference, so a lambda or a class defined inside a function cannot be
    pickled: use a class or a ``functools.partial`` of one defined in a module.

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

    def __init__(
        self,
        hidden_layer_sizes=(64, 64),
        activation="tanh",
        module=None,
        n_meta_iter=10000,
        meta_batch_size=8,
        meta_lr=1.0,
        meta_lr_schedule="linear",
        inner_steps=5,
        inner_batch_size=10,
        inner_lr=0.1,
        inner_optimizer="sgd",
        adapt_steps=32,
        adapt_lr=0.07,
        standardize=True,
        transductive=False,
        device="auto",
        random_state=None,
        verbose=0,
        early_stopping=False,
        n_iter_no_change=10,
        monitor_interval=100,
        warm_start=False,
        checkpoint_path=None,
        checkpoint_interval=1000,
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
        self.random_state = random_state
        self.verbose = verbose
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.monitor_interval = monitor_interval
        self.warm_start = warm_start
        self.checkpoint_path = checkpoint_path
        self.checkpoint_interval = checkpoint_interval

    def fit(self, X, y):
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
            X, y = validate_data(
                self,
                X,
                y,
                reset=not meta_fitted,
                multi_output=True,
                y_numeric=True,
                dtype=np.float64,
            )
            Y, y_1d = self._encode_targets(y, self.n_outputs_ if meta_fitted else None, "y")
            self._fit(X, Y, y_1d)
        return self

    def predict(self, X):
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
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._decode(self._outputs(X), self._y_1d, "predict")

    # ------------------------------------------------------ family hooks
    def _scaling_modes(self, input_shape=None):
        return ("per_feature", True) if self.standardize else (None, False)

    @staticmethod
    def _encode_targets(y, n_outputs, where):
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

    @staticmethod
    def _query_losses(tasks, scaled, scaling):
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
