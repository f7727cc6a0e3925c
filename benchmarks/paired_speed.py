"""The speed of this checkout against another commit, taking turns: ``--against COMMIT``.

Each round runs the same four measurements in a fresh process of each checkout
(a git worktree of ``--against``, made for the run and removed after), old and
new in turn, so that a slow spell of a shared machine falls on both:

* ``meta_fit``: the default regressor recipe on sine waves, 3,000 meta-iterations
  (no held-out tasks), tasks per second;
* ``fit+predict``: 10 support points, 50 query points, the median of 1,000 calls (ms);
* ``few_shot_predict``: 2,000 ten-point tasks adapted together, tasks per second;
* ``wide meta-batch``: a 1-256-256-1 perceptron, 64 tasks a meta-iteration
  (cache-sized blocks on every core), tasks per second;
* ``custom module``: the same network as a ``torch.nn.Sequential`` (the
  ``torch.func`` engine), 64 tasks a meta-iteration, tasks per second.

Prints every round's figures and the median ratio new / old of each (above 1:
faster, for rates; below 1: faster, for the latency).

``--full``: instead, ``benchmarks/run_benchmarks.py`` (``--quick`` with
``--quick``) runs in each checkout in turn, old first, and every timing of its
``results.json`` (seconds, tasks per second, latencies) is printed with the
ratio new / old.  The new checkout's ``docs/benchmarks.md`` and
``benchmarks/results.json`` are then those of this run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from checkouts import other_checkout

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure():
    """The figures of this process's skreptile, as a dict."""
    from skreptile import ReptileRegressor, SineTaskSampler

    out = {}
    model = ReptileRegressor(n_meta_iter=3000, validation_fraction=None, random_state=0)
    out["meta_fit tasks/s"] = _meta_fit_tasks_per_s(model)

    rng = np.random.default_rng(0)
    X, y = SineTaskSampler().sample_batch(rng, 2000)
    Xs, ys = X[:, :10].copy(), y[:, :10].copy()
    times = []
    for i in range(1000):
        t = time.perf_counter()
        model.fit(Xs[i], ys[i]).predict(X[i])
        times.append(time.perf_counter() - t)
    out["fit+predict ms"] = 1000 * float(np.median(times))

    start = time.perf_counter()
    model.few_shot_predict(Xs, ys, X)
    out["few_shot_predict tasks/s"] = len(Xs) / (time.perf_counter() - start)

    wide = ReptileRegressor(
        hidden_layer_sizes=(256, 256),
        meta_batch_size=64,
        n_meta_iter=80,
        validation_fraction=None,
        random_state=0,
    )
    out["wide meta-batch tasks/s"] = _meta_fit_tasks_per_s(wide)

    custom = ReptileRegressor(
        module=_sequential,
        meta_batch_size=64,
        n_meta_iter=40,
        validation_fraction=None,
        random_state=0,
    )
    out["custom module tasks/s"] = _meta_fit_tasks_per_s(custom)
    return out


def _meta_fit_tasks_per_s(model):
    from skreptile import SineTaskSampler

    start = time.perf_counter()
    model.meta_fit(SineTaskSampler(random_state=0))
    return model.n_meta_iter * model.meta_batch_size / (time.perf_counter() - start)


def _sequential(n_features, n_outputs):
    from torch import nn

    return nn.Sequential(
        nn.Linear(n_features, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, n_outputs)
    )


def _run_in(root):
    env = dict(os.environ, PYTHONPATH=root)
    code = (
        f"import sys, json; sys.path.insert(0, {HERE!r}); import paired_speed as p; "
        "import skreptile; "
        f"assert skreptile.__file__.startswith({root!r}), skreptile.__file__; "
        "print(json.dumps(p.measure()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=root, env=env, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


TIMINGS = ("seconds", "tasks_per_s", "_ms", "ms_", "latency")


def _leaves(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)


def _full_run(root, quick):
    command = [sys.executable, os.path.join(root, "benchmarks", "run_benchmarks.py")]
    env = dict(os.environ, PYTHONPATH=root)
    subprocess.run(command + (["--quick"] if quick else []), check=True, cwd=root, env=env)
    with open(os.path.join(root, "benchmarks", "results.json")) as f:
        return json.load(f)


def compare_full(other, quick, against):
    old, new = _full_run(other, quick), _full_run(ROOT, quick)
    new_leaves = dict(_leaves(new))
    ratios = []
    print(f"run_benchmarks.py{' --quick' if quick else ''}: old ({against}) then new")
    for path, value in _leaves(old):
        if not any(word in path for word in TIMINGS) or path not in new_leaves or not value:
            continue
        ratio = new_leaves[path] / value
        print(f"  {path:60s} old {value:12.4g}  new {new_leaves[path]:12.4g}  new/old {ratio:.3f}")
        if "tasks_per_s" in path:
            ratios.append(ratio)
    if ratios:
        print(
            f"tasks/s figures: median new/old {float(np.median(ratios)):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} figures)"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="pair run_benchmarks.py instead")
    parser.add_argument("--quick", action="store_true", help="with --full: its --quick mode")
    args = parser.parse_args()
    with other_checkout(args.against) as other:
        if args.full:
            compare_full(other, args.quick, args.against)
            return
        ratios = {}
        for r in range(args.rounds):
            old, new = _run_in(other), _run_in(ROOT)
            for key in old:
                ratios.setdefault(key, []).append(new[key] / old[key])
                print(f"round {r + 1}  {key:26s} old {old[key]:10.3f}  new {new[key]:10.3f}")
    print(f"median ratio new / old over {args.rounds} rounds (against {args.against}):")
    for key, values in ratios.items():
        print(
            f"  {key:26s} {float(np.median(values)):.3f}  (min {min(values):.3f}, max {max(values):.3f})"
        )


if __name__ == "__main__":
    main()
