"""Classification tasks for the engine: labels to one-hot targets, images to flat rows.

Every task has its own classes.  Its labels, whatever they are, are mapped to
``0 .. N-1`` in sorted order; image tasks ``(n_points, C, H, W)`` are
flattened and their shape recorded.
"""

import numpy as np
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from .._training.interface import TaskFamily
from ..tasks._base import TaskError, TaskSampler, is_pair, sampler_kind
from ..tasks._validation import host_array
from .images import normalise_shape


def encode_labels(y, n_outputs, where):
    """Sorted classes of one task and its one-hot targets ``(n_points, n_outputs)``."""
    check_classification_targets(y)
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) > n_outputs:
        raise ValueError(
            f"{where} has {len(classes)} classes, but the initialisation was meta-learned "
            f"for {n_outputs}-way tasks: the network has {n_outputs} outputs, so a task can "
            f"have at most {n_outputs} classes. Classify fewer classes per task, or meta-train "
            f"on {len(classes)}-way tasks."
        )
    return classes, np.eye(n_outputs)[index]


def check_task_labels(y, where):
    """A ``TaskError`` unless ``y`` holds class labels (not a regression's targets)."""
    try:
        check_classification_targets(y)
    except ValueError:
        kind = type_of_target(y, input_name="y")
        example = y[np.flatnonzero(y != np.round(y))[:1]] if y.dtype.kind == "f" else y[:1]
        raise TaskError(
            f"{where}: y must hold class labels, but its values are {kind} (e.g. "
            f"{example.tolist()[0]!r}): every distinct value would become a class. For "
            "numeric targets use ReptileRegressor; to classify them, bin them into classes "
            "first (e.g. numpy.digitize)."
        ) from None


class ClassTasks:
    """Wraps a classification task sampler so that ``meta_fit`` sees flat inputs and one-hot targets.

    ``sampler`` is what the task source draws from; ``input_shape`` and
    ``n_classes`` are learned from the tasks.
    """

    def __init__(self, sampler, input_shape):
        self.input_shape = input_shape
        self.n_classes = None
        if getattr(sampler, "target_transformer", None) is not None:
            raise ValueError(
                f"The task sampler has target_transformer={sampler.target_transformer!r}, "
                "but class labels cannot be transformed. Build the sampler without "
                "target_transformer for a classifier."
            )
        kind = sampler_kind(sampler)
        if kind == "batched":
            self.sampler = _EncodedSampler(sampler, self)
        elif kind == "callable":
            self.sampler = _EncodedCallable(sampler, self)
        else:
            self.sampler = [self.encode_task(task, i) for i, task in enumerate(sampler)]

    def flatten(self, X, n_lead, where):
        """Flatten image examples after ``n_lead`` leading axes, recording their shape."""
        if X.ndim <= n_lead + 1:
            if self.input_shape is not None and X.ndim == n_lead + 1:
                if int(np.prod(self.input_shape)) != X.shape[-1]:
                    raise TaskError(
                        f"{where} has {X.shape[-1]} features, but input_shape="
                        f"{self.input_shape} has {int(np.prod(self.input_shape))} values."
                    )
            return X
        shape = normalise_shape(X.shape[n_lead:]) if X.ndim - n_lead in (2, 3) else None
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

    def check_classes(self, n_classes, where):
        if self.n_classes is None:
            self.n_classes = n_classes
        elif n_classes != self.n_classes:
            raise TaskError(
                f"{where} has {n_classes} classes, but earlier tasks have {self.n_classes}; "
                "meta-training tasks must all be N-way for the same N."
            )

    def encode_task(self, task, index):
        where = f"Task {index}"
        if not is_pair(task):
            return task  # the task source names the problem
        X, y = (np.asarray(host_array(a)) for a in task)
        X = self.flatten(X, 1, where)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise TaskError(f"{where}: y must be a 1-D array of class labels; got {y.shape}.")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise TaskError(f"{where}: y contains NaN or infinity.")
        check_task_labels(y, where)
        classes, y_index = np.unique(y, return_inverse=True)
        self.check_classes(len(classes), where)
        return X, np.eye(len(classes))[y_index]

    def encode_batch(self, X, y, first):
        where = f"Tasks {first} to {first + len(X) - 1}"
        X = self.flatten(np.asarray(host_array(X)), 2, where)
        y = np.asarray(host_array(y))
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
                self.check_classes(n_classes, where)
                return X, onehot.astype(np.float64)
        tasks = [self.encode_task((X[t], y[t]), first + t) for t in range(len(X))]
        return X, np.stack([Y for _, Y in tasks])


class _EncodedSampler(TaskSampler):
    """A skreptile sampler whose batches go through :class:`ClassTasks`."""

    def __init__(self, inner, tasks):
        self.inner = inner
        self.tasks = tasks
        self.random_state = inner.random_state
        self.n_seen = 0

    def resolve_seed(self, fallback_seed):
        return self.inner.resolve_seed(fallback_seed)

    def with_inner(self, inner):
        """The same encoding of another sampler's batches (the tasks left after a hold-out)."""
        return _EncodedSampler(inner, self.tasks)

    def sample_batch(self, rng, n_tasks):
        X, y = self.inner.sample_batch(rng, n_tasks)
        first, self.n_seen = self.n_seen, self.n_seen + n_tasks
        return self.tasks.encode_batch(X, y, first)

    @property
    def draw_on(self):
        return getattr(self.inner, "draw_on", "host")

    @property
    def device_drawable(self):
        inner = self.inner
        return callable(getattr(inner, "draw_tasks", None)) and getattr(
            inner, "device_drawable", True
        )

    def draw_tasks(self, random, task_ids, device):
        """The inner sampler's device-drawn tasks, flat, with one-hot float32 targets."""
        import torch

        X, y = self.inner.draw_tasks(random, task_ids, device)
        where = "Tasks drawn on the device"
        X = self.tasks.flatten(X, 2, where)
        # A ClassTaskSampler knows its N; another sampler's labels tell it (a device sync).
        n_classes = getattr(self.inner, "n_way", None) or int(y.max()) + 1
        self.tasks.check_classes(n_classes, where)
        return X, torch.nn.functional.one_hot(y.long(), n_classes).to(torch.float32)


class _EncodedCallable:
    """A callable sampler whose tasks go through :class:`ClassTasks`."""

    def __init__(self, inner, tasks):
        self.inner = inner
        self.tasks = tasks
        self.n_seen = 0

    def __call__(self, rng):
        index, self.n_seen = self.n_seen, self.n_seen + 1
        return self.tasks.encode_task(self.inner(rng), index)


class ImageTasks(TaskFamily):
    """What ``meta_fit`` learns about classification tasks beyond their arrays: the image shape."""

    def __init__(self, tasks):
        self.tasks = tasks

    @property
    def input_shape(self):
        return self.tasks.input_shape

    def state(self):
        shape = self.tasks.input_shape
        return {"input_shape": None if shape is None else list(shape)}

    def restore(self, state):
        shape = state.get("input_shape")
        shape = None if shape is None else tuple(int(s) for s in shape)
        if self.tasks.input_shape is not None and shape != self.tasks.input_shape:
            raise ValueError(
                f"The tasks have images of shape {self.tasks.input_shape}, but the run to "
                f"continue was meta-trained on {shape}."
            )
        self.tasks.input_shape = shape
