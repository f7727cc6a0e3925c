"""Data-parallel meta-training: throughput against the number of processes, and the cost model.

Runs the same meta-training (same total meta-batch, same tasks) on 1 process
and on 2 gloo processes of this machine, alternately, several times each, and
prints the median throughput in tasks per second and the ratio.  The 1-process
run uses every core's thread; each of the 2 processes one core's worth (as
``torchrun`` sets ``OMP_NUM_THREADS`` for several processes per machine).
Then it times the all-reduce of the two models' buffers between the 2
processes, and prints the cost model of the user guide's page
*Meta-training on several processes* from the measured compute time.

Usage::

    python benchmarks/distributed_benchmark.py [--repeats 3]

Only CPU processes are measured: no GPU was available where it was written.
"""

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Default regressor (hidden (64, 64), 1 input, 1 output) on sine tasks, and the
# paper's Omniglot setting for the ConvNet (5-way, 10 shots, inner batch 10, 5
# inner steps) on synthetic 28x28 images, with a meta-batch of 4 (split 2 + 2).
CONFIGS = {
    "mlp": {"meta_batch_size": 16, "n_meta_iter": 400},
    "convnet": {"meta_batch_size": 4, "n_meta_iter": 12},
}
LATENCY_S = 20e-6  # assumed per-step latency of a ring all-reduce between machines
LINKS = {"10 Gb/s": 10e9 / 8, "100 Gb/s": 100e9 / 8}
WORKERS = (1, 2, 4, 8, 16, 32, 64)


def _estimator(name):
    from skreptile import ClassTaskSampler, ReptileClassifier, ReptileRegressor, SineTaskSampler
    from skreptile.nn import ConvNet

    params = dict(CONFIGS[name], device="cpu", random_state=0)
    if name == "mlp":
        return ReptileRegressor(**params), SineTaskSampler()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40 * 20, 28 * 28)).astype(np.float32)
    y = np.repeat(np.arange(40), 20)
    model = ReptileClassifier(
        module=ConvNet, input_shape=(1, 28, 28), inner_batch_size=10, inner_steps=5, **params
    )
    return model, ClassTaskSampler(X, y, n_way=5, k_shot=10, random_state=0)


def worker(name, outfile):
    """One rank: time meta_fit after a warm-up; rank 0 writes the seconds."""
    import torch
    import torch.distributed as dist

    from skreptile.distributed import init_from_env, shutdown

    info = init_from_env(backend="gloo")
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // info.world_size))
    model, sampler = _estimator(name)
    model.set_params(n_meta_iter=2).meta_fit(sampler)  # warm-up: imports, allocations
    model.set_params(n_meta_iter=CONFIGS[name]["n_meta_iter"])
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    model.meta_fit(sampler)
    if dist.is_initialized():
        dist.barrier()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "n_params": int(model.meta_params_.size)}
    if dist.is_initialized():
        result["allreduce_s"] = {}
        for n in (4353, int(model.meta_params_.size)):
            buffer = torch.zeros(n + 3 + info.world_size)
            for _ in range(20):
                dist.all_reduce(buffer)
            t0 = time.perf_counter()
            for _ in range(200):
                dist.all_reduce(buffer)
            result["allreduce_s"][n] = (time.perf_counter() - t0) / 200
    if info.rank == 0:
        Path(outfile).write_text(json.dumps(result))
    shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name, world, outfile):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("OMP_NUM_THREADS", None)
    if world > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world))
    else:
        env.pop("WORLD_SIZE", None)
    procs = []
    for rank in range(world):
        env_r = dict(env, RANK=str(rank), LOCAL_RANK=str(rank)) if world > 1 else env
        args = [sys.executable, __file__, "--worker", name, "--out", str(outfile)]
        procs.append(subprocess.Popen(args, env=env_r))
    for p in procs:
        if p.wait(timeout=900) != 0:
            raise RuntimeError(f"{name} on {world} process(es) failed")
    return json.loads(Path(outfile).read_text())


def cost_model(name, n_params, task_s):
    """Print the all-reduce time and the iteration rate for 1 to 64 workers.

    it/s is for one task per worker (the finest split, where communication
    weighs most); "k" is the number of tasks per worker from which the
    worker's compute takes longer than the all-reduce.
    """
    nbytes = 4 * (n_params + 3)  # + the task count and the two loss sums (+ p flags, ignored)
    print(f"\n{name}: {n_params} parameters, {nbytes / 1e3:.1f} kB all-reduced per meta-iteration;")
    print(f"  compute {task_s * 1e3:.3f} ms per task per meta-iteration (measured, 1 process)")
    header = "  ".join(f"{link + ' comm':>14} {'it/s':>7} {'k':>4}" for link in LINKS)
    print(f"  {'workers':>7}  {header}")
    for p in WORKERS:
        cells = []
        for bandwidth in LINKS.values():
            comm = 0.0 if p == 1 else 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * LATENCY_S
            k = max(1, math.ceil(comm / task_s))
            cells.append(f"{comm * 1e3:>12.3f}ms {1 / (task_s + comm):>7.1f} {k:>4}")
        print(f"  {p:>7}  " + "  ".join(cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.out)
    out = Path(f"/tmp/skreptile_distributed_benchmark_{os.getpid()}.json")
    print(f"{os.cpu_count()} CPU cores; torch gloo on 127.0.0.1; no GPU measured.")
    rows, measured = [], {}
    for name, config in CONFIGS.items():
        times = {1: [], 2: []}
        allreduce = []
        for _ in range(args.repeats):
            for world in (1, 2):  # alternated, so that load from others hits both alike
                result = run(name, world, out)
                times[world].append(result["seconds"])
                if world == 2:
                    allreduce.append(result["allreduce_s"])
        tasks = config["meta_batch_size"] * config["n_meta_iter"]
        one, two = statistics.median(times[1]), statistics.median(times[2])
        rows.append((name, config["meta_batch_size"], tasks / one, tasks / two, one / two))
        measured[name] = (result["n_params"], one / tasks, allreduce)
        print(
            f"{name}: 1 process {[round(t, 2) for t in times[1]]} s, 2 processes "
            f"{[round(t, 2) for t in times[2]]} s"
        )
    print(f"\nThroughput, median of {args.repeats} (tasks/s = meta_batch_size * n_meta_iter / s)")
    print(f"{'model':<8} {'meta-batch':>10} {'1 process':>10} {'2 processes':>12} {'ratio':>6}")
    for name, batch, t1, t2, ratio in rows:
        print(f"{name:<8} {batch:>10} {t1:>10.1f} {t2:>12.1f} {ratio:>6.2f}")
    print("\nAll-reduce between the 2 local gloo processes (median over runs, seconds):")
    for name, (_, _, allreduce) in measured.items():
        for key in sorted(allreduce[0], key=int):
            seconds = statistics.median(a[key] for a in allreduce)
            print(f"  {name} run: buffer of {key} parameters: {seconds * 1e6:.0f} us")
    print(
        f"\nCost model: ring all-reduce 2(p-1)/p * bytes / bandwidth + 2(p-1) * "
        f"{LATENCY_S * 1e6:.0f} us latency"
    )
    for name, (n_params, task_s, _) in measured.items():
        cost_model(name, n_params, task_s)
    out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
