"""ReptileClassifier: few-shot classification from a meta-learned initialisation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import log_softmax, softmax
from sklearn.base import ClassifierMixin
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .base import BaseReptile
from .docstrings import fill
from .images import flatten_images, image_module, normalise_shape
from .labels import ClassTasks, ImageTasks, encode_labels

if TYPE_CHECKING:
    from typing_extensions import Self


@fill
class ReptileClassifier(ClassifierMixin, BaseReptile):
    """Few-shot classifier whose initial weights are meta-learned with Reptile.

    :meth:`meta_fit` learns, over many N-way classification tasks, weights from
    which a few gradient steps fit a new task well (Nichol, Achiam & Schulman,
    2018); :meth:`fit` adapts them to the labelled examples of a new task,
    always starting again from the meta-learned initialisation;
    :meth:`predict` and :meth:`predict_proba` classify.  Without ``meta_fit``,
    ``fit`` trains the network from a random initialisation, as a plain
    classifier.

    Every task has its own classes.  Its labels, whatever they are, are mapped
    to the network's N outputs in sorted order (``classes_``), so a model
    meta-trained on 5-way tasks classifies any 5 (or fewer) new classes.
    :class:`~skreptile.ClassTaskSampler` draws meta-training tasks from a
    labelled data set with labels in a random order for every task, so that
    the network cannot memorise a class-to-output map.

    The loss is the softmax cross-entropy; targets are not standardised.
    Inputs are standardised with statistics of the meta-training tasks: per
    feature for flat data, and with one mean and one scale for images (so that
    a convolution sees every pixel in the same units).

    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default=(128, 128)
        Widths of the hidden layers of the multi-layer perceptron.
    activation : {"relu", "tanh", "logistic", "identity"}, default="relu"
        Non-linearity of the hidden layers.
    module : callable or None, default=None
        ``module(n_features, n_outputs)`` returns the ``torch.nn.Module`` to use
        instead of the perceptron, such as :class:`skreptile.nn.ConvNet`.  With
        images, the module receives inputs of shape ``(batch, channels, height,
        width)``, and the factory also gets ``input_shape=(channels, height,
        width)`` when it accepts that keyword.  Its own initialisation, seeded
        by ``random_state``, is the starting point.
    input_shape : tuple of int or None, default=None
        ``(channels, height, width)`` (or ``(height, width)``) of flat inputs
        that are images.  Images given as 4-D arrays ``(n_samples, channels,
        height, width)`` need no ``input_shape``.
    n_meta_iter : int, default=10000
        Meta-iterations (outer steps) of :meth:`meta_fit`.
    meta_batch_size : int, default=5
        Tasks per meta-iteration; 1 is the serial algorithm.
    meta_lr : float, default=1.0
        Outer step size ``eps`` at the first meta-iteration (1.0 moves to the
        mean of the adapted weights, as in the paper's few-shot experiments).
    {shared_meta}
    adapt_steps : int or "auto", default="auto"
        Full-batch gradient steps taken by :meth:`fit` (the paper evaluates
        with 50).  "auto" chooses, after :meth:`meta_fit`, among 0, 1, 2, 4,
        ..., 128 the number with the smallest query log loss on the held-out
        validation episodes (see ``validation_fraction``); ``adapt_steps_``
        records it (32 without validation episodes).
    adapt_lr : float, "auto" or None, default="auto"
        Step size of :meth:`fit`; None uses ``inner_lr_``.  "auto" chooses it
        with ``adapt_steps`` among 0.25, 0.5, 0.7 and 1 times ``inner_lr_``;
        ``adapt_lr_`` records it (0.7 ``inner_lr_`` without validation
        episodes).
    head_init : {"meta", "prototypes"}, default="meta"
        Where every adaptation (:meth:`fit`, :meth:`few_shot_predict`,
        validation, evaluation, and each task of :meth:`meta_fit`) starts its
        output layer.  ``"meta"``: the meta-learned one.  ``"prototypes"``:
        from the task's support set, as Proto-MAML does (Triantafillou et al.,
        2020): with ``c_k`` the mean penultimate features of class ``k``'s
        examples, weights ``2 c_k`` and bias ``-||c_k||^2``, so that before
        any step the network classifies like nearest centroid in its
        embedding; the output layer is then not meta-learned (it gets no
        outer update).  A ``module`` must end with a ``torch.nn.Linear`` with
        a bias, else a ``ValueError`` says so.
    standardize : bool, default=True
        Standardise the inputs (see above).
    {shared_run}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels of the last :meth:`fit`, in output order.
    y_mean_, y_scale_ : ndarray of shape (n_outputs,)
        Zeros and ones: targets are one-hot and are not scaled.
    inner_lr_, step_size_info_ : float, dict
        The inner step size meta-training ran with, after any back-off, and
        ``{"inner_lr", "backoffs", "factor"}`` of that rule.
    adapt_steps_, adapt_lr_ : int, float
        The adaptation chosen on the validation episodes (or given).
    adaptation_scores_ : dict or None
        Mean validation log loss for every candidate step size (keys) after
        0, 1, 2, ..., 128 steps (values), when "auto" chose.
    adaptation_by_support_ : ndarray of shape (n_sizes, 3)
        With ``n_support=None`` and held-out classes: rows ``(shots,
        adapt_steps, adapt_lr)`` for 1 and 5 examples per class; :meth:`fit`
        uses the row nearest its number of examples per class.
    n_outputs_ : int
        Outputs of the network: N of the meta-training tasks, or the number of
        classes of :meth:`fit` without meta-training.
    input_shape_ : tuple of int or None
        ``(channels, height, width)`` of image inputs, None for flat inputs
        (meta-learned state: kept by clone, pickling, warm start and checkpoints).
    support_X_ : ndarray of shape (n_samples, n_features), float32
        Training inputs of the last :meth:`fit`, kept (and pickled) only for
        networks with batch normalisation (non-transductive prediction).
    {shared_attributes}

    See Also
    --------
    skreptile.ClassTaskSampler : N-way K-shot tasks from a labelled data set.
    skreptile.nn.ConvNet : The paper's convolutional network for images.
    skreptile.ReptileRegressor : The regressor sharing this engine.

    Notes
    -----
    {shared_notes}

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from skreptile import ClassTaskSampler, ReptileClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> train = y < 5  # meta-train on digits 0-4, classify digits 5-9
    >>> sampler = ClassTaskSampler(X[train], y[train], n_way=3, k_shot=5, random_state=0)
    >>> model = ReptileClassifier(n_meta_iter=100, random_state=0, device="cpu")
    >>> model = model.meta_fit(sampler)
    >>> test = np.flatnonzero(y >= 7)
    >>> model = model.fit(X[test[:15]], y[test[:15]])  # 3 new classes
    >>> model.classes_
    array([7, 8, 9])
    >>> model.predict_proba(X[test[15:18]]).shape
    (3, 3)
    """

    _loss = "cross_entropy"
    _shots_per_class = True

    _parameter_constraints = {
        **BaseReptile._parameter_constraints,
        "input_shape": ["array-like", None],
        "transductive": ["boolean"],
        "head_init": [StrOptions({"meta", "prototypes"})],
    }

    def __init__(
        self,
        hidden_layer_sizes=(128, 128),
        activation="relu",
        module=None,
        input_shape=None,
        n_meta_iter=10000,
        meta_batch_size=5,
        meta_lr=1.0,
        meta_lr_schedule="linear",
        inner_steps=5,
        inner_batch_size=10,
        inner_lr=0.1,
        inner_optimizer="sgd",
        adapt_steps="auto",
        adapt_lr="auto",
        head_init="meta",
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
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.module = module
        self.input_shape = input_shape
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
        self.head_init = head_init
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

    # ------------------------------------------------------ family hooks
    def _make_module(self, n_features, n_outputs, input_shape=None):
        return image_module(self.module, n_features, n_outputs, input_shape)

    def _scaling_modes(self, input_shape=None):
        if not self.standardize:
            return None, False
        # Images: one mean and scale, so that a convolution sees every pixel alike.
        return ("global" if input_shape is not None else "per_feature"), False

    def _meta_training_tasks(self, task_sampler):
        tasks = ClassTasks(task_sampler, normalise_shape(self.input_shape))
        return tasks.sampler, ImageTasks(tasks)

    def _family_attributes(self, input_shape):
        return {"input_shape_": input_shape}

    def _meta_family_state(self):
        shape = getattr(self, "input_shape_", None)
        return {"input_shape": None if shape is None else list(shape)}

    def _task_inputs(self, X, n_features, where):
        if X.ndim == 4 and getattr(self, "input_shape_", None) is not None:
            if tuple(X.shape[1:]) != tuple(self.input_shape_):
                raise ValueError(
                    f"{where} has images of shape {tuple(X.shape[1:])}, but the model expects "
                    f"{tuple(self.input_shape_)}."
                )
        return super()._task_inputs(X, n_features, where)

    def _encode_targets(self, y, n_outputs, where):
        """One-hot targets over the task's sorted classes, and those classes."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{where}: y must hold one class label per sample; got {y.shape}.")
        classes, onehot = encode_labels(
            y, len(np.unique(y)) if n_outputs is None else n_outputs, where
        )
        return onehot, classes

    def _encode_query(self, y, classes, where):
        y = np.asarray(y).reshape(len(y))
        index = np.searchsorted(classes, y)
        index = np.minimum(index, len(classes) - 1)
        unseen = classes[index] != y
        if unseen.any():
            raise ValueError(
                f"{where}: the query labels {sorted(set(y[unseen].tolist()))} do not appear "
                "among its support labels; every query class needs support examples."
            )
        return index

    def _decode(self, scaled, classes, kind, scaling=None):
        logits = scaled[:, : len(classes)]
        if kind == "predict":
            return classes[np.argmax(logits, axis=1)]
        if kind == "proba":
            return softmax(logits, axis=-1)
        return logits

    def _query_losses(self, tasks, scaled, scaling):
        """Log loss of every task's query points."""
        return np.array(
            [
                -np.mean(log_softmax(s[:, : len(c)], axis=-1)[np.arange(len(i)), i])
                for s, c, i in zip(scaled, tasks.info, tasks.Y_query)
            ]
        )

    def _set_fit_info(self, classes):
        self.classes_ = classes

    # ------------------------------------------------------------ fit / predict
    def fit(self, X: ArrayLike, y: ArrayLike) -> Self:
        """Adapt the meta-learned initialisation to the labelled examples ``(X, y)``.

        Every call starts again from the initialisation learned by
        :meth:`meta_fit` (or from a fresh random one if it was never called).
        Everything is checked before anything changes: a refused or failed
        ``fit`` leaves the estimator as it was.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            The new task's training examples (its support set), flat or as images.
        y : array-like of shape (n_samples,)
            Their classes: any labels, at most N of them after ``meta_fit`` on
            N-way tasks.

        Returns
        -------
        self : object
            The adapted estimator.
        """
        with self._unchanged_on_error():
            self._check_fit_preconditions()
            meta_fitted = self._is_meta_fitted()
            expected = (
                self.__dict__.get("input_shape_")
                if meta_fitted
                else normalise_shape(self.input_shape)
            )
            X, shape = flatten_images(X, expected)
            X, y = validate_data(self, X, y, reset=not meta_fitted, dtype=np.float64)
            check_classification_targets(y)
            if type_of_target(y) not in ("binary", "multiclass"):
                raise ValueError(
                    f"y must hold one class label per sample; got {type_of_target(y)}."
                )
            Y, classes = self._encode_targets(y, self.n_outputs_ if meta_fitted else None, "y")
            if not meta_fitted:
                self.input_shape_ = shape
            try:
                self._fit(X, Y, classes)
            except ValueError as exc:
                if np.shape(X)[0] < 2 and "more than 1 value per channel" in str(exc):
                    raise ValueError(
                        "The network normalises over the batch and cannot fit 1 sample; "
                        "give at least 2."
                    ) from exc
                raise
        return self

    def _logits(self, X):
        check_is_fitted(self)
        quick = self._quick_X(X)
        if quick is None:
            X, _ = flatten_images(X, self.input_shape_)
            X = validate_data(self, X, reset=False, dtype=np.float64)
        else:
            X = quick
        return self._decode(self._outputs(X), self.classes_, "logits")

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Return class probabilities from the adapted network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            Examples, flat or as images.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities of the classes ``classes_``.
        """
        return softmax(self._logits(X), axis=-1)

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Return the logarithms of :meth:`predict_proba`, computed stably.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            Examples, flat or as images.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities of the classes ``classes_``.
        """
        return log_softmax(self._logits(X), axis=-1)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Classify with the adapted network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            Examples, flat or as images.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Predicted classes, among ``classes_``.
        """
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]
