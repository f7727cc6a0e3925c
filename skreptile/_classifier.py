"""ReptileClassifier: few-shot classification from a meta-learned initialisation."""

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._base import BaseReptile, _scale_stats
from ._device import fast_cpu_math
from .tasks._base import TaskError, TaskSampler

# Rows of one forward pass when predicting query points one by one with the
# support set (non-transductive batch normalisation); bounds the memory.
PREDICT_ROWS = 1024


def _normalise_shape(shape):
    """``(channels, height, width)`` from a 3- or 2-element shape (None stays None)."""
    if shape is None:
        return None
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"input_shape must be (channels, height, width) or (height, width); got {shape}."
        )
    return shape


class _ImageInput(torch.nn.Module):
    """Feeds flat inputs ``(..., n_features)`` to a network of images ``(..., C, H, W)``."""

    def __init__(self, net, shape):
        super().__init__()
        self.net = net
        self.shape = tuple(shape)

    def forward(self, x):
        return self.net(x.reshape(*x.shape[:-1], *self.shape))


def _accepts_input_shape(factory):
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "input_shape" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _has_batch_norm(net):
    module = getattr(net, "module", None)
    return module is not None and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()
    )


def _ndim(X):
    """Dimensions of array-likes and nested lists, None for anything else (left to validation)."""
    if hasattr(X, "ndim"):
        return X.ndim
    if isinstance(X, (list, tuple)):
        try:
            return np.ndim(X)
        except ValueError:
            return None
    return None


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class _ClassTasks:
    """Turns classification tasks into flat inputs and one-hot targets for ``meta_fit``.

    Each task's labels, whatever they are, are remapped to ``0 .. N-1`` in
    sorted order; image tasks ``(n_points, C, H, W)`` are flattened and their
    shape recorded.  ``sampler`` is what the base class's task stream draws from.
    """

    def __init__(self, sampler, input_shape):
        self.input_shape = input_shape
        self.n_classes = None
        self.n_seen = 0
        if isinstance(sampler, TaskSampler):
            self.sampler = _EncodedSampler(sampler, self)
        elif callable(sampler):
            self.sampler = self._wrap_callable(sampler)
        elif isinstance(sampler, Sequence) and not isinstance(sampler, (str, bytes)):
            self.sampler = [self.encode_task(task, i) for i, task in enumerate(sampler)]
        else:
            self.sampler = sampler  # the task stream reports what is wrong

    def _wrap_callable(self, sampler):
        def draw(rng):
            index = self.n_seen
            self.n_seen += 1
            return self.encode_task(sampler(rng), index)

        return draw

    def _flatten(self, X, n_lead, where):
        """Flatten image examples after ``n_lead`` leading axes, recording their shape."""
        if X.ndim <= n_lead + 1:
            if self.input_shape is not None and X.ndim == n_lead + 1:
                if int(np.prod(self.input_shape)) != X.shape[-1]:
                    raise TaskError(
                        f"{where} has {X.shape[-1]} features, but input_shape="
                        f"{self.input_shape} has {int(np.prod(self.input_shape))} values."
                    )
            return X
        shape = _normalise_shape(X.shape[n_lead:]) if X.ndim - n_lead in (2, 3) else None
        if shape is None:
            raise TaskError(
                f"{where}: examples must be flat or images (channels, height, width); "
                f"got shape {X.shape[n_lead:]}."
            )
        if self.input_shape is None:
            self.input_shape = shape
        elif shape != self.input_shape:
            raise TaskError(f"{where} has images of shape {shape}, expected {self.input_shape}.")
        return X.reshape(*X.shape[:n_lead], -1)

    def _check_classes(self, n_classes, where):
        if self.n_classes is None:
            self.n_classes = n_classes
        elif n_classes != self.n_classes:
            raise TaskError(
                f"{where} has {n_classes} classes, but earlier tasks have {self.n_classes}; "
                "meta-training tasks must all be N-way for the same N."
            )

    def encode_task(self, task, index):
        where = f"Task {index}"
        if not (isinstance(task, (tuple, list)) and len(task) == 2):
            return task  # the task stream names the problem
        X, y = task
        X = self._flatten(np.asarray(X), 1, where)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise TaskError(f"{where}: y must be a 1-D array of class labels; got {y.shape}.")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise TaskError(f"{where}: y contains NaN or infinity.")
        classes, y_index = np.unique(y, return_inverse=True)
        self._check_classes(len(classes), where)
        return X, np.eye(len(classes))[y_index]

    def encode_batch(self, X, y):
        first = self.n_seen
        self.n_seen += len(X)
        where = f"Tasks {first} to {first + len(X) - 1}"
        X = self._flatten(np.asarray(X), 2, where)
        y = np.asarray(y)
        if y.ndim == 3 and y.shape[2] == 1:
            y = y[:, :, 0]
        if y.ndim != 2 or y.shape[0] != len(X):
            raise TaskError(
                f"{where}: sample_batch must return y of shape (n_tasks, n_points) with class "
                f"labels; got {y.shape}."
            )
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise TaskError(f"{where}: y contains NaN or infinity.")
        # Fast path: labels already 0 .. N-1 in every task (skreptile's samplers).
        numeric = y.dtype.kind in "iuf" and y.size > 0
        n_classes = int(y.max()) + 1 if numeric else 0
        if numeric and n_classes <= y.shape[1] and y.min() >= 0 and (y == np.round(y)).all():
            onehot = y[..., None] == np.arange(n_classes)
            if onehot.any(axis=1).all():
                self._check_classes(n_classes, where)
                return X, onehot.astype(np.float64)
        tasks = [self.encode_task((X[t], y[t]), first + t) for t in range(len(X))]
        return X, np.stack([Y for _, Y in tasks])


class _EncodedSampler(TaskSampler):
    """A skreptile sampler whose batches go through :class:`_ClassTasks`."""

    def __init__(self, inner, tasks):
        self.inner = inner
        self.tasks = tasks
        self.random_state = inner.random_state

    def make_rng(self, fallback_seed):
        return self.inner.make_rng(fallback_seed)

    def sample_batch(self, rng, n_tasks):
        X, y = self.inner.sample_batch(rng, n_tasks)
        return self.tasks.encode_batch(X, y)


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
    meta_lr_schedule : {"linear", "constant"}, default="linear"
        "linear" anneals ``eps`` linearly to 0 over ``n_meta_iter``.
    inner_steps : int, default=5
        Gradient steps on each task per meta-iteration.
    inner_batch_size : int or None, default=10
        Examples per inner step; None uses all of a task's examples every step.
    inner_lr : float, default=0.1
        Step size of the inner optimiser.
    inner_optimizer : {"sgd", "adam"}, default="sgd"
        Inner optimiser.  "adam" is the paper's (``beta1 = 0``, its state reset
        for every task, with ``inner_lr=0.001``), made for 100,000
        meta-iterations; plain SGD with a larger step learns far faster in
        the few thousand a CPU allows (see ``docs/classification.md``).
    adapt_steps : int, default=50
        Full-batch gradient steps taken by :meth:`fit` (the paper evaluates
        with 50).
    adapt_lr : float or None, default=None
        Step size of :meth:`fit`; None uses ``inner_lr``.
    standardize : bool, default=True
        Standardise the inputs (see above).
    transductive : bool, default=False
        Only matters for networks with batch normalisation, which always
        normalises with the statistics of the batch at hand (there are no
        running statistics: every task is new).  False (non-transductive)
        classifies every query point in a batch made of the training examples
        of :meth:`fit` and that one point, so that a prediction never depends
        on the other query points.  True normalises over the query batch
        itself, as the paper's transductive results do: usually a little more
        accurate, but the prediction of a point then depends on its batch.
    device : str or torch.device, default="auto"
        Where the computation runs: "auto" picks CUDA, then MPS, then the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, the order of examples and, unless the sampler
        has its own seed, the tasks drawn.
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
    classes_ : ndarray of shape (n_classes,)
        Class labels of the last :meth:`fit`, in output order.
    meta_params_ : ndarray of shape (n_params,)
        Meta-learned initial weights, flattened (set by :meth:`meta_fit`).
    params_ : ndarray of shape (n_params,)
        Weights after the last :meth:`fit`.
    n_outputs_ : int
        Outputs of the network: N of the meta-training tasks, or the number of
        classes of :meth:`fit` without meta-training.
    input_shape_ : tuple of int or None
        ``(channels, height, width)`` of image inputs, None for flat inputs.
    x_mean_, x_scale_ : ndarray of shape (n_features,)
        Input standardisation.
    y_mean_, y_scale_ : ndarray of shape (n_outputs,)
        Zeros and ones: targets are one-hot and are not scaled.
    support_X_ : ndarray of shape (n_samples, n_features)
        Training inputs of the last :meth:`fit`, kept only for networks with
        batch normalisation (non-transductive prediction).
    n_features_meta_ : int
        Number of features of the meta-training tasks.
    n_features_in_ : int
        Number of features seen during :meth:`fit` (pixel values for images).
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :meth:`fit`, when they are all strings.

    See Also
    --------
    skreptile.ClassTaskSampler : N-way K-shot tasks from a labelled data set.
    skreptile.nn.ConvNet : The paper's convolutional network for images.
    skreptile.ReptileRegressor : The regressor sharing this engine.

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

    _parameter_constraints = {
        **BaseReptile._parameter_constraints,
        "input_shape": ["array-like", None],
        "transductive": ["boolean"],
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
        adapt_steps=50,
        adapt_lr=None,
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

    # ------------------------------------------------------------ hooks
    def _build_shape(self):
        """Image shape of the network being built: the meta-training tasks' or the fitted one."""
        tasks = self.__dict__.get("_meta_tasks")
        if tasks is not None:
            return tasks.input_shape
        return getattr(self, "input_shape_", None)

    def _make_module(self, n_features, n_outputs):
        shape = self._build_shape()
        kwargs = {}
        if shape is not None and _accepts_input_shape(self.module):
            kwargs["input_shape"] = shape
        module = self.module(n_features, n_outputs, **kwargs)
        if not isinstance(module, torch.nn.Module):
            return module  # the base class reports it
        # Batch normalisation uses batch statistics only: BatchedModule sees to it.
        if shape is not None:
            if int(np.prod(shape)) != n_features:
                raise ValueError(
                    f"input_shape={shape} has {int(np.prod(shape))} values, but the inputs "
                    f"have {n_features} features."
                )
            module = _ImageInput(module, shape)
        return module

    def _scaling(self, X, Y):
        n_features, n_outputs = X.shape[-1], Y.shape[-1]
        y_mean, y_scale = np.zeros(n_outputs), np.ones(n_outputs)
        if not self.standardize:
            return np.zeros(n_features), np.ones(n_features), y_mean, y_scale
        if self._build_shape() is None:
            x_mean, x_scale, _, _ = _scale_stats(X, Y[..., :1], True)
            return x_mean, x_scale, y_mean, y_scale
        mean, std = float(X.mean()), float(X.std())
        if not std > 1e-12 * max(1.0, abs(mean)):
            std = 1.0
        return np.full(n_features, mean), np.full(n_features, std), y_mean, y_scale

    # ------------------------------------------------------------ meta_fit
    def meta_fit(self, task_sampler):
        """Meta-learn an initialisation from classification tasks drawn from ``task_sampler``.

        Parameters
        ----------
        task_sampler : ClassTaskSampler, callable or sequence of (X, y)
            Where tasks come from: a :class:`~skreptile.ClassTaskSampler`, a
            callable ``sampler(rng) -> (X, y)`` or a finite sequence of
            ``(X, y)`` tasks.  Every task has the same number N of classes; its
            labels may be anything and are mapped to the N outputs in sorted
            order.  ``X`` is flat ``(n_points, n_features)`` or images
            ``(n_points, channels, height, width)``.

        Returns
        -------
        self : object
            The estimator with ``meta_params_`` learned; call :meth:`fit` to adapt.
        """
        self._validate_params()
        tasks = _ClassTasks(task_sampler, _normalise_shape(self.input_shape))
        self._meta_tasks = tasks
        try:
            super().meta_fit(tasks.sampler)
        finally:
            del self._meta_tasks
        self.input_shape_ = tasks.input_shape
        for attr in ("classes_", "support_X_"):
            self.__dict__.pop(attr, None)
        return self

    # ------------------------------------------------------------ fit / predict
    def _flatten_images(self, X, reset):
        """Flat ``X`` from images ``(n, C, H, W)``; the expected image shape (or None)."""
        expected = (
            getattr(self, "input_shape_", None) if not reset else _normalise_shape(self.input_shape)
        )
        if _ndim(X) != 4:
            return X, expected
        X = check_array(X, allow_nd=True, dtype=np.float64)
        shape = tuple(X.shape[1:])
        if expected is not None and shape != expected:
            raise ValueError(f"X has images of shape {shape}, but expected {expected}.")
        return X.reshape(len(X), -1), shape

    def fit(self, X, y):
        """Adapt the meta-learned initialisation to the labelled examples ``(X, y)``.

        Every call starts again from the initialisation learned by
        :meth:`meta_fit` (or from a fresh random one if it was never called).

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
        self._check_fit_preconditions()
        meta_fitted = self._is_meta_fitted()
        X, shape = self._flatten_images(X, reset=not meta_fitted)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        if type_of_target(y) not in ("binary", "multiclass"):
            raise ValueError(f"y must hold one class label per sample; got {type_of_target(y)}.")
        classes, y_index = np.unique(y, return_inverse=True)
        if meta_fitted:
            n_outputs = self.n_outputs_
            if len(classes) > n_outputs:
                raise ValueError(
                    f"y has {len(classes)} classes, but the initialisation was meta-learned "
                    f"for {n_outputs}-way tasks."
                )
        else:
            n_outputs = len(classes)
            self.input_shape_ = shape
        try:
            self._fit_scaled(X, np.eye(n_outputs)[y_index])
        except ValueError as exc:
            if len(X) < 2 and "more than 1 value per channel" in str(exc):
                raise ValueError(
                    "The network normalises over the batch and cannot fit 1 sample; "
                    "give at least 2."
                ) from exc
            raise
        self.classes_ = classes
        if _has_batch_norm(self._net()):
            self.support_X_ = X
        else:
            self.__dict__.pop("support_X_", None)
        return self

    def _params_tensor(self, device):
        cache = self.__dict__.setdefault("_cache", {})
        params = cache.get("params")
        if params is None or params.device != device:
            params = cache["params"] = self._to_tensor(self.params_, device)
        return params

    def _with_support(self):
        return not self.transductive and hasattr(self, "support_X_")

    def _logits(self, X):
        check_is_fitted(self)
        X, _ = self._flatten_images(X, reset=False)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self._with_support():
            logits = self._support_logits(X)
        else:
            logits = self._predict_scaled(X)
        return logits[:, : len(self.classes_)]

    def _support_logits(self, X):
        """Logits of every point of ``X`` in a batch with the support set, one point at a time."""
        device = self._device()
        net = self._net()
        params = self._params_tensor(device)
        support = self._to_tensor((self.support_X_ - self.x_mean_) / self.x_scale_, device)
        queries = self._to_tensor((X - self.x_mean_) / self.x_scale_, device)
        per_query = torch.vmap(net.predict, in_dims=(None, 0))
        n_support = len(support)
        step = max(1, PREDICT_ROWS // (n_support + 1))
        out = []
        with torch.no_grad(), fast_cpu_math(device, net.work(1, PREDICT_ROWS)):
            for start in range(0, len(queries), step):
                q = queries[start : start + step, None]
                batch = torch.cat([support.expand(len(q), n_support, -1), q], dim=1)
                out.append(per_query(params, batch)[:, -1])
        return torch.cat(out).cpu().numpy().astype(np.float64)

    def predict_proba(self, X):
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
        return _softmax(self._logits(X))

    def predict_log_proba(self, X):
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
        logits = self._logits(X)
        logits = logits - logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def predict(self, X):
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

    # ------------------------------------------------------------ many tasks
    def few_shot_predict(self, X_support, y_support, X_query):
        """Adapt to many tasks at once and classify their query points.

        Equivalent to ``fit(X_support[e], y_support[e]).predict(X_query[e])``
        for every task ``e``, but all tasks are adapted together, as in
        meta-training, which is much faster for evaluating many episodes.  The
        estimator itself is left unchanged.

        Parameters
        ----------
        X_support : array-like of shape (n_tasks, n_support, ...)
            Training examples of every task, flat or as images.
        y_support : array-like of shape (n_tasks, n_support)
            Their labels; every task has its own (at most ``n_outputs_``) classes.
        X_query : array-like of shape (n_tasks, n_query, ...)
            Points to classify, for every task.

        Returns
        -------
        y_pred : ndarray of shape (n_tasks, n_query)
            Predicted labels, among each task's own labels.
        """
        check_is_fitted(self, "meta_params_")
        Xs, Xq, ys = np.asarray(X_support), np.asarray(X_query), np.asarray(y_support)
        if Xs.ndim < 3 or Xq.ndim != Xs.ndim or ys.shape != Xs.shape[:2] or len(Xq) != len(Xs):
            raise ValueError(
                "few_shot_predict needs X_support (n_tasks, n_support, ...), y_support "
                "(n_tasks, n_support) and X_query (n_tasks, n_query, ...) with the same n_tasks; "
                f"got {Xs.shape}, {ys.shape} and {Xq.shape}."
            )
        n_tasks, n_support = ys.shape
        Xs = check_array(Xs.reshape(n_tasks * n_support, -1), dtype=np.float64)
        Xq = check_array(Xq.reshape(n_tasks * Xq.shape[1], -1), dtype=np.float64)
        Xs, Xq = Xs.reshape(n_tasks, n_support, -1), Xq.reshape(n_tasks, -1, Xs.shape[-1])
        if Xs.shape[-1] != self.n_features_meta_:
            raise ValueError(
                f"The tasks have {Xs.shape[-1]} features, but the meta-learned initialisation "
                f"expects {self.n_features_meta_}."
            )
        classes, Y = [], np.zeros((n_tasks, n_support, self.n_outputs_))
        for t in range(n_tasks):
            check_classification_targets(ys[t])
            task_classes, index = np.unique(ys[t], return_inverse=True)
            if len(task_classes) > self.n_outputs_:
                raise ValueError(
                    f"Task {t} has {len(task_classes)} classes, but the initialisation was "
                    f"meta-learned for {self.n_outputs_}-way tasks."
                )
            Y[t, np.arange(n_support), index] = 1.0
            classes.append(task_classes)
        with_support = not self.transductive and _has_batch_norm(self._net())
        n_query = Xq.shape[1]
        rows = n_support + n_query * ((n_support + 1) if with_support else 1)
        step = max(1, PREDICT_ROWS // rows)
        predictions = []
        for start in range(0, n_tasks, step):
            chunk = slice(start, start + step)
            ws = self._adapt_tasks(self.meta_params_, Xs[chunk], Y[chunk])
            if with_support:
                logits = self._tasks_support_logits(ws, Xs[chunk], Xq[chunk])
            else:
                logits = self._predict_tasks(ws, Xq[chunk])
            for t, task_logits in enumerate(logits, start):
                predictions.append(classes[t][task_logits[:, : len(classes[t])].argmax(axis=1)])
        return np.stack(predictions)

    def _tasks_support_logits(self, ws, Xs, Xq):
        """Per-task logits of query points, each in a batch with its task's support set."""
        net = self._net()
        device = ws.params.device
        support = self._to_tensor((Xs - self.x_mean_) / self.x_scale_, device)
        queries = self._to_tensor((Xq - self.x_mean_) / self.x_scale_, device)
        n_tasks, n_query = queries.shape[:2]
        batch = torch.cat(
            [
                support[:, None].expand(n_tasks, n_query, *support.shape[1:]),
                queries[:, :, None],
            ],
            dim=2,
        )
        per_task = torch.vmap(torch.vmap(net.predict, in_dims=(None, 0)), in_dims=(0, 0))
        with torch.no_grad(), fast_cpu_math(device, net.work(n_tasks, batch.shape[1])):
            out = per_task(ws.params, batch)[:, :, -1]
        return out.cpu().numpy().astype(np.float64)
