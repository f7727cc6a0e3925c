"""N-way K-shot classification tasks drawn from a labelled data set."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_array, column_or_1d

from .._typing import RandomStateLike
from ._base import TaskSampler
from ._columns import missing_labels
from ._device import check_draw_on, on_device


def _rotations():
    """The four rotations by multiples of 90 degrees on the last two axes (None: identity)."""
    return [None] + [lambda a, k=k: np.rot90(a, k, axes=(-2, -1)) for k in (1, 2, 3)]


class ClassTaskSampler(TaskSampler):
    """Draws N-way K-shot tasks from a labelled data set, as in few-shot classification.

    A task picks ``n_way`` distinct classes and ``k_shot`` examples of each;
    its labels are ``0 .. n_way - 1``, assigned to the classes in a random
    order for every task, so that a network cannot learn a fixed map from a
    class to an output and must learn to adapt instead.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_samples, channels, height, width)
        The examples, flat or as images.  Tasks come back in the same form.
        A 3-D array ``(n_samples, height, width)`` is taken as one-channel images.
    y : array-like of shape (n_samples,)
        Class of every example.
    n_way : int, default=5
        Classes per task.
    k_shot : int, default=1
        Examples per class in a task.  Meta-training often uses more shots than
        evaluation (the Reptile paper trains with 10 for 1-shot Omniglot).
    augment : None, "rot90" or sequence of callables, default=None
        Class augmentation: every class is split into one new class per
        variant.  "rot90" makes four classes of each, rotated by 0, 90, 180
        and 270 degrees, as in the paper's Omniglot experiments.  A sequence
        of callables gives the variants explicitly: each maps an array of
        examples ``(..., channels, height, width)`` (or ``(..., n_features)``
        for flat data without ``image_shape``) to one of the same shape.
    image_shape : tuple of int or None, default=None
        ``(channels, height, width)`` (or ``(height, width)``) of flat
        examples, needed to rotate them; ignored for image-shaped ``X``.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the tasks drawn by ``meta_fit``.  None defers to the estimator's
        ``random_state``.
    draw_on : {"auto", "host", "device"}, default="auto"
        Where ``meta_fit`` draws the tasks: "host" with numpy
        (:meth:`sample_batch`), "device" with torch on the training device
        (:meth:`draw_tasks`; the examples are copied there once), "auto" on
        the device when it is not the CPU.  Augmentations given as callables
        work on numpy arrays: "auto" then draws on the host, and "device" is
        refused.  As for :class:`SineTaskSampler`, the two paths draw other
        tasks from the same distribution.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The classes of ``y``, before augmentation.
    n_task_classes_ : int
        Classes tasks are drawn from: ``n_classes`` times the number of variants.

    Examples
    --------
    >>> import numpy as np
    >>> from skreptile import ClassTaskSampler
    >>> X = np.random.default_rng(0).random((60, 1, 4, 4))
    >>> y = np.repeat(np.arange(12), 5)
    >>> sampler = ClassTaskSampler(X, y, n_way=3, k_shot=2, augment="rot90", random_state=0)
    >>> Xt, yt = sampler.sample_batch(np.random.default_rng(0), n_tasks=8)
    >>> Xt.shape, yt.shape
    ((8, 6, 1, 4, 4), (8, 6))
    >>> np.unique(yt[0])
    array([0, 1, 2])
    >>> Xs, ys, Xq, yq = sampler.sample_episodes(np.random.default_rng(1), 4, n_query=3)
    >>> Xs.shape, Xq.shape
    ((4, 6, 1, 4, 4), (4, 9, 1, 4, 4))
    """

    def __init__(
        self,
        X: ArrayLike,
        y: ArrayLike,
        n_way: int = 5,
        k_shot: int = 1,
        augment: str | None = None,
        image_shape: tuple[int, ...] | None = None,
        random_state: RandomStateLike = None,
        draw_on: str = "auto",
    ) -> None:
        X = np.asarray(
            check_array(X, allow_nd=True, dtype=[np.float64, np.float32], input_name="X")
        )
        y = np.asarray(column_or_1d(y, warn=True))
        if len(X) != len(y):
            raise ValueError(f"X and y have different lengths ({len(X)} and {len(y)}).")
        missing_labels(y, "y")
        if X.ndim == 3:
            X = X[:, None]
        if X.ndim not in (2, 4):
            raise ValueError(
                "X must be (n_samples, n_features) or images (n_samples, channels, height, "
                f"width); got {X.ndim} dimensions."
            )
        self.X = X
        self.y = y
        self.n_way = int(n_way)
        self.k_shot = int(k_shot)
        self.augment = augment
        self.image_shape = image_shape
        self.random_state = random_state
        self.draw_on = draw_on

        self._flat = X.ndim == 2
        if self._flat and image_shape is not None:
            shape = tuple(int(s) for s in image_shape)
            shape = (1, *shape) if len(shape) == 2 else shape
            if len(shape) != 3 or int(np.prod(shape)) != X.shape[1]:
                raise ValueError(
                    f"image_shape={image_shape} does not match the {X.shape[1]} features of X."
                )
            self._images = X.reshape(len(X), *shape)
        else:
            self._images = X
        self._variants = self._check_augment(augment)

        self.classes_, y_index, counts = np.unique(y, return_inverse=True, return_counts=True)
        order = np.argsort(y_index, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # Row c lists the examples of class c, padded with -1.
        self._members = np.full((len(counts), counts.max()), -1, dtype=np.intp)
        for c, (start, count) in enumerate(zip(starts, counts)):
            self._members[c, :count] = order[start : start + count]
        self._counts = counts
        self.n_task_classes_ = len(counts) * len(self._variants)
        if self.n_way < 1 or self.k_shot < 1:
            raise ValueError(f"n_way and k_shot must be positive; got {n_way} and {k_shot}.")
        if self.n_way > self.n_task_classes_:
            raise ValueError(
                f"n_way={self.n_way} classes per task, but there are only "
                f"{self.n_task_classes_} classes to draw from."
            )
        self._check_enough(self.k_shot, "k_shot")
        check_draw_on(draw_on, self.device_drawable, "augment is given as callables")

    @property
    def _finite_by_construction(self):
        # X was checked finite when built; a callable augmentation could make NaN.
        return self.device_drawable

    @property
    def device_drawable(self) -> bool:
        """Whether :meth:`draw_tasks` can draw these tasks (not with callable augmentations)."""
        return self.augment is None or isinstance(self.augment, str)

    def _check_augment(self, augment):
        if augment is None:
            return [None]
        if isinstance(augment, str):
            if augment != "rot90":
                raise ValueError(f"augment must be None, 'rot90' or callables; got {augment!r}.")
            if self._images.ndim != 4:
                raise ValueError("augment='rot90' needs images: give 4-D X or image_shape.")
            if self._images.shape[-1] != self._images.shape[-2]:
                raise ValueError(
                    f"augment='rot90' needs square images; got {self._images.shape[-2:]}."
                )
            return _rotations()
        variants = list(augment)
        if not variants or not all(callable(f) for f in variants):
            raise ValueError("augment must be None, 'rot90' or a non-empty sequence of callables.")
        return variants

    def _check_enough(self, n_per_class, what):
        fewest = int(self._counts.min())
        if fewest < n_per_class:
            cls = self.classes_[int(np.argmin(self._counts))]
            raise ValueError(
                f"Class {cls!r} has {fewest} example(s), fewer than the {n_per_class} a task "
                f"needs ({what})."
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(X of shape {self.X.shape}, {len(self.classes_)} classes, "
            f"n_way={self.n_way}, k_shot={self.k_shot}, augment={self.augment!r}, "
            f"random_state={self.random_state!r})"
        )

    def _draw(self, rng, n_tasks, n_per_class):
        """Examples ``(n_tasks, n_way, n_per_class, ...)`` and their labels ``(n_tasks, n_way)``."""
        n_way = self.n_way
        picked = np.stack(
            [rng.choice(self.n_task_classes_, n_way, replace=False) for _ in range(n_tasks)]
        )
        base, variant = np.divmod(picked, len(self._variants))
        # Distinct examples of every picked class: the smallest random keys among its members.
        keys = rng.random((n_tasks, n_way, self._members.shape[1]))
        keys[self._members[base] < 0] = 2.0
        positions = np.argsort(keys, axis=-1)[..., :n_per_class]
        index = np.take_along_axis(self._members[base], positions, axis=-1)
        examples = self._images[index]
        for v, transform in enumerate(self._variants):
            if transform is None:
                continue
            mask = variant == v
            if mask.any():
                examples[mask] = transform(examples[mask])
        labels = np.argsort(rng.random((n_tasks, n_way)), axis=1)
        return examples, labels

    def _as_tasks(self, rng, examples, labels):
        """Flatten classes into shuffled points: ``X (n_tasks, n_points, ...)``, ``y``."""
        n_tasks, n_way, n_per_class = examples.shape[:3]
        n_points = n_way * n_per_class
        X = examples.reshape(n_tasks, n_points, *examples.shape[3:])
        y = np.repeat(labels, n_per_class, axis=1)
        order = np.argsort(rng.random((n_tasks, n_points)), axis=1)
        rows = np.arange(n_tasks)[:, None]
        X, y = X[rows, order], y[rows, order]
        if self._flat:
            X = X.reshape(n_tasks, n_points, -1)
        return np.ascontiguousarray(X), y

    def sample_batch(self, rng: np.random.Generator, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_tasks`` tasks of ``n_way * k_shot`` points.

        Parameters
        ----------
        rng : numpy.random.Generator
            The generator to draw with.
        n_tasks : int
            Number of tasks.

        Returns
        -------
        X : ndarray of shape (n_tasks, n_way * k_shot, ...)
            The examples of every task, in random order, flat or as images like
            the ``X`` given.
        y : ndarray of shape (n_tasks, n_way * k_shot)
            Labels in ``0 .. n_way - 1``.
        """
        examples, labels = self._draw(rng, n_tasks, self.k_shot)
        return self._as_tasks(rng, examples, labels)

    def sample_episodes(
        self, rng: np.random.Generator, n_episodes: int, n_query: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Draw evaluation episodes: ``k_shot`` support and ``n_query`` query examples a class.

        Parameters
        ----------
        rng : numpy.random.Generator
            The generator to draw with.
        n_episodes : int
            Number of episodes.
        n_query : int, default=1
            Query examples per class (the Reptile paper uses 1).

        Returns
        -------
        X_support : ndarray of shape (n_episodes, n_way * k_shot, ...)
            Support examples of every episode.
        y_support : ndarray of shape (n_episodes, n_way * k_shot)
            Their labels.
        X_query : ndarray of shape (n_episodes, n_way * n_query, ...)
            Query examples of every episode.
        y_query : ndarray of shape (n_episodes, n_way * n_query)
            Labels in ``0 .. n_way - 1``, the same class to label map for the
            support and query points of an episode.
        """
        self._check_enough(self.k_shot + n_query, "k_shot + n_query")
        examples, labels = self._draw(rng, n_episodes, self.k_shot + n_query)
        k = self.k_shot
        support = self._as_tasks(rng, examples[:, :, :k], labels)
        query = self._as_tasks(rng, examples[:, :, k:], labels)
        return (*support, *query)

    def draw_tasks(self, random, task_ids, device):
        """Draw the tasks ``task_ids`` on ``device`` with torch (``draw_on="device"``).

        The same distribution as :meth:`sample_batch`: ``n_way`` distinct
        classes (variants included), ``k_shot`` distinct examples of each,
        labels assigned to the classes in a random order.  The points of a
        task come class by class: ``meta_fit`` orders them at random.

        Parameters
        ----------
        random : skreptile._engine.keyed_random.KeyedRandom
            The run's keyed generator: task ``i`` is the same whatever other
            tasks are drawn with it.
        task_ids : tensor of int64, shape (n_tasks,)
            Global ids of the tasks, on ``device``.
        device : torch.device
            Where the tasks are drawn and returned.

        Returns
        -------
        X : tensor of float32, shape (n_tasks, n_way * k_shot, ...)
            The examples, flat or as images like the ``X`` given.
        y : tensor of int64, shape (n_tasks, n_way * k_shot)
            Labels in ``0 .. n_way - 1``.
        """
        import torch

        if not self.device_drawable:
            check_draw_on("device", False, "augment is given as callables")
        images, members, counts = on_device(
            self,
            device,
            lambda: (self._images.astype(np.float32), self._members, self._counts),
        )
        ids = torch.as_tensor(task_ids, dtype=torch.int64, device=device)
        n, n_way, k = len(ids), self.n_way, self.k_shot
        n_variants = len(self._variants)
        classes = torch.full((n,), self.n_task_classes_, dtype=torch.int64, device=device)
        picked = random.subsets(0, ids, classes, n_way)
        base, variant = picked // n_variants, picked % n_variants
        index = torch.gather(members[base], 2, random.subsets(1, ids, counts[base], k))
        examples = images[index]  # (n, n_way, k, ...)
        for v in range(1, n_variants):  # the quarter turns of "rot90"
            turned = variant == v
            examples[turned] = torch.rot90(examples[turned], v, dims=(-2, -1))
        labels = random.permutations(2, ids, 1, n_way)[:, 0]
        X = examples.reshape(n, n_way * k, *examples.shape[3:])
        if self._flat:
            X = X.reshape(n, n_way * k, -1)
        return X, labels.repeat_interleave(k, dim=1)
