"""Counter-based random numbers keyed by ``(seed, stream, task id, k)``, in torch.

Every random value is a hash of its key, computed with integer arithmetic that
is exact on any device: the values for a task depend on nothing drawn before,
can be computed for any subset of task ids, and are bit-identical on the CPU and
on any GPU.  So tasks can be drawn where they are used (on the training device),
a rank of a data-parallel run can draw only its share, and a resumed run draws
what an uninterrupted one would have.

The hash is ``lowbias32`` (C. Wellons' integer hash) applied to each 32-bit word
of the key in turn.  Its 32-bit products are computed in int64 with the
constants split into 16-bit halves, so that no intermediate reaches ``2**63``
(torch has no unsigned 32-bit arithmetic on every device).
"""

import math

import torch

_MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_GOLDEN = 0x9E3779B9


def _mul32(x, c):
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _hash32(x):
    """lowbias32 of int64 ``x`` in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


class KeyedRandom:
    """Random values keyed by task, drawn on any device.

    Parameters
    ----------
    seed : int
        Seed of the run (any Python int; its low 64 bits are used).

    Examples
    --------
    >>> import torch
    >>> from skreptile._engine.keyed_random import KeyedRandom
    >>> random = KeyedRandom(0)
    >>> ids = torch.arange(4)
    >>> u = random.uniform(stream=0, task_ids=ids, n=3)
    >>> u.shape, u.dtype
    (torch.Size([4, 3]), torch.float32)
    >>> bool((random.uniform(0, ids[2:], 3) == u[2:]).all())
    True
    """

    def __init__(self, seed):
        seed = int(seed) & ((1 << 64) - 1)
        self.seed = seed
        self._seed_words = (seed & _MASK32, seed >> 32)

    def bits(self, stream, task_ids, n):
        """Random 32-bit words, int64 tensor of shape ``(len(task_ids), n)``.

        Parameters
        ----------
        stream : int
            Which stream (parameters, points, order, ...): streams are independent.
        task_ids : tensor of int64, shape (n_tasks,)
            Global task ids; the result is on their device.
        n : int
            Words per task.
        """
        ids = torch.as_tensor(task_ids, dtype=torch.int64)
        k = torch.arange(n, dtype=torch.int64, device=ids.device)
        h = torch.tensor(
            _hash32_int(_hash32_int(self._seed_words[0] ^ _GOLDEN) ^ self._seed_words[1]),
            dtype=torch.int64,
        )
        h = torch.full_like(ids, int(_hash32_int(int(h) ^ (int(stream) & _MASK32))))
        h = _hash32(h ^ (ids & _MASK32))
        h = _hash32(h ^ ((ids >> 32) & _MASK32))
        return _hash32(h[:, None] ^ k[None, :])

    def uniform(self, stream, task_ids, n, low=0.0, high=1.0):
        """Float32 uniforms in ``[low, high)`` of shape ``(len(task_ids), n)``, from 24 bits."""
        u = (self.bits(stream, task_ids, n) >> 8).to(torch.float32) * (1.0 / (1 << 24))
        return low + (high - low) * u

    def normal(self, stream, task_ids, n):
        """Float32 standard normals of shape ``(len(task_ids), n)`` (Box-Muller)."""
        m = (n + 1) // 2
        bits = self.bits(stream, task_ids, 2 * m)
        # 1 - u keeps the logarithm's argument in (0, 1].
        u1 = 1.0 - (bits[:, :m] >> 8).to(torch.float32) * (1.0 / (1 << 24))
        u2 = (bits[:, m:] >> 8).to(torch.float32) * (1.0 / (1 << 24))
        r = torch.sqrt(-2.0 * torch.log(u1))
        z = torch.cat([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)], dim=1)
        return z[:, :n]

    def permutations(self, stream, task_ids, n_rows, n):
        """Random permutations of ``range(n)``, int64 of shape ``(len(task_ids), n_rows, n)``.

        A stable argsort of 32-bit hash keys: ties (rare) keep index order, the
        same on every device.
        """
        keys = self.bits(stream, task_ids, n_rows * n).view(-1, n_rows, n)
        return torch.sort(keys, dim=-1, stable=True).indices

    def subsets(self, stream, task_ids, sizes, k):
        """``k`` distinct indices in ``[0, sizes)``, int64 of shape ``sizes.shape + (k,)``.

        ``sizes`` has one row per task id (``(n_tasks,)`` or ``(n_tasks, m)``:
        ``m`` subsets per task) and every size is at least ``k``.  Robert
        Floyd's algorithm: ``k`` steps whatever the sizes, so choosing a few
        rows of a group of thousands costs no more than of a group of ten.
        Every subset is equally likely; the order within one is not uniform
        (a caller that needs a random order permutes it).
        """
        sizes = torch.as_tensor(sizes, dtype=torch.int64)
        words = self.bits(stream, task_ids, k * sizes[0].numel()).view(*sizes.shape, k)
        out = torch.empty_like(words)
        for step in range(k):
            top = sizes - (k - step)  # draw from [0, top]; take top itself if already taken
            # A multiply-shift maps a 32-bit word to [0, top + 1); sizes < 2**31 cannot overflow.
            pick = (words[..., step] * (top + 1)) >> 32
            taken = (out[..., :step] == pick[..., None]).any(dim=-1)
            out[..., step] = torch.where(taken, top, pick)
        return out


def _hash32_int(x):
    """:func:`_hash32` on a Python int (the key's constant part)."""
    return int(_hash32(torch.tensor(int(x) & _MASK32, dtype=torch.int64)))
