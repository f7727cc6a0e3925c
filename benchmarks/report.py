"""Turn the results of ``run_benchmarks.py`` into ``docs/benchmarks.md``.

The GPU section between the ``gpu-benchmark`` markers belongs to
``gpu_benchmark.py``: rewriting the CPU figures keeps it as it is.
"""

import os

GPU_START, GPU_END = "<!-- gpu-benchmark:start -->", "<!-- gpu-benchmark:end -->"
GPU_PLACEHOLDER = "\n".join(
    [
        GPU_START,
        "",
        "## On a GPU",
        "",
        "This section awaits a run on a GPU. `PYTHONPATH=. python benchmarks/gpu_benchmark.py` "
        "(one process, at most 8 minutes on one GPU, `--budget-s 420` by default) writes it here and "
        "its figures to `benchmarks/gpu_results.json`: a hand-batched plain-PyTorch Reptile loop "
        "(`benchmarks/gpu_reference.py`, eager and captured in a CUDA graph) against skreptile's "
        "meta-training from 8 to 131,072 tasks per meta-iteration, where CUDA starts to beat the CPU "
        'beside the threshold of `device="auto"`, the default recipe and `fit` + `predict` with '
        '`device="auto"` against `"cpu"`, the paper\'s Omniglot setup (time per meta-iteration, '
        "100,000 projected, accuracy after a short run) and the test suite's result on that machine. "
        "`--dry-run` runs every section on the CPU with tiny sizes in seconds (the test suite does, "
        "in `tests/test_gpu_benchmark.py`) and writes elsewhere.",
        "",
        GPU_END,
    ]
)


def gpu_section(path):
    """The GPU section of the file at ``path`` (markers included), or the placeholder."""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if GPU_START in text and GPU_END in text:
            return GPU_START + text.split(GPU_START, 1)[1].split(GPU_END, 1)[0] + GPU_END
    return GPU_PLACEHOLDER


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(r, path):
    ref, d, hit, same = (
        r["reference"],
        r["defaults"],
        r["time_to_reference_quality"],
        r["same_time"],
    )
    rss = r["peak_rss_mib"]
    rss_keys = sorted(rss, key=int)
    rss_small, rss_big = rss[rss_keys[0]], rss[rss_keys[-1]]
    out = [
        "# Benchmarks",
        "",
        "Produced by `python benchmarks/run_benchmarks.py` (one run, all figures from the same process "
        f"and machine: {r['machine']}, torch {r['torch']}, skreptile {r['skreptile']}"
        + (", **quick mode**" if r["quick"] else "")
        + "). Held-out quality: mean squared error on new sine tasks, adapting on 10 support points "
        "and predicting the 50-point grid, the same tasks for every method, with a 95% confidence "
        "interval. The reference is a faithful re-implementation of the original demo's loop "
        "(one task per step, 5 SGD steps of 10 points, lr 0.02, outer step 0.1 annealed to 0), "
        "given `torch.set_flush_denormal(True)` and one CPU thread, like skreptile's small products.",
        "",
        "## Against the original loop",
        "",
        _table(
            ["run", "meta-train time (s)", "tasks/s", "held-out MSE"],
            [
                [
                    f"reference loop, {ref['iterations']:,} tasks, 8 adaptation steps",
                    f"{ref['seconds']:.2f}",
                    f"{ref['tasks_per_s']:.0f}",
                    f"{ref['mse']['8'][0] if '8' in ref['mse'] else ref['mse'][8][0]:.4f}",
                ],
                [
                    f"reference loop, {ref['iterations']:,} tasks, 32 adaptation steps",
                    f"{ref['seconds']:.2f}",
                    f"{ref['tasks_per_s']:.0f}",
                    f"{ref['mse']['32'][0] if '32' in ref['mse'] else ref['mse'][32][0]:.4f}",
                ],
                [
                    f"skreptile defaults (n_meta_iter={d['n_meta_iter']:,})",
                    f"{d['seconds']:.2f}",
                    f"{d['tasks_per_s']:.0f}",
                    f"{d['mse'][0]:.4f} ± {d['mse'][1]:.4f}",
                ],
                [
                    f"skreptile, shortest run reaching the reference (n_meta_iter={hit['n_meta_iter']:,})",
                    f"{hit['seconds']:.2f}",
                    "",
                    f"{hit['mse']:.4f} (target {hit['target_mse']:.4f})",
                ],
                [
                    f"skreptile in the reference's wall time (n_meta_iter={same['n_meta_iter']:,})",
                    f"{same['seconds']:.2f}",
                    "",
                    f"{same['mse'][0]:.4f} ± {same['mse'][1]:.4f}",
                ],
            ],
        ),
        "",
        f"**Time to the reference's quality: {hit['seconds']:.2f} s against {ref['seconds']:.2f} s, "
        f"{hit['speedup']:.1f}x faster.** (The target is the reference's better score of 8 and 32 "
        "adaptation steps.)",
        "",
        f"**Defaults through the public API** (`ReptileRegressor(random_state=0).meta_fit("
        f"SineTaskSampler(random_state=0))`, then `fit` on 10 points and `predict` on the 50-point "
        f"grid of each held-out task): MSE {d['public_fit_predict_mse'][0]:.4f} ± "
        f"{d['public_fit_predict_mse'][1]:.4f}, meta_fit in {d['seconds']:.2f} s against the "
        f"reference's {ref['seconds']:.2f} s ({d['seconds'] / ref['seconds']:.3f} of its time). "
        "The batched scoring used for the other rows matches this per-task loop to "
        f"{d['batched_vs_public_fit_max_abs_diff']:.1e} in MSE per task.",
        "",
        "## Quality against meta-training time",
        "",
        "![quality against time](images/quality_vs_time.png)",
        "",
        _table(
            ["recipe", "n_meta_iter", "time (s)", "tasks/s", "held-out MSE"],
            [
                [
                    c["recipe"],
                    f"{c['n_meta_iter']:,}",
                    f"{c['seconds']:.2f}",
                    f"{c['tasks_per_s']:.0f}",
                    f"{c['mse']:.4f}",
                ]
                for c in r["curve"]
            ],
        ),
        "",
        "Time is linear in `n_meta_iter` (default recipe): seconds per 1,000 meta-iterations at each "
        "length: "
        + ", ".join(f"{v:.2f}" for v in r["linearity"]["seconds_per_1000_iter"])
        + f"; least-squares slope {r['linearity']['fit_slope_s_per_1000']:.2f} s per 1,000 with "
        f"{r['linearity']['fit_intercept_s']:.2f} s intercept.",
        "",
        "## Peak memory",
        "",
        f"Peak RSS of a process running `meta_fit` with the defaults: {rss_small:.1f} MiB at "
        f"{int(rss_keys[0]):,} meta-iterations, {rss_big:.1f} MiB at {int(rss_keys[-1]):,} "
        f"({100 * (rss_big / rss_small - 1):+.1f}%): tasks are drawn in fixed-size chunks, so memory "
        "does not grow with the number of meta-iterations.",
        "",
        "## Adaptation latency",
        "",
        "`fit` on 10 points then `predict` on 50, per new task (200 tasks; the methods take "
        "turns in blocks of 20 tasks, so that a slow spell of the machine falls on all alike):",
        "",
        _table(
            ["method", "median (ms)", "90th percentile (ms)", "held-out MSE"],
            [
                [
                    x["method"],
                    f"{x['median_ms']:.2f}",
                    f"{x['p90_ms']:.2f}",
                    f"{x['mse']:.4f} ± {x['ci']:.4f}",
                ]
                for x in r["latency"]
            ],
        ),
        "",
    ]
    if "batched" in r:
        b, ms = r["batched"], r["must_show"]
        out += [
            "## Batched adaptation and the physical limit",
            "",
            f"`few_shot_predict` on {b['n_tasks']:,} new ten-point tasks ({b['adapt_steps']} steps, "
            f"50 query points each): **{b['tasks_per_s']:.0f} tasks/s** (median of 5; best "
            f"{b['best_tasks_per_s']:.0f}).",
            "",
            f"One adaptation of the default 1-64-64-1 network on 10 points is "
            f"{b['flops_per_task'] / 1e6:.1f} MFLOP (per step: forward and weight-gradient "
            "products of every layer, bias included, and the products flowing back to every layer "
            "but the first; 2 flops a multiply-add). Assumed peak: AMD EPYC (Zen 4, family 25 "
            "model 17), AVX-512 on two 256-bit FMA pipes = 32 float32 flops per cycle and core, at "
            "the 2.6 GHz the hypervisor reports: 83 GFLOP/s per core, 166 for the 2 cores. "
            f"Batched adaptation runs at {b['gflops']:.1f} GFLOP/s: "
            f"{100 * b['fraction_of_core_peak']:.1f}% of one core's peak, "
            f"{100 * b['fraction_of_cpu_peak']:.1f}% of the CPU's (one thread: products of a "
            "cache-sized block of tasks are under the 2^23 multiply-add threshold). A single `fit` "
            f"+ `predict` ({ms['fit_predict_median_ms']:.2f} ms median) reaches "
            f"{100 * r['single_fit_fraction_of_core_peak']:.1f}% of one core's peak: the 33 "
            "forward and 32 backward passes are some 15 numpy and BLAS calls a step (three "
            "products forward; per layer one product back and one `sgemm` that updates the "
            "weights in place), each of about a microsecond of dispatch for 1 to 3 microseconds "
            "of arithmetic.",
            "",
            "## Must show (this run)",
            "",
            _table(
                ["goal", "measured", "met"],
                [
                    [
                        "fit+predict median at most 1 ms and a tenth of the GP's",
                        f"{ms['fit_predict_median_ms']:.2f} ms; GP {ms['gp_median_ms']:.2f} ms "
                        f"(ratio {ms['fit_predict_median_ms'] / ms['gp_median_ms']:.3f})",
                        "yes"
                        if ms["fit_predict_at_most_1ms"] and ms["fit_predict_at_most_tenth_of_gp"]
                        else "no",
                    ],
                    [
                        "batched adaptation at least 2,500 tasks/s",
                        f"{ms['batched_tasks_per_s']:.0f} tasks/s",
                        "yes" if ms["batched_at_least_2500"] else "no",
                    ],
                    [
                        "no width where a larger meta-batch is slower per task (perceptron)",
                        "none"
                        if ms["no_larger_batch_slower"]
                        else "; ".join(
                            f"width {w}: T={a} -> T={b_}"
                            for w, a, b_ in ms["larger_meta_batch_slower"]
                        ),
                        "yes" if ms["no_larger_batch_slower"] else "no",
                    ],
                    [
                        "time to the reference's quality at least 30x faster",
                        f"{ms['speedup_to_reference_quality']:.1f}x",
                        "yes" if ms["speedup_at_least_30"] else "no",
                    ],
                ],
            ),
            "",
            f"Load average (1, 5, 15 min) at the start: {r.get('load_before')}, at the end: "
            f"{r.get('load_after')} (a shared 2-core machine: other sessions were running).",
            "",
        ]
    out += [
        "## Throughput",
        "",
        "Meta-training tasks per second (5 inner steps of 10 points each; median of five runs, "
        "the meta-batch sizes of a width taking turns round after round) "
        "against the meta-batch "
        "size and the hidden width (two hidden layers), meta-training alone (no held-out tasks, "
        "explicit adaptation), for the perceptron's engines (products under 2^18 "
        "multiply-adds a task, widths 64 and 128 here: the lean numpy inner loop on stacked "
        "arrays; wider: stacked weights, `bmm`, hand-written backward pass; both in cache-sized "
        'blocks on the threads of `n_threads="auto"`) and for `torch.func.vmap` over '
        "`functional_call` (the engine used for custom `module`s, in blocks one after another):",
        "",
    ]
    widths = sorted({t["width"] for t in r["throughput"]})
    sizes = sorted({t["meta_batch_size"] for t in r["throughput"]})
    rows = []
    for engine in dict.fromkeys(t["engine"] for t in r["throughput"]):
        for w in widths:
            cells = {
                t["meta_batch_size"]: t["tasks_per_s"]
                for t in r["throughput"]
                if t["engine"] == engine and t["width"] == w
            }
            if cells:
                rows.append([engine, w] + [f"{cells[s]:.0f}" if s in cells else "" for s in sizes])
    out.append(_table(["engine", "width"] + [f"T={s}" for s in sizes], rows))
    dips = []
    for engine in dict.fromkeys(t["engine"] for t in r["throughput"]):
        for w in widths:
            pts = sorted(
                (t["meta_batch_size"], t["tasks_per_s"])
                for t in r["throughput"]
                if t["engine"] == engine and t["width"] == w
            )
            dips += [
                f"{engine}, width {w}: {ra:.0f} at T={a}, {rb:.0f} at T={b}"
                for (a, ra), (b, rb) in zip(pts, pts[1:])
                if rb < ra
            ]
    out += [
        "",
        "A larger meta-batch slower per task than a smaller one in this run: "
        + ("; ".join(dips) if dips else "none")
        + ".",
    ]
    out += [
        "",
        "## What was tried and left out",
        "",
        "- CPU threads (`n_threads`): products under 2^23 multiply-adds run on one thread, and on "
        "the CPU a product covers one cache-sized block of tasks (about 4 MiB of weights and "
        "activations), so the default perceptron's products always qualify; while blocks run on "
        "block threads, the calling thread keeps one torch thread too (its operations between "
        "blocks left OpenMP workers spinning on the block threads' cores). Default recipe, "
        + "; ".join(
            f"{t['policy']}: {t['seconds']:.2f} s for {t['n_meta_iter']:,} meta-iterations"
            for t in r["threads"]
        )
        + ". With two threads the same code ran up to ten times slower whenever another "
        "process held a core (seen repeatedly on this shared 2-core machine: OpenMP's barriers "
        "wait for a thread that is not running).",
        "- Cache blocks: the drop of meta-training throughput at widths of 128 and more with large "
        "meta-batches came from the task slots outgrowing the caches (width 128 and 256 tasks: "
        "17 MB of weights and as much of gradients, every step reading and writing them several "
        "times). Tasks now run in blocks of about 4 MiB (1 MiB, half an L2 cache, left every "
        "torch call of a step a single task of a wide network: 20-55% fewer tasks/s at widths "
        "128 to 512), each block through all its inner steps in a workspace of its thread, its "
        "sum added to the total in block order while in cache, "
        "and plain SGD steps are fused into the backward pass (no gradient buffer). Blocks run on "
        "one thread per core (each block's small products on one torch thread; the threads meet "
        "once per meta-iteration), so a larger meta-batch, with more blocks, also uses more "
        "cores; and a meta-batch of one block (the default recipe) runs its inner loop on stacked "
        "numpy arrays, about twice as fast as through torch's dispatch.",
        "- torch's CPU `tanh` ran at about 3.6 ns an element on this CPU (torch 2.13), numpy's at "
        "0.4: CPU tensors are passed through `numpy.tanh` in place.",
        "- Meta-batch size: 4 and 8 tasks per meta-iteration lie on the same quality-per-second "
        "curve within noise; serial Reptile and 32 tasks are clearly below it. 8 is the default.",
        "- CUDA graphs and the GPU: no GPU was lent to the session that produced these figures; the "
        "CUDA path runs the same code without host synchronisation inside the loop (one "
        "finiteness check every 100 meta-iterations).",
        "",
    ]
    out += [gpu_section(path), ""]
    with open(path, "w") as f:
        f.write("\n".join(out))
