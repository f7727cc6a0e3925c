"""All of skreptile's speed and quality figures, in one run: ``python benchmarks/run_benchmarks.py``.

In one process (plus two small child processes for peak memory) it

1. meta-trains a faithful re-implementation of the original demo loop (30,000
   tasks, one per step) as the reference, timing it and scoring it on 1,000
   held-out sine tasks (10 support points, the 50-point grid as query);
2. runs skreptile's default recipe for a range of ``n_meta_iter`` (the
   quality-versus-time curve, beside other meta-batch sizes), finds the
   shortest run that reaches the reference's held-out quality, and the quality
   reached in the reference's own wall time;
3. measures peak RSS of ``meta_fit`` at 1,000 and 10,000 meta-iterations;
4. times ``fit`` + ``predict`` on 10 points against ``GaussianProcessRegressor``
   (RBF) and ``MLPRegressor`` trained from scratch on the same tasks;
5. tabulates tasks/s against ``meta_batch_size`` and hidden width, for the
   perceptron's engines (lean numpy inner loop, bmm blocks) and for ``torch.func.vmap``;

and writes the tables and the plot into ``docs/benchmarks.md``.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from common import held_out_sine_tasks, mean_and_ci
from reference_loop import adapt_and_predict, meta_train

import skreptile
from skreptile import ReptileRegressor, SineTaskSampler

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs")


def held_out_mse(model, tasks, adapt_steps=None):
    """Mean held-out MSE of a meta-fitted model, all tasks adapted as one batch."""
    Xs, ys, Xq, yq = tasks
    if adapt_steps is not None:
        model.set_params(adapt_steps=adapt_steps)
    pred = model.few_shot_predict(Xs, ys, Xq)
    return ((pred - yq) ** 2).mean(axis=1)


def public_fit_predict_mse(model, tasks):
    """Held-out MSE through the public API: ``fit`` on 10 points, ``predict`` the grid, per task."""
    Xs, ys, Xq, yq = tasks
    return np.array(
        [np.mean((model.fit(Xs[t], ys[t]).predict(Xq[t]) - yq[t]) ** 2) for t in range(len(Xs))]
    )


def timed_meta_fit(**params):
    model = ReptileRegressor(random_state=0, device="cpu", **params)
    t0 = time.perf_counter()
    model.meta_fit(SineTaskSampler(random_state=0))
    return model, time.perf_counter() - t0


def reference(tasks, n_iterations):
    # The reference gets skreptile's CPU tips too: denormals flushed, and one
    # thread (its single-task products are tiny; with two threads it is slower,
    # and collapses when anything else runs on the machine).
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    model, seconds = meta_train(n_iterations)
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)
    Xs, ys, Xq, yq = tasks
    errors = {8: [], 32: []}
    for t in range(len(Xs)):
        preds = adapt_and_predict(model, Xs[t], ys[t], Xq[t], steps=(8, 32))
        for k in errors:
            errors[k].append(np.mean((preds[k] - yq[t]) ** 2))
    return seconds, {k: np.array(v) for k, v in errors.items()}


def quality_curve(tasks, recipes, iters):
    rows = []
    for name, params in recipes:
        for n in iters:
            model, seconds = timed_meta_fit(n_meta_iter=n, **params)
            mse = held_out_mse(model, tasks).mean()
            rows.append(
                dict(
                    recipe=name,
                    n_meta_iter=n,
                    seconds=seconds,
                    mse=float(mse),
                    tasks_per_s=n * model.meta_batch_size / seconds,
                )
            )
            print(f"  {name:28s} n_meta_iter={n:6d} {seconds:7.2f} s  MSE {mse:.4f}", flush=True)
    return rows


def time_to_quality(tasks, target, start_iter):
    """Shorten n_meta_iter (bisection on a log scale) until the target MSE is just reached."""
    lo, hi = 50, start_iter
    best = None
    while hi / lo > 1.15:
        mid = int(round(np.sqrt(lo * hi)))
        model, seconds = timed_meta_fit(n_meta_iter=mid)
        mse = held_out_mse(model, tasks).mean()
        print(f"  n_meta_iter={mid:6d} {seconds:6.2f} s  MSE {mse:.4f}", flush=True)
        if mse <= target:
            hi, best = mid, (mid, seconds, float(mse))
        else:
            lo = mid
    if best is None:
        model, seconds = timed_meta_fit(n_meta_iter=hi)
        best = (hi, seconds, float(held_out_mse(model, tasks).mean()))
    return best


def peak_rss(n_meta_iter):
    code = (
        "import resource, sys; from skreptile import ReptileRegressor, SineTaskSampler; "
        f"ReptileRegressor(random_state=0, device='cpu', n_meta_iter={n_meta_iter})"
        ".meta_fit(SineTaskSampler(random_state=0)); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0  # KiB -> MiB


def latency_table(model, tasks, n_tasks=200, block=20):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, WhiteKernel
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor

    Xs, ys, Xq, yq = tasks
    makers = {
        f"ReptileRegressor (meta-fitted, {model.adapt_steps} steps)": lambda: model,
        "GaussianProcessRegressor (RBF + noise)": lambda: GaussianProcessRegressor(
            RBF() + WhiteKernel(1e-3), normalize_y=True
        ),
        "RidgeCV (linear in x)": lambda: RidgeCV(),
        "MLPRegressor (64, 64) tanh from scratch": lambda: MLPRegressor(
            hidden_layer_sizes=(64, 64), activation="tanh", max_iter=500, random_state=0
        ),
    }
    # The methods take turns, a block of tasks each, so that a slower or faster
    # spell of a shared machine falls on all of them alike; within a block the
    # calls come back to back, as in an evaluation or a service.
    for make in makers.values():
        make().fit(Xs[0], ys[0]).predict(Xq[0])  # warm-up
    times = {name: [] for name in makers}
    errors = {name: [] for name in makers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, n_tasks, block):
            for name, make in makers.items():
                for t in range(start, min(start + block, n_tasks)):
                    est = make()
                    t0 = time.perf_counter()
                    pred = est.fit(Xs[t], ys[t]).predict(Xq[t])
                    times[name].append(time.perf_counter() - t0)
                    errors[name].append(np.mean((pred - yq[t]) ** 2))
    rows = []
    for name in makers:
        m, ci = mean_and_ci(errors[name])
        rows.append(
            dict(
                method=name,
                median_ms=1e3 * float(np.median(times[name])),
                p90_ms=1e3 * float(np.percentile(times[name], 90)),
                mse=float(m),
                ci=float(ci),
            )
        )
        print(f"  {name:45s} {rows[-1]['median_ms']:8.2f} ms  MSE {m:.4f}", flush=True)
    return rows


def _mlp_module(width):
    def build(n_in, n_out):
        return torch.nn.Sequential(
            torch.nn.Linear(n_in, width),
            torch.nn.Tanh(),
            torch.nn.Linear(width, width),
            torch.nn.Tanh(),
            torch.nn.Linear(width, n_out),
        )

    return build


def throughput(batch_sizes, widths, seconds_per_point=1.0, rounds=5):
    """Tasks/s of meta_fit, each point run ``rounds`` times for about ``seconds_per_point``.

    The meta-batch sizes of one width take turns, round after round (in
    alternating order), so that a slower or faster spell of a shared machine
    falls on all of them alike; each point is the median of its rounds.
    """
    rows = []
    for engine in ("perceptron (numpy / bmm)", "torch.func.vmap"):
        for width in widths:
            if engine == "torch.func.vmap" and width not in (64, 256):
                continue
            # A small step keeps wide networks from diverging; speed does not depend on it.
            # Meta-training alone: no held-out tasks, no choice of adaptation after it
            # (fixed costs that would dominate these short runs).
            params = dict(
                hidden_layer_sizes=(width, width),
                inner_lr=0.02,
                validation_fraction=None,
                adapt_steps=32,
                adapt_lr=0.01,
            )
            if engine == "torch.func.vmap":
                params["module"] = _mlp_module(width)
            sizes = {}
            for T in batch_sizes:  # a short run to size the measured ones
                _, s = timed_meta_fit(n_meta_iter=10, meta_batch_size=T, **params)
                sizes[T] = max(10, int(10 * seconds_per_point / max(s, 1e-3)))
            rates = {T: [] for T in batch_sizes}
            for r in range(rounds):
                for T in batch_sizes if r % 2 == 0 else batch_sizes[::-1]:
                    n = sizes[T]
                    seconds = timed_meta_fit(n_meta_iter=n, meta_batch_size=T, **params)[1]
                    rates[T].append(n * T / seconds)
            for T in batch_sizes:
                rows.append(
                    dict(
                        engine=engine,
                        width=width,
                        meta_batch_size=T,
                        tasks_per_s=float(np.median(rates[T])),
                        runs=rates[T],
                    )
                )
                print(
                    f"  {engine:28s} width={width:4d} T={T:4d} {np.median(rates[T]):9.0f} tasks/s",
                    flush=True,
                )
    return rows


def thread_policy(n_meta_iter):
    """Default recipe under the estimators' ``n_threads`` settings: "auto" (default), 1, all."""
    rows = []
    for label, n_threads in (
        ('n_threads="auto" (default)', "auto"),
        ("n_threads=1", 1),
        (f"n_threads={os.cpu_count()}", os.cpu_count()),
    ):
        _, seconds = timed_meta_fit(n_meta_iter=n_meta_iter, n_threads=n_threads)
        rows.append(dict(policy=label, seconds=seconds, n_meta_iter=n_meta_iter))
        print(f"  {label:40s} {seconds:.2f} s", flush=True)
    return rows


# Peak of this CPU (AMD EPYC, Zen 4: AVX-512 executed on two 256-bit FMA pipes,
# so 16 float32 fused multiply-adds, 32 flops, per cycle and core), at the
# 2.6 GHz the hypervisor reports (BogoMIPS 5192 / 2); turbo clocks are not visible.
FLOPS_PER_CYCLE = 32
CLOCK_HZ = 2.6e9


def adaptation_flops(layer_sizes, n_points, n_steps):
    """Floating-point operations of one full-batch adaptation (2 per multiply-add).

    Per step: the forward products, the weight gradients of every layer and
    the gradients flowing back to every layer but the first.
    """
    pairs = list(zip(layer_sizes[:-1], layer_sizes[1:]))
    macs = sum(n_points * (a + 1) * b for a, b in pairs)  # forward, bias included
    macs += sum(n_points * (a + 1) * b for a, b in pairs)  # weight and bias gradients
    macs += sum(n_points * a * b for a, b in pairs[1:])  # backward products
    return 2 * macs * n_steps


def batched_adaptation(model, n_tasks=2000, repeats=5):
    """Tasks/s of few_shot_predict on ``n_tasks`` new ten-point tasks (32 steps)."""
    Xs, ys, Xq, _ = held_out_sine_tasks(n_tasks, seed=7)
    model.few_shot_predict(Xs[:64], ys[:64], Xq[:64])  # warm-up
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.few_shot_predict(Xs, ys, Xq)
            times.append(time.perf_counter() - t0)
    rate = n_tasks / float(np.median(times))
    flops = adaptation_flops((1, 64, 64, 1), 10, model.adapt_steps)
    peak_core = FLOPS_PER_CYCLE * CLOCK_HZ
    row = dict(
        n_tasks=n_tasks,
        adapt_steps=model.adapt_steps,
        tasks_per_s=rate,
        best_tasks_per_s=n_tasks / min(times),
        flops_per_task=flops,
        gflops=rate * flops / 1e9,
        fraction_of_core_peak=rate * flops / peak_core,
        fraction_of_cpu_peak=rate * flops / (peak_core * os.cpu_count()),
    )
    print(
        f"  {rate:.0f} tasks/s (median of {repeats}; best {row['best_tasks_per_s']:.0f}), "
        f"{row['gflops']:.1f} GFLOP/s = {100 * row['fraction_of_core_peak']:.1f}% of one core's "
        f"peak, {100 * row['fraction_of_cpu_peak']:.1f}% of the CPU's",
        flush=True,
    )
    return row


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def plot_curve(rows, ref_seconds, ref_mse, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        pts = [r for r in rows if r["recipe"] == recipe]
        ax.plot([r["seconds"] for r in pts], [r["mse"] for r in pts], "o-", label=recipe)
    ax.plot([ref_seconds], [ref_mse], "k*", ms=14, label="original loop (30,000 tasks)")
    ax.axhline(ref_mse, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("meta_fit wall time (s), 2-core CPU")
    ax.set_ylabel("held-out MSE (1,000 new sine tasks)")
    ax.set_title("Quality against meta-training time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    args = parser.parse_args()
    quick = args.quick
    ref_iters = 3000 if quick else 30000
    tasks = held_out_sine_tasks(200 if quick else 1000)
    results = dict(
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        torch=torch.__version__,
        skreptile=skreptile.__version__,
        quick=quick,
        load_before=load_average(),
    )
    print(f"load average (1, 5, 15 min): {results['load_before']}", flush=True)

    print("1. reference loop", flush=True)
    ref_seconds, ref_errors = reference(tasks, ref_iters)
    ref_best_steps = min(ref_errors, key=lambda k: ref_errors[k].mean())
    ref_mse = float(ref_errors[ref_best_steps].mean())
    results["reference"] = dict(
        iterations=ref_iters,
        seconds=ref_seconds,
        tasks_per_s=ref_iters / ref_seconds,
        mse={k: [float(v.mean()), float(mean_and_ci(v)[1])] for k, v in ref_errors.items()},
    )
    print(
        f"  {ref_seconds:.2f} s, {ref_iters / ref_seconds:.0f} tasks/s, "
        f"MSE@8 {ref_errors[8].mean():.4f}, MSE@32 {ref_errors[32].mean():.4f}",
        flush=True,
    )

    print("2. skreptile defaults", flush=True)
    default_model, default_seconds = timed_meta_fit()
    d_err = held_out_mse(default_model, tasks)
    public = public_fit_predict_mse(default_model, tasks)
    results["defaults"] = dict(
        n_meta_iter=default_model.n_meta_iter,
        seconds=default_seconds,
        tasks_per_s=default_model.n_meta_iter * default_model.meta_batch_size / default_seconds,
        mse=[float(d_err.mean()), float(mean_and_ci(d_err)[1])],
        public_fit_predict_mse=[float(public.mean()), float(mean_and_ci(public)[1])],
        batched_vs_public_fit_max_abs_diff=float(np.max(np.abs(d_err - public))),
    )
    print(
        f"  {default_seconds:.2f} s, MSE {d_err.mean():.4f} (batched), "
        f"{public.mean():.4f} (public fit/predict per task)",
        flush=True,
    )

    print("3. time to reach the reference's quality", flush=True)
    n_hit, s_hit, mse_hit = time_to_quality(tasks, ref_mse, default_model.n_meta_iter)
    results["time_to_reference_quality"] = dict(
        target_mse=ref_mse,
        n_meta_iter=n_hit,
        seconds=s_hit,
        mse=mse_hit,
        speedup=ref_seconds / s_hit,
    )
    print(
        f"  n_meta_iter={n_hit}: {s_hit:.2f} s (reference {ref_seconds:.2f} s): "
        f"{ref_seconds / s_hit:.1f}x faster",
        flush=True,
    )

    print("4. quality in the reference's wall time", flush=True)
    iters_per_s = default_model.n_meta_iter / default_seconds
    n_same = int(iters_per_s * ref_seconds)
    same_model, same_seconds = timed_meta_fit(n_meta_iter=n_same)
    s_err = held_out_mse(same_model, tasks)
    results["same_time"] = dict(
        n_meta_iter=n_same,
        seconds=same_seconds,
        mse=[float(s_err.mean()), float(mean_and_ci(s_err)[1])],
    )
    print(f"  n_meta_iter={n_same}: {same_seconds:.2f} s, MSE {s_err.mean():.4f}", flush=True)

    print("5. quality against time, by meta-batch size", flush=True)
    iters = [300, 1000, 3000] if quick else [500, 1000, 2000, 5000, 10000, 20000]
    recipes = [
        ("meta_batch_size=8 (default)", {}),
        ("meta_batch_size=1, meta_lr=0.1", dict(meta_batch_size=1, meta_lr=0.1)),
        ("meta_batch_size=4", dict(meta_batch_size=4)),
        ("meta_batch_size=32", dict(meta_batch_size=32)),
    ]
    curve_iters = {name: iters for name, _ in recipes}
    curve = []
    for name, params in recipes:
        # Larger meta-batches cost more per iteration: same task budget range.
        n_list = curve_iters[name]
        if params.get("meta_batch_size", 8) == 32:
            n_list = [max(50, n // 4) for n in n_list]
        if params.get("meta_batch_size", 8) == 1:
            n_list = [n * 4 for n in n_list]
        curve += quality_curve(tasks, [(name, params)], n_list)
    results["curve"] = curve
    default_rows = [r for r in curve if r["recipe"].endswith("(default)")]
    slope = np.polyfit(
        [r["n_meta_iter"] for r in default_rows], [r["seconds"] for r in default_rows], 1
    )
    results["linearity"] = dict(
        seconds_per_1000_iter=[1000 * r["seconds"] / r["n_meta_iter"] for r in default_rows],
        fit_slope_s_per_1000=1000 * slope[0],
        fit_intercept_s=slope[1],
    )

    print("6. peak memory", flush=True)
    rss = {n: peak_rss(n) for n in (1000, 10000)}
    results["peak_rss_mib"] = rss
    print(
        f"  1,000 it: {rss[1000]:.1f} MiB, 10,000 it: {rss[10000]:.1f} MiB "
        f"({100 * (rss[10000] / rss[1000] - 1):+.1f}%)",
        flush=True,
    )

    print("7. fit + predict latency", flush=True)
    results["latency"] = latency_table(default_model.set_params(adapt_steps=32), tasks)

    print("8. throughput", flush=True)
    batch_sizes = [1, 8, 64] if quick else [1, 4, 16, 64, 256]
    widths = [64, 256] if quick else [64, 128, 256, 512]
    results["throughput"] = throughput(batch_sizes, widths, 0.5 if quick else 1.0)

    print("9. CPU thread policy", flush=True)
    results["threads"] = thread_policy(1000 if quick else 3000)

    print("10. batched adaptation (few_shot_predict)", flush=True)
    results["batched"] = batched_adaptation(default_model.set_params(adapt_steps=32))
    fit_row = results["latency"][0]
    flops = results["batched"]["flops_per_task"]
    results["single_fit_fraction_of_core_peak"] = flops / (
        1e-3 * fit_row["median_ms"] * FLOPS_PER_CYCLE * CLOCK_HZ
    )
    results["load_after"] = load_average()

    gp = next(x for x in results["latency"] if x["method"].startswith("Gaussian"))
    fastest = {}
    for t in results["throughput"]:
        if t["engine"].startswith("perceptron"):
            fastest.setdefault(t["width"], []).append((t["meta_batch_size"], t["tasks_per_s"]))
    slower = [
        (w, a, b)
        for w, pts in fastest.items()
        for (a, ra), (b, rb) in zip(sorted(pts), sorted(pts)[1:])
        if rb < ra
    ]
    results["must_show"] = dict(
        fit_predict_median_ms=fit_row["median_ms"],
        gp_median_ms=gp["median_ms"],
        fit_predict_at_most_1ms=fit_row["median_ms"] <= 1.0,
        fit_predict_at_most_tenth_of_gp=fit_row["median_ms"] <= 0.1 * gp["median_ms"],
        batched_tasks_per_s=results["batched"]["tasks_per_s"],
        batched_at_least_2500=results["batched"]["tasks_per_s"] >= 2500,
        larger_meta_batch_slower=[list(x) for x in slower],
        no_larger_batch_slower=not slower,
        speedup_to_reference_quality=results["time_to_reference_quality"]["speedup"],
        speedup_at_least_30=results["time_to_reference_quality"]["speedup"] >= 30,
    )
    print("must show:", json.dumps(results["must_show"], default=float), flush=True)

    os.makedirs(os.path.join(DOCS, "images"), exist_ok=True)
    plot_curve(curve, ref_seconds, ref_mse, os.path.join(DOCS, "images", "quality_vs_time.png"))
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    from report import write_report

    write_report(results, os.path.join(DOCS, "benchmarks.md"))
    print("wrote docs/benchmarks.md, docs/images/quality_vs_time.png, benchmarks/results.json")


if __name__ == "__main__":
    main()
