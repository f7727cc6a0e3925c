"""The table user's spelling of ``meta_fit``: ``meta_fit(X, y, groups=g)``."""

from ..tasks._group import GroupTaskSampler


def task_sampler_of(task_sampler, y, groups):
    """``task_sampler`` itself, or ``GroupTaskSampler(X, y, groups)`` when ``y`` or ``groups`` is given.

    The sampler form stays the way to set the sampler's options (``n_points``,
    ``preprocessor``, ...); this one uses their defaults.
    """
    if y is None and groups is None:
        return task_sampler
    if isinstance(task_sampler, GroupTaskSampler) or callable(task_sampler):
        raise TypeError(
            f"meta_fit got a task sampler ({type(task_sampler).__name__}) and y or groups: "
            "give either a sampler, or a table X with its targets y and groups=. Validation "
            "tasks go in validation_tasks=..."
        )
    if groups is None:
        raise ValueError(
            "meta_fit(X, y) needs groups=, the group (patient, store, day, ...) of every row: "
            "each group is a task. For tasks given as arrays, pass a list of (X, y) pairs instead."
        )
    if y is None:
        raise ValueError("meta_fit(X, groups=...) needs the targets y: meta_fit(X, y, groups=g).")
    return GroupTaskSampler(task_sampler, y, groups)
