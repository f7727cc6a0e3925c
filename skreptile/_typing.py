"""Type aliases of skreptile's public API (for annotations only)."""

from __future__ import annotations

import os
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

#: A float array, as tasks are stored and returned.
FloatArray: TypeAlias = NDArray[np.floating[Any]]
#: Anything ``sklearn.utils.check_random_state`` accepts, and Generators.
RandomStateLike: TypeAlias = int | np.random.Generator | np.random.RandomState | None
#: One task: inputs ``(n_points, n_features)`` and targets ``(n_points[, n_outputs])``.
Task: TypeAlias = tuple[np.ndarray, np.ndarray]
#: Tasks drawn at once: stacked arrays ``(X, y)`` or a list of tasks of different sizes.
TaskBatch: TypeAlias = tuple[np.ndarray, np.ndarray] | list[Task]
#: A file or folder path.
PathLike: TypeAlias = str | os.PathLike[str]
