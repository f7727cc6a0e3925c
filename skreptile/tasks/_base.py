"""The task-sampler protocol and the validation of what samplers return.

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
between calls: a checkpointed ``meta_fit`` then resumes by restoring ``rng``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array

from .._typing import RandomStateLike, Task, TaskBatch


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

    def make_rng(self, fallback_seed: int) -> np.random.Generator:
        """The generator of a meta-training run: the sampler's seed, else ``fallback_seed``.

        Parameters
        ----------
        fallback_seed : int
            Seed used when the sampler's ``random_state`` is None (``meta_fit``
            passes one derived from the estimator's ``random_state``).

        Returns
        -------
        rng : numpy.random.Generator
            The generator ``meta_fit`` draws the tasks with.
        """
        if self.random_state is None:
            return np.random.default_rng(fallback_seed)
        return as_generator(self.random_state)

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


def seed_from_random_state(random_state: RandomStateLike) -> int:
    """An integer seed from anything sklearn accepts as ``random_state``."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class TaskError(ValueError):
    """A task sampler returned something that is not a valid task."""


def _as_2d_targets(y):
    return y[:, None] if y.ndim == 1 else y


def validate_task(task, index, expected=None, min_points=2):
    """Check one task and return ``(X, y)`` as 2-D float arrays.

    ``index`` names the task in messages; ``expected`` is ``(n_features, n_outputs)``
    of the tasks seen before, which this one must match.
    """
    where = f"Task {index}"
    if not (isinstance(task, (tuple, list)) and len(task) == 2):
        raise TaskError(
            f"{where}: a task sampler must return a pair (X, y), got {type(task).__name__}"
            + (f" of length {len(task)}" if hasattr(task, "__len__") else "")
            + "."
        )
    X, y = task
    try:
        X = check_array(X, dtype=np.float64, input_name="X")
        y = check_array(y, dtype=np.float64, ensure_2d=False, input_name="y")
    except ValueError as exc:
        raise TaskError(f"{where}: {exc}") from exc
    if y.ndim not in (1, 2):
        raise TaskError(f"{where}: y must be 1-D or 2-D, got {y.ndim} dimensions.")
    if X.shape[0] != y.shape[0]:
        raise TaskError(
            f"{where}: X and y have different numbers of points ({X.shape[0]} and {y.shape[0]})."
        )
    if X.shape[0] < min_points:
        raise TaskError(
            f"{where} has {X.shape[0]} point(s); meta-training tasks need at least {min_points}."
        )
    y = _as_2d_targets(y)
    _check_matches(where, X.shape[1], y.shape[1], expected)
    return X, y


def _check_matches(where, n_features, n_outputs, expected):
    if expected is None:
        return
    if n_features != expected[0]:
        raise TaskError(f"{where} has {n_features} features, but earlier tasks have {expected[0]}.")
    if n_outputs != expected[1]:
        raise TaskError(f"{where} has {n_outputs} outputs, but earlier tasks have {expected[1]}.")


def validate_task_batch(X, y, first_index, expected=None, min_points=2):
    """Check stacked tasks ``X (n_tasks, n_points, n_features)`` and ``y``."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    where = f"Tasks {first_index} to {first_index + len(X) - 1}"
    if X.ndim != 3 or y.ndim not in (2, 3) or X.shape[:2] != y.shape[:2]:
        raise TaskError(
            f"{where}: sample_batch must return X of shape (n_tasks, n_points, n_features) "
            f"and y of shape (n_tasks, n_points[, n_outputs]); got {X.shape} and {y.shape}."
        )
    if X.shape[1] < min_points:
        raise TaskError(
            f"{where} have {X.shape[1]} point(s); meta-training tasks need at least {min_points}."
        )
    for name, arr in (("X", X), ("y", y)):
        finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if not finite.all():
            bad = first_index + int(np.argmin(finite))
            raise TaskError(f"Task {bad}: {name} contains NaN or infinity.")
    if y.ndim == 2:
        y = y[:, :, None]
    _check_matches(where, X.shape[2], y.shape[2], expected)
    return X, y


class TaskStream:
    """Draws validated tasks from any task sampler, in order, reproducibly.

    ``draw(n)`` returns either stacked arrays ``(X, y)`` (tasks of equal size, from
    a :class:`TaskSampler`) or a list of ``(X, y)`` pairs.
    """

    def __init__(self, sampler, seed):
        self.sampler = sampler
        self.n_drawn = 0
        self.signature = None  # (n_features, n_outputs) once the first task is seen
        if isinstance(sampler, TaskSampler):
            self.kind = "batched"
            self.rng = sampler.make_rng(seed)
        elif callable(sampler):
            self.kind = "callable"
            self.rng = np.random.default_rng(seed)
        elif isinstance(sampler, Sequence) and not isinstance(sampler, (str, bytes)):
            self.kind = "sequence"
            self.rng = np.random.default_rng(seed)
            if len(sampler) == 0:
                raise TaskError("The sequence of tasks is empty.")
            self.tasks = []
            for i, task in enumerate(sampler):
                X, y = validate_task(task, i, self.signature)
                self.signature = (X.shape[1], y.shape[1])
                self.tasks.append((X, y))
            self._order = np.empty(0, dtype=np.intp)
        else:
            raise TypeError(
                "task_sampler must be a callable sampler(rng) -> (X, y), a sequence of "
                f"(X, y) tasks or a skreptile TaskSampler; got {type(sampler).__name__}."
            )

    def peek(self, n_tasks):
        """The next ``n_tasks`` tasks, which the following draws return again.

        Used to gather scaling statistics over the first meta-training tasks
        without changing which tasks the training sees.
        """
        tasks = self._draw_new(n_tasks)
        self._buffer = tasks
        return tasks

    def draw(self, n_tasks):
        """The next ``n_tasks`` tasks."""
        buffer = getattr(self, "_buffer", None)
        if buffer is None:
            return self._draw_new(n_tasks)
        if isinstance(buffer, tuple):
            n_buffered = len(buffer[0])
            head = (buffer[0][:n_tasks], buffer[1][:n_tasks])
            rest = (buffer[0][n_tasks:], buffer[1][n_tasks:])
        else:
            n_buffered = len(buffer)
            head, rest = buffer[:n_tasks], buffer[n_tasks:]
        self._buffer = rest if n_buffered > n_tasks else None
        if n_buffered >= n_tasks:
            return head
        more = self._draw_new(n_tasks - n_buffered)
        if isinstance(head, tuple) and isinstance(more, tuple):
            return np.concatenate([head[0], more[0]]), np.concatenate([head[1], more[1]])
        return _as_list(head) + _as_list(more)

    def _draw_new(self, n_tasks):
        first = self.n_drawn
        self.n_drawn += n_tasks
        if self.kind == "batched":
            drawn = self.sampler.sample_batch(self.rng, n_tasks)
            if isinstance(drawn, list):  # tasks of different sizes
                if len(drawn) != n_tasks:
                    raise TaskError(
                        f"sample_batch returned {len(drawn)} tasks where {n_tasks} were asked for."
                    )
                return self._validate_list(drawn, first)
            X, y = validate_task_batch(*drawn, first, self.signature)
            self.signature = (X.shape[2], y.shape[2])
            return X, y
        if self.kind == "callable":
            return self._validate_list((self.sampler(self.rng) for _ in range(n_tasks)), first)
        # A finite sequence: shuffled passes, so every task is seen equally often.
        while len(self._order) < n_tasks:
            self._order = np.concatenate([self._order, self.rng.permutation(len(self.tasks))])
        picked, self._order = self._order[:n_tasks], self._order[n_tasks:]
        return [self.tasks[i] for i in picked]

    def _validate_list(self, drawn, first):
        tasks = []
        for i, task in enumerate(drawn):
            X, y = validate_task(task, first + i, self.signature)
            self.signature = (X.shape[1], y.shape[1])
            tasks.append((X, y))
        return tasks

    def get_state(self, buffer=True):
        """Everything that decides the next tasks drawn, as plain data.

        With :meth:`set_state` this lets an interrupted ``meta_fit`` draw again
        exactly the tasks it would have drawn.  ``buffer=False`` leaves out the
        tasks drawn ahead by :meth:`peek`.
        """
        state = {
            "kind": self.kind,
            "n_drawn": self.n_drawn,
            "signature": self.signature,
            "rng": self.rng.bit_generator.state,
            "buffer": getattr(self, "_buffer", None) if buffer else None,
        }
        if self.kind == "sequence":
            state["order"] = self._order
        return state

    def set_state(self, state):
        """Restore a state returned by :meth:`get_state` (of a stream of the same kind)."""
        if state["kind"] != self.kind:
            raise ValueError(
                f"Cannot restore the state of a {state['kind']!r} task stream into a "
                f"{self.kind!r} one: the task sampler is not of the same kind."
            )
        self.rng.bit_generator.state = state["rng"]
        self.n_drawn = int(state["n_drawn"])
        signature = state["signature"]
        self.signature = None if signature is None else tuple(int(v) for v in signature)
        buffer = state["buffer"]
        self._buffer = list(buffer) if isinstance(buffer, list) else buffer
        if self.kind == "sequence":
            self._order = np.asarray(state["order"], dtype=np.intp)


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
