"""One rank of the data-parallel tests (tests/test_distributed.py) and its estimators.

Run as ``python tests/_distributed_worker.py SCENARIO OUTDIR [CHECKPOINT]`` with
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.  Each rank
writes ``rank<r>.pkl``: a dict of its fitted estimators, or of the error each
``meta_fit`` raised.  The test builds the same estimators in one process.
"""

import os
import pickle
import sys

import numpy as np
from sklearn.datasets import load_digits

from skreptile import ClassTaskSampler, ReptileClassifier, ReptileRegressor, SineTaskSampler
from skreptile._training.selftune import N_FRESH
from skreptile.evaluation import split_support_query

# meta_batch_size=5 does not divide among 2 ranks (3 + 2 tasks); adam keeps a
# state per slot, which the ranks must gather to save and to keep.
REGRESSOR = dict(
    meta_batch_size=5,
    inner_optimizer="adam",
    inner_lr=0.01,
    n_meta_iter=60,
    monitor_interval=20,
    device="cpu",
    random_state=0,
)
# Validated and early-stopped (at iteration 20, best 10).  Adaptation gentler
# than the defaults: 32 steps of 0.07 on 10 points of these barely trained
# models is chaotic, and the validation loss moves by percents when the
# weights move by one float rounding (measured: 3% for 4e-7).
VALIDATED = dict(REGRESSOR, inner_optimizer="sgd", inner_lr=0.02, meta_batch_size=3)
VALIDATED.update(early_stopping=True, n_iter_no_change=1, monitor_interval=10)
VALIDATED.update(adapt_lr=0.01, adapt_steps=8)
CLASSIFIER = dict(
    meta_batch_size=4, n_meta_iter=30, monitor_interval=10, device="cpu", random_state=0
)
# Fails (on rank 1) at block 1, iteration 64; rank 0 has written the checkpoint of iteration 64.
FAILING = dict(
    REGRESSOR, n_meta_iter=96, checkpoint_interval=32, hidden_layer_sizes=(16,), standardize=False
)
# The fresh held-out tasks of validation_fraction, one task that tells the shapes
# (no scaling statistics), then the 64 * 5 tasks of block 0.
FAIL_AFTER_CALLS = N_FRESH + 1 + 64 * 5


def validation_tasks():
    X, y = SineTaskSampler().sample_batch(np.random.default_rng(1), 6)
    return split_support_query(list(zip(X, y)), 10, random_state=0)


def class_sampler():
    X, y = load_digits(return_X_y=True)
    keep = y < 8
    return ClassTaskSampler(X[keep], y[keep], n_way=3, k_shot=4, random_state=0)


# Kept outside the sampler: checkpoints fingerprint a sampler's attributes.
LINE = {"calls": 0, "fail_after": None}


class Line:
    """A callable sampler of line tasks that fails after ``LINE["fail_after"]`` calls."""

    def __init__(self):
        LINE["calls"] = 0

    def __call__(self, rng):
        LINE["calls"] += 1
        if LINE["fail_after"] is not None and LINE["calls"] > LINE["fail_after"]:
            raise ValueError("the task store went away")
        x = rng.uniform(-1, 1, size=(12, 1))
        return x, rng.uniform(0.5, 1.5) * x[:, 0] + 1.0


# Task ids drawn on the device, kept outside the sampler (checkpoints fingerprint its attributes).
DRAWN = []


class CountingSine(SineTaskSampler):
    """Sine tasks drawn on the device that records the task ids it draws."""

    def draw_tasks(self, random, task_ids, device):
        DRAWN.extend(int(i) for i in task_ids)
        return super().draw_tasks(random, task_ids, device)


# meta_batch_size=5: rank 0 holds 2 slots, rank 1 three.
DEVICE_DRAWN = dict(REGRESSOR, n_meta_iter=40)


def fit_device_drawn():
    """The scenario "device": sine tasks drawn on the device; the ids each rank drew."""
    DRAWN.clear()
    model = ReptileRegressor(**DEVICE_DRAWN).meta_fit(CountingSine(draw_on="device"))
    return {"regressor": model, "drawn": sorted(DRAWN)}


def fit_all(checkpoint=None):
    """The estimators of the scenario "fit", each fitted (or its error)."""
    out = {}
    out["regressor"] = ReptileRegressor(**REGRESSOR).meta_fit(SineTaskSampler())
    out["validated"] = ReptileRegressor(**VALIDATED)
    out["validated"].meta_fit(SineTaskSampler(), validation_tasks=validation_tasks())
    out["classifier"] = ReptileClassifier(**CLASSIFIER).meta_fit(class_sampler())
    if checkpoint is not None:
        resumed = ReptileRegressor(checkpoint_path=checkpoint, **FAILING)
        out["resumed"] = resumed.meta_fit(Line())
    return out


def main(scenario, outdir, checkpoint=None):
    from skreptile.distributed import init_from_env, shutdown

    info = init_from_env(backend="gloo")
    if scenario == "fit":
        out = fit_all(checkpoint)
    elif scenario == "device":
        out = fit_device_drawn()
    else:  # "fail": rank 1's tasks give out in the second block
        LINE["fail_after"] = FAIL_AFTER_CALLS if info.rank == 1 else None
        model = ReptileRegressor(checkpoint_path=checkpoint, **FAILING)
        try:
            model.meta_fit(Line())
            out = {"error": None}
        except Exception as exc:  # noqa: BLE001 - the test reads it
            out = {"error": (type(exc).__name__, str(exc))}
    shutdown()  # the estimators must pickle and work without the group
    with open(os.path.join(outdir, f"rank{info.rank}.pkl"), "wb") as f:
        pickle.dump(out, f)


if __name__ == "__main__":
    # Through the module's own name: task fingerprints name the sampler's class
    # (_distributed_worker.Line, as the test process sees it, not __main__.Line).
    import _distributed_worker

    _distributed_worker.main(*sys.argv[1:])
