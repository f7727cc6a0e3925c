"""Sine-wave regression tasks, the toy problem of the Reptile paper."""

from __future__ import annotations

import numbers

import numpy as np

from .._typing import RandomStateLike
from ._base import TaskSampler
from ._device import check_draw_on


class SineTaskSampler(TaskSampler):
    """Draws tasks ``y = amplitude * sin(x + phase)`` (+ optional noise).

    The defaults reproduce the sine-wave demo of Nichol et al. (2018): amplitude
    uniform in [0.1, 5], phase uniform in [0, 2*pi], and 50 points on a regular
    grid over [-5, 5].

    Parameters
    ----------
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the tasks drawn by ``meta_fit``.  None defers to the estimator's
        ``random_state``.
    amplitude_range : tuple of float, default=(0.1, 5.0)
        Bounds of the uniform amplitude.
    phase_range : tuple of float, default=(0, 2*pi)
        Bounds of the uniform phase.
    x_range : tuple of float, default=(-5.0, 5.0)
        Bounds of the inputs.
    n_points : int, default=50
        Points per task.
    grid : bool, default=True
        If True the points lie on a regular grid (as in the paper); if False they
        are drawn uniformly in ``x_range`` for every task.
    noise_std : float, default=0.0
        Standard deviation of Gaussian noise added to the targets.
    draw_on : {"auto", "host", "device"}, default="auto"
        Where ``meta_fit`` draws the tasks.  "host": with numpy on the CPU,
        then copied to the training device (``sample_batch``).  "device": with
        torch on the training device (:meth:`draw_tasks`), from a keyed
        counter-based generator, so that no host work grows with the
        meta-batch and each rank of a distributed run draws only its share.
        "auto": "device" when the training device is not the CPU, else "host".
        The two streams differ (numpy's PCG64 against a keyed hash): the same
        seed gives other tasks on "host" and "device", from the same
        distribution.  Device-drawn tasks are the same on every device up to
        the float32 rounding of ``sin``.

    Examples
    --------
    >>> import numpy as np
    >>> from skreptile import SineTaskSampler
    >>> sampler = SineTaskSampler(random_state=0)
    >>> X, y = sampler(np.random.default_rng(0))
    >>> X.shape, y.shape
    ((50, 1), (50,))
    >>> Xs, ys = sampler.sample_batch(np.random.default_rng(0), 8)
    >>> Xs.shape, ys.shape
    ((8, 50, 1), (8, 50))
    """

    def __init__(
        self,
        random_state: RandomStateLike = None,
        amplitude_range: tuple[float, float] = (0.1, 5.0),
        phase_range: tuple[float, float] = (0.0, 2 * np.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        n_points: int = 50,
        grid: bool = True,
        noise_std: float = 0.0,
        draw_on: str = "auto",
    ) -> None:
        self.random_state = random_state
        self.amplitude_range = amplitude_range
        self.phase_range = phase_range
        self.x_range = x_range
        self.n_points = n_points
        self.grid = grid
        self.noise_std = noise_std
        self.draw_on = draw_on
        self._check_parameters()

    # Parameters checked when built: every task drawn from them is finite.
    _finite_by_construction = True

    def _check_parameters(self):
        for name in ("amplitude_range", "phase_range", "x_range"):
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name} must be a pair (low, high) of numbers, got {value!r}."
                ) from None
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise ValueError(f"{name} must be finite with low <= high, got {value!r}.")
        n = self.n_points
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 2:
            raise ValueError(f"n_points must be an integer >= 2, got {n!r}.")
        noise = self.noise_std
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not noise >= 0:
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise!r}.")
        if not np.isfinite(noise):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise!r}.")
        check_draw_on(self.draw_on)

    def sample_parameters(
        self, rng: np.random.Generator, n_tasks: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``(amplitude, phase)`` arrays for ``n_tasks`` tasks.

        Parameters
        ----------
        rng : numpy.random.Generator
            The generator to draw with.
        n_tasks : int
            Number of tasks.

        Returns
        -------
        amplitude : ndarray of shape (n_tasks,)
            Amplitude of each task's sine.
        phase : ndarray of shape (n_tasks,)
            Phase of each task's sine.
        """
        amplitude = rng.uniform(*self.amplitude_range, size=n_tasks)
        phase = rng.uniform(*self.phase_range, size=n_tasks)
        return amplitude, phase

    def sample_batch(self, rng: np.random.Generator, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_tasks`` tasks: ``X`` of shape (n_tasks, n_points, 1), ``y`` (n_tasks, n_points).

        Parameters
        ----------
        rng : numpy.random.Generator
            The generator to draw with.
        n_tasks : int
            Number of tasks.

        Returns
        -------
        X : ndarray of shape (n_tasks, n_points, 1)
            Inputs of the tasks.
        y : ndarray of shape (n_tasks, n_points)
            Targets of the tasks.
        """
        amplitude, phase = self.sample_parameters(rng, n_tasks)
        if self.grid:
            x = np.broadcast_to(np.linspace(*self.x_range, self.n_points), (n_tasks, self.n_points))
        else:
            x = rng.uniform(*self.x_range, size=(n_tasks, self.n_points))
        y = amplitude[:, None] * np.sin(x + phase[:, None])
        if self.noise_std:
            y = y + rng.normal(scale=self.noise_std, size=y.shape)
        return np.ascontiguousarray(x)[:, :, None], y

    def draw_tasks(self, random, task_ids, device):
        """Draw the tasks ``task_ids`` on ``device`` with torch (``draw_on="device"``).

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
        X : tensor of float32, shape (n_tasks, n_points, 1)
            Inputs of the tasks, on ``device``.
        y : tensor of float32, shape (n_tasks, n_points, 1)
            Targets of the tasks, on ``device``.
        """
        import torch

        ids = torch.as_tensor(task_ids, dtype=torch.int64, device=device)
        amplitude = random.uniform(0, ids, 1, *map(float, self.amplitude_range))
        phase = random.uniform(1, ids, 1, *map(float, self.phase_range))
        lo, hi = map(float, self.x_range)
        if self.grid:
            # The grid in float64 on the host (n_points values), as the host path has it.
            grid = torch.as_tensor(np.linspace(lo, hi, self.n_points), dtype=torch.float32)
            x = grid.to(device).expand(len(ids), self.n_points)
        else:
            x = random.uniform(2, ids, self.n_points, lo, hi)
        y = amplitude * torch.sin(x + phase)
        if self.noise_std:
            y = y + float(self.noise_std) * random.normal(3, ids, self.n_points)
        return x[:, :, None].contiguous(), y[:, :, None]
