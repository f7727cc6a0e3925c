"""The task-sampler protocol, and the tasks of a run drawn from a sampler.

A *task sampler* is any of:

* a callable ``sampler(rng) -> (X, y)``, where ``rng`` is a
  :class:`numpy.random.Generator`, ``X`` has shape ``(n_points, n_features)`` and
  ``y`` shape ``(n_points,)`` or ``(n_points, n_outputs)``;
* a finite sequence of ``(X, y)`` tasks, from which tasks are drawn in shuffled
  passes;
* a :class:`TaskSampler` (skreptile's own samplers), which is also callable and
  adds ``sample_batch(rng, n_tasks)`` to draw many tasks as stacked arrays (or,
  for tasks of different sizes, as a list of ``(X, y)`` pairs).

A sampler must draw its tasks from ``rng`` only, keeping no state of its own
between calls: ``meta_fit`` hands it generators keyed by the run's seed and the
meta-iteration, so a resumed run draws the same tasks with no generator state saved.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
from sklearn.utils import check_random_state

from .._typing import RandomStateLike, Task, TaskBatch
from ._device import check_draw_on
from ._validation import TaskError, is_pair, validate_task, validate_task_batch


class TaskSampler:
    """Base class of skreptile's task samplers.

    Subclasses implement :meth:`sample_batch`; calling the sampler draws one task.
    ``random_state`` seeds the tasks drawn during ``meta_fit``; when it is None,
    the estimator's own ``random_state`` does.
    """

    random_state: RandomStateLike = None

    def sample_batch(self, rng: np.random.Generator, n_tasks: int) -> TaskBatch:
        """Draw ``n_tasks`` tasks as arrays ``X (n_tasks, n_points, n_features)`` and ``y``.

        Parameters
        ----------
        rng : numpy.random.Generator
            The generator to draw with.
        n_tasks : int
            Number of tasks.

        Returns
        -------
        X : ndarray of shape (n_tasks, n_points, n_features)
            Inputs of the tasks.
        y : ndarray of shape (n_tasks, n_points) or (n_tasks, n_points, n_outputs)
            Targets of the tasks.  A sampler whose tasks differ in size returns
            a list of ``n_tasks`` pairs ``(X, y)`` instead.
        """
        raise NotImplementedError

    def __call__(self, rng: np.random.Generator) -> Task:
        """Draw one task ``(X, y)`` with the generator ``rng``.

        Parameters
        ----------
        rng : numpy.random.Generator
            The generator to draw with.

        Returns
        -------
        X : ndarray of shape (n_points, n_features)
            Inputs of the task.
        y : ndarray of shape (n_points,) or (n_points, n_outputs)
            Targets of the task.
        """
        tasks = self.sample_batch(rng, 1)
        if isinstance(tasks, list):
            return tasks[0]
        X, y = tasks
        return X[0], y[0]

    def resolve_seed(self, fallback_seed: int) -> int:
        """The seed of a meta-training run: the sampler's own, else ``fallback_seed``.

        Parameters
        ----------
        fallback_seed : int
            Seed used when the sampler's ``random_state`` is None (``meta_fit``
            passes one derived from the estimator's ``random_state``).

        Returns
        -------
        seed : int
            The seed from which ``meta_fit`` derives the generator of every
            meta-iteration.
        """
        if self.random_state is None:
            return int(fallback_seed)
        return seed_from_random_state(self.random_state)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def as_generator(random_state: RandomStateLike) -> np.random.Generator:
    """A :class:`numpy.random.Generator` from a seed, a Generator or a RandomState."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    return np.random.default_rng(random_state)


def seed_from_random_state(random_state: RandomStateLike | np.random.Generator) -> int:
    """An integer seed from anything sklearn accepts as ``random_state``, or a Generator."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int32).max))
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def sampler_kind(sampler):
    """``"batched"``, ``"callable"`` or ``"sequence"``: how tasks are drawn from ``sampler``.

    The one place that tells the three kinds of task sampler apart; anything
    else is a ``TypeError`` naming what is accepted.
    """
    if isinstance(sampler, TaskSampler):
        return "batched"
    if callable(sampler):
        return "callable"
    if isinstance(sampler, Sequence) and not isinstance(sampler, (str, bytes)):
        return "sequence"
    raise TypeError(
        "task_sampler must be a callable sampler(rng) -> (X, y), a sequence of "
        f"(X, y) tasks or a skreptile TaskSampler; got {type(sampler).__name__}."
    )


def _string_columns(X):
    """Column names of a DataFrame-like ``X`` when they are all strings, else None."""
    columns = getattr(X, "columns", None)
    if columns is not None and len(columns) and all(isinstance(c, str) for c in columns):
        return np.asarray(columns, dtype=object)
    return None


def _same_names(a, b):
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _listed(names):
    return None if names is None else list(names)


# Meta-iterations whose tasks are drawn together (a constant: results must not
# depend on how a run is cut into chunks, calls or processes).
ITERATIONS_PER_DRAW = 64

# Keys of the independent random streams of a meta-training run (SeedSequence spawn keys).
_ITERATION, _STATS, _PASS, _ORDER = 0, 1, 2, 3


def finite_by_construction(sampler):
    """Whether ``sampler``'s tasks are finite by construction: no scan of every batch needed.

    True for skreptile's own samplers, which check their data and parameters
    when they are built, and only for those exact classes (a subclass may
    override ``sample_batch``), through the classifier's label-encoding
    wrappers.  Their ``_finite_by_construction`` says so (a property where it
    depends on the sampler's settings, e.g. augmentations given as callables).
    """
    while hasattr(sampler, "inner"):
        sampler = sampler.inner
    return "_finite_by_construction" in type(sampler).__dict__ and bool(
        sampler._finite_by_construction
    )


def keyed_generator(seed, *key):
    """A generator that depends only on ``seed`` and ``key``, never on what was drawn before."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


class TaskSource:
    """Validated tasks of any task sampler, keyed by meta-iteration.

    The tasks of a draw of ``ITERATIONS_PER_DRAW`` meta-iterations and the
    order in which their points are visited come from a generator keyed by
    ``(seed, draw)``, whatever was drawn before.  So a run resumed at any
    iteration (from a checkpoint, a warm start, or on another number of
    processes) sees exactly the tasks an uninterrupted run would have seen,
    with no generator state to save.

    Parameters
    ----------
    sampler : callable, sequence of (X, y) or TaskSampler
    fallback_seed : int
        Seed of the run when the sampler has no ``random_state`` of its own.
    """

    def __init__(self, sampler, fallback_seed):
        self.sampler = sampler
        self.kind = sampler_kind(sampler)
        self.signature = None  # (n_features, n_outputs) once the first task is seen
        self.feature_names = getattr(sampler, "feature_names_in_", None)
        self._names_seen = False
        self._scan_values = not finite_by_construction(sampler)
        if self.kind == "batched":
            self.seed = sampler.resolve_seed(fallback_seed)
        else:
            self.seed = int(fallback_seed)
        if self.kind == "sequence":
            if len(sampler) == 0:
                raise TaskError("The sequence of tasks is empty.")
            # Errors name the user's own index: a part of their sequence carries it.
            numbers = getattr(sampler, "task_numbers", range(len(sampler)))
            self.tasks = [self._validate(task, numbers[i]) for i, task in enumerate(sampler)]
            self._pass = (None, None)  # (index, permutation) of the last shuffled pass

    # -- validation ----------------------------------------------------------
    def _validate(self, task, index):
        if self.kind != "batched" and is_pair(task):
            # Column names are part of what the initialisation is learned on.
            names = _string_columns(task[0])
            if not self._names_seen:
                self.feature_names, self._names_seen = names, True
            elif not _same_names(names, self.feature_names):
                raise TaskError(
                    f"Task {index} has columns {_listed(names)}, but earlier tasks have "
                    f"{_listed(self.feature_names)}; every task needs the same columns in "
                    "the same order."
                )
        X, y = validate_task(task, index, self.signature)
        self.signature = (X.shape[1], y.shape[1])
        return X, y

    def _validate_list(self, drawn, first):
        return [self._validate(task, first + i) for i, task in enumerate(drawn)]

    def _draw(self, rng, n_tasks, first):
        if self.kind == "batched":
            drawn = self.sampler.sample_batch(rng, n_tasks)
            if isinstance(drawn, list):  # tasks of different sizes
                if len(drawn) != n_tasks:
                    raise TaskError(
                        f"{type(self.sampler).__name__}.sample_batch(rng, {n_tasks}) returned "
                        f"{len(drawn)} tasks; it must return exactly n_tasks={n_tasks} tasks."
                    )
                return self._validate_list(drawn, first)
            X, y = validate_task_batch(
                *drawn,
                first,
                self.signature,
                scan_values=self._scan_values,
                n_tasks=n_tasks,
                sampler_name=type(self.sampler).__name__,
            )
            self.signature = (X.shape[2], y.shape[2])
            return X, y
        return self._validate_list((self.sampler(rng) for _ in range(n_tasks)), first)

    # -- the tasks of a run --------------------------------------------------
    def draw_for(self, index, n_tasks, n_iterations=ITERATIONS_PER_DRAW):
        """The tasks of draw ``index`` and the generator to order their points with.

        Draw ``d`` holds the ``n_tasks`` tasks of every meta-iteration from
        ``d * ITERATIONS_PER_DRAW`` on.  A skreptile sampler draws them all
        in one call; a callable or a sequence, drawn one task at a time,
        only the first ``n_iterations`` meta-iterations' tasks, which are the
        same as in the whole draw.

        Returns
        -------
        tasks : tuple of ndarray or list of (X, y)
            Stacked arrays when the tasks have equal sizes, else a list.
        rng : numpy.random.Generator
            Keyed by ``(seed, index)``: it orders the points of the tasks, and
            gives the same order to the tasks a shorter draw has in common.
        """
        order_rng = keyed_generator(self.seed, _ORDER, index)
        first = index * ITERATIONS_PER_DRAW * n_tasks
        if self.kind == "batched":
            count = ITERATIONS_PER_DRAW * n_tasks
        else:
            count = min(n_iterations, ITERATIONS_PER_DRAW) * n_tasks
        if self.kind != "sequence":
            rng = keyed_generator(self.seed, _ITERATION, index)
            return stack_if_equal(self._draw(rng, count, first)), order_rng
        # A finite sequence: shuffled passes, so that every task is seen equally often.
        n = len(self.tasks)
        picked = []
        for position in range(first, first + count):
            epoch, offset = divmod(position, n)
            if self._pass[0] != epoch:
                self._pass = (epoch, keyed_generator(self.seed, _PASS, epoch).permutation(n))
            picked.append(self.tasks[self._pass[1][offset]])
        return stack_if_equal(picked), order_rng

    def statistics_tasks(self, n_tasks):
        """Tasks to compute the scaling statistics on: all of a finite sequence, else ``n_tasks``.

        They come from a stream of their own, so that the statistics do not
        depend on ``n_meta_iter`` or on the tasks that training draws.
        """
        if self.kind == "sequence":
            return self.tasks
        return _as_list(self._draw(keyed_generator(self.seed, _STATS), n_tasks, 0))


def _as_list(tasks):
    if isinstance(tasks, tuple):
        return list(zip(tasks[0], tasks[1]))
    return tasks


def stack_if_equal(tasks):
    """Stack a list of tasks into 3-D arrays when they all have the same size."""
    if isinstance(tasks, tuple):
        return tasks
    sizes = {X.shape[0] for X, _ in tasks}
    if len(sizes) == 1:
        return np.stack([X for X, _ in tasks]), np.stack([y for _, y in tasks])
    return tasks


def draws_on_device(sampler, device):
    """Whether ``meta_fit`` draws ``sampler``'s tasks on ``device`` with ``draw_tasks``.

    Only a sampler with a ``draw_tasks`` method does (a user's ``TaskSampler``
    without one keeps the host path), and only where its ``device_drawable``
    (True when absent) allows; its ``draw_on`` says where ("auto": on the
    device when it is not the CPU).
    """
    if not callable(getattr(sampler, "draw_tasks", None)):
        return False
    draw_on = check_draw_on(getattr(sampler, "draw_on", "auto"))
    if not getattr(sampler, "device_drawable", True):
        return False
    return draw_on == "device" or (draw_on == "auto" and str(device) != "cpu")
