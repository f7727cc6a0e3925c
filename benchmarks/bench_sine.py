"""Issue 2's figure: skreptile with all defaults against the original demo loop.

Run from the project root: ``python benchmarks/bench_sine.py``.  In one run it
meta-trains the faithful re-implementation of the original loop (30,000 tasks,
one per step) and ``ReptileRegressor(random_state=0)`` with all defaults, then
fits 10 points and predicts the 50-point grid of the same 1,000 new sine tasks
with each, and prints the held-out MSE and the wall times.
"""

import argparse
import time

import numpy as np
import torch
from common import held_out_sine_tasks, mean_and_ci
from reference_loop import adapt_and_predict, meta_train

from skreptile import ReptileRegressor, SineTaskSampler


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-iterations", type=int, default=30000)
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    Xs, ys, Xq, yq = held_out_sine_tasks(args.tasks)

    torch.set_flush_denormal(True)  # the reference gets the same CPU tip as skreptile
    ref_model, ref_time = meta_train(args.reference_iterations)
    torch.set_flush_denormal(False)
    ref_errors = {8: [], 32: []}
    for t in range(args.tasks):
        preds = adapt_and_predict(ref_model, Xs[t], ys[t], Xq[t], steps=(8, 32))
        for k in ref_errors:
            ref_errors[k].append(np.mean((preds[k] - yq[t]) ** 2))

    t0 = time.perf_counter()
    model = ReptileRegressor(random_state=0).meta_fit(SineTaskSampler(random_state=0))
    sk_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    sk_errors = [
        np.mean((model.fit(Xs[t], ys[t]).predict(Xq[t]) - yq[t]) ** 2) for t in range(args.tasks)
    ]
    latency = (time.perf_counter() - t0) / args.tasks

    n_ref = args.reference_iterations
    print(f"held-out tasks: {args.tasks} new sine tasks, 10 support points, 50-point grid as query")
    print(f"{'method':44s} {'meta-train s':>12s} {'tasks/s':>9s} {'MSE (95% CI)':>20s}")
    for k in (8, 32):
        m, ci = mean_and_ci(ref_errors[k])
        print(
            f"{'reference loop, ' + str(k) + ' adaptation steps':44s} {ref_time:12.2f} "
            f"{n_ref / ref_time:9.0f} {m:12.4f} +- {ci:.4f}"
        )
    m, ci = mean_and_ci(sk_errors)
    n_tasks = model.n_meta_iter * model.meta_batch_size
    print(
        f"{'skreptile defaults, ' + str(model.adapt_steps) + ' adaptation steps':44s} {sk_time:12.2f} "
        f"{n_tasks / sk_time:9.0f} {m:12.4f} +- {ci:.4f}"
    )
    print(f"meta_fit wall time / reference wall time: {sk_time / ref_time:.3f}")
    print(f"skreptile MSE / reference MSE at 8 steps: {m / np.mean(ref_errors[8]):.3f}")
    print(f"skreptile fit + predict per task: {latency * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
