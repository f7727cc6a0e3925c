"""The sine demo with all defaults: held-out MSE and ``meta_fit`` time, this tree against another.

Each run is a fresh process: ``ReptileRegressor(random_state=seed).meta_fit(
SineTaskSampler(random_state=seed))`` timed, then, through the public API, one
``fit`` on 10 random support points and one ``predict`` on the task's 50-point
grid for each of 1000 new sine tasks (``common.held_out_sine_tasks``).  The two
trees alternate, ``--runs`` times each per seed, and the medians are reported.

The held-out MSE of one seed varies from run to run of meta-training far more
than between versions of the code (0.020 to 0.039 over twelve seeds on the
same code), so ``--seeds`` compares the mean over several seeds, with its 95%
confidence interval, and the paired per-seed differences.

    python benchmarks/sine_defaults.py --other /work/main --runs 3
    python benchmarks/sine_defaults.py --other /tmp/old --runs 1 --seeds 0-11
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_and_ci  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ONE_RUN = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {bench!r})
from common import held_out_sine_tasks
import skreptile
from skreptile import ReptileRegressor, SineTaskSampler
seed = {seed}
t = time.perf_counter()
model = ReptileRegressor(random_state=seed).meta_fit(SineTaskSampler(random_state=seed))
seconds = time.perf_counter() - t
Xs, ys, Xq, yq = held_out_sine_tasks(n_tasks=1000, n_support=10)
errors = []
for a, b, c, d in zip(Xs, ys, Xq, yq):
    errors.append(float(np.mean((model.fit(a, b).predict(c) - d) ** 2)))
print(json.dumps(dict(
    where=skreptile.__file__, seconds=seconds, mse=float(np.mean(errors)),
    adapt_steps=str(getattr(model, "adapt_steps_", model.adapt_steps)),
    adapt_lr=str(getattr(model, "adapt_lr_", model.adapt_lr)),
    n_meta_iter=int(model.n_meta_iter_),
)))
"""


def one_run(tree, seed):
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = ONE_RUN.format(bench=str(HERE), seed=seed)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="the other source tree (e.g. main's)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", help="a range such as 0-11: several seeds, one run each")
    args = parser.parse_args(argv)
    if args.seeds:
        first, last = (int(v) for v in args.seeds.split("-"))
        return several_seeds(Path(args.other), range(first, last + 1), args.runs)
    results = {"this": [], "other": []}
    for i in range(args.runs):
        for name, tree in (("other", Path(args.other)), ("this", ROOT)):
            r = one_run(tree, args.seed)
            results[name].append(r)
            print(f"run {i} {name}: {r}", flush=True)
    med = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "mse")}
        for name, runs in results.items()
    }
    print("medians:", json.dumps(med))
    print(
        f"time ratio this/other: {med['this']['seconds'] / med['other']['seconds']:.3f}; "
        f"MSE this {med['this']['mse']:.4f}, other {med['other']['mse']:.4f}"
    )
    return 0


def several_seeds(other, seeds, runs):
    """Mean MSE over ``seeds`` for both trees (95% CI), and the median paired time ratio."""
    mse = {"this": [], "other": []}
    ratios = []
    for seed in seeds:
        seconds, last = {"this": [], "other": []}, {}
        for _ in range(runs):
            for name, tree in (("other", other), ("this", ROOT)):
                r = one_run(tree, seed)
                seconds[name].append(r["seconds"])
                last[name] = r["mse"]  # the same in every run: same seed, same result on the CPU
        for name in mse:
            mse[name].append(last[name])
        ratios.append(statistics.median(seconds["this"]) / statistics.median(seconds["other"]))
        print(
            f"seed {seed}: MSE this {mse['this'][-1]:.4f}, other {mse['other'][-1]:.4f}; "
            f"time ratio this/other {ratios[-1]:.3f}",
            flush=True,
        )
    for name in ("this", "other"):
        mean, half = mean_and_ci(np.array(mse[name]))
        print(f"{name}: mean MSE over {len(seeds)} seeds {mean:.4f} +- {half:.4f} (95% CI)")
    diff = np.array(mse["this"]) - np.array(mse["other"])
    mean, half = mean_and_ci(diff)
    print(f"mean difference this - other: {mean:+.4f} +- {half:.4f} (95% CI)")
    print(f"median time ratio this/other: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
