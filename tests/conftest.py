import json

import numpy as np
import pytest
import torch

# One torch thread: the tests' networks are tiny, and skreptile leaves the
# thread count to its caller (see skreptile.cpu_threads).  With torch's default
# on two shared cores, OpenMP's waiting makes tiny products many times slower
# (measured: the suite took 7.7 minutes with -n 2; a sine meta_fit 2 to 68 s
# instead of 2 s), and xdist workers share the cores anyway.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # Tests that set the thread count themselves must not change the next ones.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def sine_support_and_query(n_tasks, seed, n_support=10):
    """New sine tasks: 10 support points and the 50-point grid as query."""
    from skreptile import SineTaskSampler

    rng = np.random.default_rng(seed)
    X, y = SineTaskSampler().sample_batch(rng, n_tasks)
    idx = np.argsort(rng.random((n_tasks, X.shape[1])), axis=1)[:, :n_support]
    rows = np.arange(n_tasks)[:, None]
    return X[rows, idx], y[rows, idx], X, y


def raw_group_table(n_groups=16, n_rows=20, seed=0):
    """A table as users hold it: a string column, a categorical one, missing values."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_groups * n_rows
    g = np.repeat(np.arange(n_groups), n_rows)
    x = rng.normal(size=n)
    kind = rng.choice(["flat", "house", "villa"], size=n)
    grade = pd.Categorical(rng.choice(["a", "b"], size=n))
    y = 2 * x + (kind == "villa") + rng.normal(size=n_groups)[g] + 0.1 * rng.normal(size=n)
    x_missing = x.copy()
    x_missing[rng.random(n) < 0.1] = np.nan
    frame = pd.DataFrame({"x": x_missing, "kind": kind, "grade": grade, "group": g, "y": y})
    return frame


def interrupting_meta_lr_at(iteration):
    """A stand-in for the engine's ``meta_lr_at`` that raises KeyboardInterrupt at ``iteration``
    (as Ctrl-C would); patch it over ``skreptile._engine.outer.meta_lr_at``."""
    import skreptile._engine.outer as engine_module

    real = engine_module.meta_lr_at

    def meta_lr_at(meta_lr, schedule, at, n_meta_iter):
        if at == iteration:
            raise KeyboardInterrupt
        return real(meta_lr, schedule, at, n_meta_iter)

    return meta_lr_at


def finished_checkpoint(path):
    """Whether the checkpoint file at ``path`` holds a completed run (kept after meta_fit)."""
    import json

    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["__header__"]))["finished"] is True


def learned_snapshot(est):
    """Every learned value of ``est`` (attributes ending in ``_``), arrays copied."""
    return {
        k: (v.copy() if isinstance(v, np.ndarray) else repr(v))
        for k, v in vars(est).items()
        if k.endswith("_") and not k.startswith("_")
    }


def assert_unchanged(before, est):
    """``est`` holds exactly the learned values of the snapshot ``before``."""
    after = learned_snapshot(est)
    assert after.keys() == before.keys()
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(after[k], v, err_msg=k)
        else:
            assert after[k] == v, k


def edit_checkpoint(path, edit):
    """Rewrite the checkpoint at ``path`` after ``edit(header, arrays)`` changed it in place."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays.pop("__header__")))
    edit(header, arrays)
    with open(path, "wb") as f:
        np.savez(f, __header__=np.array(json.dumps(header)), **arrays)
