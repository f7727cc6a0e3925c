"""skreptile on one GPU, in one run of at most 8 minutes: ``python benchmarks/gpu_benchmark.py``.

Run from a checkout with ``PYTHONPATH=.``; needs torch (a CUDA build), numpy,
scipy, scikit-learn and pandas (not skops; pytest only for the suite's section).
In one process, all figures from the same run (in this order):

a. ``throughput``: meta-training tasks/s of a hand-batched plain-PyTorch Reptile
   loop (``gpu_reference.py``: tasks drawn on the GPU, ``baddbmm``, the backward
   written out; eagerly and with one meta-iteration captured in a CUDA graph)
   against ``ReptileRegressor`` (width 64, 5 inner steps of 10 points, inner step
   0.02 in both) over meta-batch sizes 8 to 131,072;
f. ``crossover``: skreptile's tasks/s on CUDA and on the CPU at meta-batches 8 to
   128, the work (tasks x parameters x points of an inner step) from which CUDA
   wins, beside the threshold ``device="auto"`` uses (if the package defines one);
b. ``default_recipe``: ``ReptileRegressor(random_state=0)`` meta-fitted on
   ``SineTaskSampler(random_state=0)`` with ``device="auto"`` and ``"cpu"``: wall
   time and held-out MSE (a shorter ``n_meta_iter`` for both, said so, if the
   default 15,000 does not fit the section's share);
c. ``latency``: ``fit`` (10 points) + ``predict`` (50) of the meta-fitted models,
   ``"auto"`` against ``"cpu"``, taking turns in blocks of 20 calls;
d. ``omniglot``: the paper's 5-way Omniglot setup (``ConvNet``, Adam, 5 inner
   steps of 10 images, meta-batch 5): time per meta-iteration, projected time of
   100,000, 5-way 1-shot accuracy after that short run (Omniglot's minimal sets
   if their zips are beside the checkout, else synthetic 28x28 "characters", as
   the output says);
e. ``suite``: the test suite on this machine in a subprocess (if pytest is
   installed): the CUDA-relevant tests first, then the rest with ``-x``, in the
   time left.

Every section is guarded (an exception is recorded and the run goes on), has a
share of the time budget (``--budget-s``, default 420 s), and the JSON
(``--json``) and the GPU section of ``docs/benchmarks.md`` (``--markdown``,
between the ``gpu-benchmark`` markers) are rewritten after every section; a
watchdog writes them and exits if the run overruns its budget by ``--grace-s``.

``--dry-run`` runs every section on the CPU with tiny sizes (no graph capture,
no suite), writing to a temporary folder unless told where: the test suite's
check of this script.
"""

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from common import held_out_sine_tasks  # noqa: E402
from gpu_reference import ReferenceLoop, n_params  # noqa: E402
from report import GPU_END as END  # noqa: E402
from report import GPU_START as START  # noqa: E402

import skreptile  # noqa: E402
from skreptile import ClassTaskSampler, ReptileClassifier, ReptileRegressor, SineTaskSampler  # noqa: E402

SIZES = (8, 64, 512, 4096, 32768, 131072)
CROSSOVER_SIZES = (8, 16, 32, 64, 128)
# Shares of the budget; the suite gets what is left.  A section ends early when
# its share is spent (sizes skipped, shorter runs), and what one leaves goes on.
SHARES = {
    "throughput": 0.27,
    "crossover": 0.07,
    "default_recipe": 0.18,
    "latency": 0.04,
    "omniglot": 0.15,
    "suite": None,
}
GOALS = dict(tasks_per_s_32768=2.5e6, auto_over_cpu=1.0, latency_ratio=1.2, omniglot_minutes=15.0)
# Meta-training alone in the throughput runs: no held-out tasks, a fixed
# adaptation (no self-tuning after the run), the reference's inner step.
LEAN = dict(
    hidden_layer_sizes=(64, 64),
    inner_steps=5,
    inner_batch_size=10,
    inner_lr=0.02,
    early_stopping=False,
    validation_fraction=None,
    adapt_steps=32,
    adapt_lr=0.01,
)
PAPER_OMNIGLOT = dict(
    inner_optimizer="adam",
    inner_lr=0.001,
    meta_batch_size=5,
    inner_batch_size=10,
    inner_steps=5,
    adapt_steps=50,
    # The paper adapts at the inner step size and holds nothing out for validation.
    adapt_lr=None,
    validation_fraction=None,
    early_stopping=False,
)


def now():
    return time.perf_counter()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Run:
    """The results, the clock, and the files rewritten after every section."""

    def __init__(self, args):
        self.args, self.t0 = args, now()
        self.lock = threading.RLock()
        self.child = None  # the suite's subprocess, for the watchdog
        self.results = {"meta": environment(args), "sections": {}, "goals": []}
        self.current = None

    def elapsed(self):
        return now() - self.t0

    def remaining(self):
        return self.args.budget_s - self.elapsed()

    def deadline_for(self, name):
        """When section ``name`` must stop: its share, less what later sections need."""
        later = list(SHARES)[list(SHARES).index(name) + 1 :]
        reserve = sum(0.5 * (SHARES[s] or 0.1) for s in later) * self.args.budget_s
        share = SHARES[name]
        avail = self.remaining() - reserve if share is not None else self.remaining() - 5
        seconds = avail if share is None else min(share * self.args.budget_s, avail)
        return now() + max(seconds, 1.0)

    @contextlib.contextmanager
    def section(self, name):
        out = {"status": "running", "rows": []}
        with self.lock:
            self.results["sections"][name] = out
            self.current = name
        started = now()
        deadline = self.deadline_for(name)
        out["allotted_s"] = round(deadline - started, 1)
        print(f"\n== {name} (allotted {deadline - started:.0f} s) ==", flush=True)
        try:
            yield out, deadline
            if out["status"] == "running":
                out["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a section's failure must not end the run
            out["status"] = "error"
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["traceback"] = traceback.format_exc()
            print(f"  ERROR in {name}: {out['error']}", flush=True)
        finally:
            out["seconds"] = round(now() - started, 2)
            if torch.cuda.is_available():
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
            self.write()

    def write(self, note=None):
        """Rewrite the JSON and the markdown; a failure to write is printed, never raised."""
        try:
            self._write(note)
        except Exception as exc:  # noqa: BLE001 - the run goes on without this write
            print(f"  (could not write the results: {type(exc).__name__}: {exc})", flush=True)

    def _write(self, note):
        with self.lock:
            if note:
                self.results["note"] = note
            self.results["elapsed_s"] = round(self.elapsed(), 1)
            self.results["goals"] = goals(self.results)
            text = json.dumps(self.results, indent=1, default=_jsonable)
            path = Path(self.args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            write_markdown(Path(self.args.markdown), markdown(self.results))


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def environment(args):
    cuda = torch.cuda.is_available()
    return dict(
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        platform=platform.platform(),
        skreptile=skreptile.__version__,
        commit=_git_commit(),
        dry_run=args.dry_run,
        device=args.device,
        budget_s=args.budget_s,
        skops_importable=importable("skops"),
        sine_sampler_takes_draw_on=accepts(SineTaskSampler, "draw_on"),
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )


def importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _git_commit():
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - a checkout without git still runs
        return None


def accepts(cls, name):
    """Whether ``cls``'s constructor takes ``name`` (parameters of newer skreptile only)."""
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


class CaptureLog(logging.Handler):
    """Keeps what ``skreptile._engine.captured`` logs (which path a CUDA run took, and why)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if message not in self.messages and len(self.messages) < 10:
            self.messages.append(message)


@contextlib.contextmanager
def capture_log():
    handler = CaptureLog()
    logger = logging.getLogger("skreptile._engine.captured")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def time_runs(run, target_s, deadline, n0=2, n_max=10**7):
    """Grow ``n`` until ``run(n)`` (seconds) lasts ``target_s`` or the deadline stops it.

    Returns ``(n, seconds, runs)``: the last run's, and every ``(n, seconds)``.
    """
    n, runs = n0, []
    while True:
        seconds = run(n)
        runs.append((n, seconds))
        if seconds >= target_s or n >= n_max:
            break
        grow = min(64.0, max(2.0, 1.2 * target_s / max(seconds, 1e-4)))
        n_next = min(n_max, int(math.ceil(n * grow)))
        # Only if the longer run fits before the deadline (with room to spare).
        if now() + seconds * n_next / n * 1.3 > deadline:
            break
        n = n_next
    return n, seconds, runs


# ---------------------------------------------------------------- a. throughput
def skreptile_rate(T, device, target_s, deadline, sampler_kw=None, **params):
    """Tasks/s of ``meta_fit`` at meta-batch ``T`` (after a 2-iteration warm-up)."""
    model = ReptileRegressor(meta_batch_size=T, device=device, random_state=0, **{**LEAN, **params})
    sampler = SineTaskSampler(random_state=0, **(sampler_kw or {}))

    def run(n):
        model.set_params(n_meta_iter=n)
        sync(device)
        t = now()
        model.meta_fit(sampler)
        sync(device)
        return now() - t

    with capture_log() as messages:
        warm = run(2)
        n, seconds, runs = time_runs(run, target_s, deadline, n0=2)
    return dict(
        tasks_per_s=n * T / seconds,
        n_meta_iter=n,
        seconds=seconds,
        warm_up_s=warm,
        draw_on=_draw_on(sampler, device),
        capture_log=list(messages),
        finite=bool(np.isfinite(model.meta_params_).all()),
    )


def _draw_on(sampler, device):
    """Where the sampler drew: its ``draw_on`` ("auto" draws on any device but the CPU)."""
    draw_on = getattr(sampler, "draw_on", None)
    if draw_on is None:
        return "host (the sampler has no draw_on)"
    on_device = draw_on == "device" or (draw_on == "auto" and torch.device(device).type != "cpu")
    return f"{'device' if on_device else 'host'} (draw_on={draw_on!r})"


def reference_rate(T, device, target_s, deadline, graph):
    # On the CPU (dry runs), one torch thread, as run_benchmarks.py gives its reference:
    # with more, OpenMP's barriers stall whenever another process holds a core.
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        return _reference_rate(T, device, target_s, deadline, graph)
    finally:
        torch.set_num_threads(threads)


def _reference_rate(T, device, target_s, deadline, graph):
    loop = ReferenceLoop(T, device)
    if graph:
        loop.capture()
        step = loop.replay
    else:
        for _ in range(2):
            loop.step()
        step = loop.step

    def run(n):
        sync(device)
        t = now()
        for _ in range(n):
            step()
        sync(device)
        return now() - t

    n, seconds, runs = time_runs(run, target_s, deadline, n0=2)
    return dict(tasks_per_s=n * T / seconds, n_meta_iter=n, seconds=seconds, finite=loop.finite())


def guarded(label, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - one measurement's failure is recorded, the rest go on
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        print(f"  {label}: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def section_throughput(run, out, deadline):
    args, device = run.args, run.args.device
    sizes = SIZES[: args.n_sizes] if args.n_sizes else SIZES
    target = args.target_s
    out.update(device=device, inner_lr=LEAN["inner_lr"], network="1-64-64-1 tanh", target_s=target)
    print(
        f"  {'T':>7s} {'reference eager':>16s} {'reference graph':>16s} {'skreptile':>12s}  ratio"
    )
    last_rate = None
    for i, T in enumerate(sizes):
        left = deadline - now()
        # Each size needs three timed runs and their warm-ups: skip when that cannot fit.
        if left < 4 * target:
            out.setdefault("skipped", []).append(T)
            out["status"] = "partial"
            print(f"  {T:7d} skipped: {left:.0f} s left in this section")
            continue
        sub = now() + left / (len(sizes) - i)  # this size's share of what is left
        row = {"meta_batch_size": T}
        row["reference_eager"] = guarded(
            "reference eager", reference_rate, T, device, target, now() + (sub - now()) / 3, False
        )
        if torch.device(device).type == "cuda":
            row["reference_graph"] = guarded(
                "reference graph",
                reference_rate,
                T,
                device,
                target,
                now() + (sub - now()) / 2,
                True,
            )
        else:
            row["reference_graph"] = {"skipped": "no CUDA device (CUDA graphs need one)"}
        # The warm-up and the first run at the last size's rate: skip what cannot fit.
        guess = 4 * T / last_rate if last_rate else 0.0
        if guess > sub - now():
            row["skreptile"] = {
                "skipped": f"about {guess:.0f} s expected, {sub - now():.0f} s left"
            }
        else:
            row["skreptile"] = guarded("skreptile", skreptile_rate, T, device, target, sub)
            last_rate = row["skreptile"].get("tasks_per_s") or last_rate
        rates = [row[k].get("tasks_per_s") for k in ("reference_eager", "reference_graph")]
        best = max((r for r in rates if r), default=None)
        mine = row["skreptile"].get("tasks_per_s")
        row["reference_best"] = best
        row["ratio_to_reference"] = mine / best if mine and best else None
        out["rows"].append(row)
        run.write()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(
            f"  {T:7d} {_rate(rates[0]):>16s} {_rate(rates[1]):>16s} {_rate(mine):>12s}  "
            f"{_num(row['ratio_to_reference'], '.2f')}",
            flush=True,
        )
    draw = [r["skreptile"].get("draw_on") for r in out["rows"] if "draw_on" in r["skreptile"]]
    out["draw_on"] = draw[0] if draw else None
    logs = {m for r in out["rows"] for m in r["skreptile"].get("capture_log", [])}
    out["capture_log"] = sorted(logs)
    print(
        f"  skreptile's sampler draw_on: {out['draw_on']}; captured-graph log: {sorted(logs) or '-'}"
    )


def _rate(value):
    if not value:
        return "-"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value:,.0f}"


def _work(value):
    return "-" if value is None else f"{value:,}"


def _num(value, fmt):
    return "-" if value is None or not np.isfinite(value) else format(value, fmt)


# ---------------------------------------------------------------- e. crossover
def placement_threshold():
    """The work above which ``device="auto"`` sends meta-training to an accelerator, if defined."""
    try:
        module = importlib.import_module("skreptile._engine.placement")
    except ImportError:
        return None, None
    names = [n for n in dir(module) if n.isupper() and not n.startswith("_")]
    for name in sorted(names, key=lambda n: ("WORK" not in n, "THRESHOLD" not in n, n)):
        value = getattr(module, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name, value
    return None, None


def section_crossover(run, out, deadline):
    args = run.args
    device, cpu = args.device, "cpu"
    sizes = CROSSOVER_SIZES[: args.n_crossover] if args.n_crossover else CROSSOVER_SIZES
    per_point = (deadline - now()) / (2 * len(sizes))
    target = min(args.target_s / 2, per_point / 3)
    params, points = n_params(), LEAN["inner_batch_size"]
    out.update(device=device, target_s=target, params=params, points_per_step=points)
    name, threshold = placement_threshold()
    out.update(threshold_name=name, threshold=threshold)
    print(f"  {'T':>5s} {'work':>12s} {device:>10s} {'cpu':>10s}")
    for i, T in enumerate(sizes):
        left = deadline - now()
        if left < 2 * target:
            out.setdefault("skipped", []).append(T)
            out["status"] = "partial"
            continue
        sub = left / (len(sizes) - i) / 2
        row = {"meta_batch_size": T, "work": T * params * points}
        row["device"] = guarded(device, skreptile_rate, T, device, target, now() + sub)
        row["cpu"] = guarded("cpu", skreptile_rate, T, cpu, target, now() + sub)
        a, b = row["device"].get("tasks_per_s"), row["cpu"].get("tasks_per_s")
        row["device_over_cpu"] = a / b if a and b else None
        out["rows"].append(row)
        print(f"  {T:5d} {row['work']:12,d} {_rate(a):>10s} {_rate(b):>10s}", flush=True)
    wins = [r for r in out["rows"] if (r["device_over_cpu"] or 0) > 1]
    # The crossover: the smallest size from which the device wins at every larger size measured.
    cross = None
    for r in out["rows"]:
        if all(
            (s["device_over_cpu"] or 0) > 1
            for s in out["rows"]
            if s["meta_batch_size"] >= r["meta_batch_size"]
        ):
            cross = r
            break
    out["crossover_meta_batch"] = cross["meta_batch_size"] if cross else None
    out["crossover_work"] = cross["work"] if cross else None
    out["device_wins_at"] = [r["meta_batch_size"] for r in wins]
    print(
        f"  {device} wins from T={out['crossover_meta_batch'] or '-'} "
        f"(work {_work(out['crossover_work'])} = tasks x {params} params x {points} points); "
        f"skreptile's threshold: {f'{name} = {threshold:,}' if name else 'n/a'}"
    )


# ---------------------------------------------------------------- b. default recipe
def section_default_recipe(run, out, deadline):
    args = run.args
    tasks = held_out_sine_tasks(n_tasks=args.held_out_tasks)
    # Calibrate: a short run on each device (also the warm-up), then the longest
    # n_meta_iter (the default 15,000 if it fits) that both full runs fit in.
    calib = args.calibrate_iter
    per_iter = {}
    for device in ("auto", "cpu"):
        model = ReptileRegressor(random_state=0, device=device, n_meta_iter=calib)
        t = now()
        model.meta_fit(SineTaskSampler(random_state=0))
        per_iter[device] = (now() - t) / calib
    default = ReptileRegressor().n_meta_iter
    fit_in = (deadline - now()) * 0.85 / (per_iter["auto"] + per_iter["cpu"])
    n = default if fit_in >= default else max(calib, int(fit_in // 500 * 500) or calib)
    n = min(n, args.max_default_iter or n)
    out.update(n_meta_iter=n, default_n_meta_iter=default, shortened=n < default)
    out["calibration_s_per_iter"] = per_iter
    models = {}
    for device in ("cpu", "auto"):
        model = ReptileRegressor(random_state=0, device=device, n_meta_iter=n)
        sampler = SineTaskSampler(random_state=0)
        with capture_log() as messages:
            sync("cuda" if torch.cuda.is_available() else "cpu")
            t = now()
            model.meta_fit(sampler)
            sync("cuda" if torch.cuda.is_available() else "cpu")
            seconds = now() - t
        Xs, ys, Xq, yq = tasks
        mse = float(((model.few_shot_predict(Xs, ys, Xq) - yq) ** 2).mean())
        models[device] = model
        out["rows"].append(
            dict(
                device=device,
                seconds=seconds,
                mse=mse,
                draw_on=getattr(sampler, "draw_on", "host (no draw_on)"),
                capture_log=list(messages),
                n_iter=getattr(model, "n_iter_", None),
            )
        )
        print(f"  device={device!r:7s} n_meta_iter={n:,}: {seconds:6.2f} s, held-out MSE {mse:.4f}")
    auto, cpu = out["rows"][1], out["rows"][0]
    out["auto_over_cpu"] = auto["seconds"] / cpu["seconds"]
    out["held_out_tasks"] = len(tasks[0])
    note = f" (SHORTENED from the default {default:,} to fit the budget)" if n < default else ""
    print(f"  auto/cpu time ratio {out['auto_over_cpu']:.2f} (goal <= 1.0){note}")
    run.models = models


# ---------------------------------------------------------------- c. latency
def section_latency(run, out, deadline):
    args = run.args
    models = getattr(run, "models", None)
    if not models:
        out["note"] = "the default-recipe section left no models: short meta_fits here"
        models = {
            d: ReptileRegressor(random_state=0, device=d, n_meta_iter=200).meta_fit(
                SineTaskSampler(random_state=0)
            )
            for d in ("auto", "cpu")
        }
    Xs, ys, Xq, yq = held_out_sine_tasks(n_tasks=args.latency_calls, seed=7)
    times = {d: [] for d in models}
    for model in models.values():  # warm-up
        for t in range(min(10, len(Xs))):
            model.fit(Xs[t], ys[t]).predict(Xq[t])
    block, t0 = 20, 0
    while t0 < len(Xs) and now() < deadline:
        for d, model in models.items() if (t0 // block) % 2 == 0 else list(models.items())[::-1]:
            for t in range(t0, min(t0 + block, len(Xs))):
                start = now()
                model.fit(Xs[t], ys[t]).predict(Xq[t])
                times[d].append(now() - start)
        t0 += block
    for d in models:
        ms = 1000 * np.asarray(times[d])
        out["rows"].append(
            dict(
                device=d,
                calls=len(ms),
                median_ms=float(np.median(ms)),
                p90_ms=float(np.percentile(ms, 90)),
            )
        )
        print(
            f"  device={d!r:7s} fit+predict median {np.median(ms):.3f} ms, p90 {np.percentile(ms, 90):.3f} ms ({len(ms)} calls)"
        )
    med = {r["device"]: r["median_ms"] for r in out["rows"]}
    out["auto_over_cpu"] = med["auto"] / med["cpu"]
    print(f"  auto/cpu median ratio {out['auto_over_cpu']:.2f} (goal <= 1.2)")


# ---------------------------------------------------------------- d. omniglot
def synthetic_characters(n_classes, n_drawings=20, seed=0):
    """Stand-ins for Omniglot characters: three random strokes, each drawing jittered."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 30)
    strokes = rng.uniform(4, 23, size=(n_classes, 1, 3, 2, 2))  # class, -, stroke, end, (row, col)
    ends = strokes + rng.normal(0, 1.2, size=(n_classes, n_drawings, 3, 2, 2))
    pts = ends[..., 0, None, :] + t[:, None] * (ends[..., 1, None, :] - ends[..., 0, None, :])
    pts = np.clip(np.rint(pts), 0, 26).astype(int)  # (class, drawing, stroke, 30, 2)
    images = np.zeros((n_classes, n_drawings, 28, 28), dtype=np.float32)
    c = np.arange(n_classes)[:, None, None, None]
    d = np.arange(n_drawings)[None, :, None, None]
    r, k = pts[..., 0], pts[..., 1]
    for dr, dk in ((0, 0), (1, 0), (0, 1)):
        images[c, d, r + dr, k + dk] = 1.0
    target = np.repeat(np.arange(n_classes), n_drawings)
    return images.reshape(-1, 1, 28, 28), target


def omniglot_data(args):
    """(train X, y, test X, y, description): Omniglot's minimal sets, else synthetic."""
    folder = Path(args.omniglot_dir) if args.omniglot_dir else None
    if folder is not None and (folder / "images_background_small1.zip").exists():
        try:
            from skreptile.datasets import load_omniglot

            train = load_omniglot(folder / "images_background_small1.zip")
            other = load_omniglot(folder / "images_background_small2.zip")
            held_out = [a for a in other.alphabet_names if a not in train.alphabet_names]
            keep = np.isin(np.asarray(other.alphabet_names)[other.alphabet], held_out)
            return (
                train.images,
                train.target,
                other.images[keep],
                other.target[keep],
                f"Omniglot (images_background_small1; 1-shot episodes on the held-out alphabets {held_out})",
            )
        except Exception as exc:  # noqa: BLE001 - e.g. no Pillow on a bare machine
            reason = f"Omniglot in {folder} could not be read ({type(exc).__name__}: {exc})"
    else:
        reason = f"no Omniglot zips in {folder}" if folder else "Omniglot not asked for"
    X, y = synthetic_characters(args.omniglot_classes, seed=0)
    Xt, yt = synthetic_characters(max(20, args.omniglot_classes // 4), seed=1)
    return (
        X,
        y,
        Xt,
        yt,
        f"SYNTHETIC 28x28 random-stroke characters ({reason}); accuracy says nothing about Omniglot",
    )


def section_omniglot(run, out, deadline):
    from skreptile.nn import ConvNet

    args = run.args
    X, y, Xt, yt, data = omniglot_data(args)
    out.update(data=data, setup=dict(PAPER_OMNIGLOT, n_way=5, k_shot=10, augment="rot90"))
    print(f"  data: {data}")
    sampler = ClassTaskSampler(X, y, n_way=5, k_shot=10, augment="rot90", random_state=0)
    model = ReptileClassifier(module=ConvNet, device=args.device, random_state=0, **PAPER_OMNIGLOT)
    if args.dry_run:
        model.set_params(adapt_steps=5)

    def fit(n):
        model.set_params(n_meta_iter=n)
        sync(args.device)
        t = now()
        model.meta_fit(sampler)
        sync(args.device)
        return now() - t

    with capture_log() as messages:
        warm = fit(3)
        # Leave a third of the share for the evaluation's adaptation.
        target = max(0.05, (deadline - now()) * 0.45)
        n, seconds, runs = time_runs(fit, target, now() + (deadline - now()) * 0.6, n0=5)
    per_iter = seconds / n
    out.update(
        warm_up_s=warm,
        n_meta_iter=n,
        seconds=seconds,
        s_per_meta_iter=per_iter,
        projected_100k_min=per_iter * 1e5 / 60,
        capture_log=list(messages),
    )
    print(
        f"  {n} meta-iterations in {seconds:.2f} s: {1000 * per_iter:.1f} ms each; "
        f"100,000 would take {per_iter * 1e5 / 60:.1f} min (goal <= 15)"
    )
    test = ClassTaskSampler(Xt, yt, n_way=5, k_shot=1)
    # Episodes: a first 10 time the adaptation, then as many more as the share allows.
    rng = np.random.default_rng(5)
    t = now()
    first = min(10, args.omniglot_episodes)
    Xs, ys, Xq, yq = test.sample_episodes(rng, first, n_query=1)
    hits = list((model.few_shot_predict(Xs, ys, Xq) == yq).mean(1))
    per_episode = (now() - t) / first
    more = min(args.omniglot_episodes - first, int(0.8 * (deadline - now()) / per_episode))
    if more > 0:
        Xs, ys, Xq, yq = test.sample_episodes(rng, more, n_query=1)
        hits += list((model.few_shot_predict(Xs, ys, Xq) == yq).mean(1))
    episodes, accuracy = len(hits), float(np.mean(hits))
    out.update(
        accuracy=accuracy,
        episodes=episodes,
        eval_s=now() - t,
        accuracy_note=f"5-way 1-shot after {n} meta-iterations (short run), non-transductive, "
        f"{model.adapt_steps} adaptation steps; chance 20%",
    )
    print(
        f"  5-way 1-shot accuracy after {n} meta-iterations: {100 * accuracy:.1f}% ({episodes} episodes)"
    )


# ---------------------------------------------------------------- f. suite
SUITE_TARGETED = [
    "tests/test_sklearn_integration.py",
    "tests/test_common.py",
    "tests/test_speed_paths.py",
    "-k",
    "accelerators or test_common or test_speed_paths",
]


def run_pytest(run, pytest_args, timeout):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *pytest_args]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    t = now()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run.child = proc
    try:
        output, _ = proc.communicate(timeout=max(1, timeout))
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill(proc)
        output, _ = proc.communicate()
        timed_out = True
    finally:
        run.child = None
    lines = [line for line in (output or "").splitlines() if line.strip()]
    summary = next(
        (
            line
            for line in reversed(lines)
            if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line)
        ),
        None,
    )
    return dict(
        command=" ".join(cmd[1:]),
        seconds=now() - t,
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        summary=summary
        if not timed_out
        else f"timed out after {timeout:.0f} s; last line: {lines[-1] if lines else ''}",
        failed=[line for line in lines if line.startswith(("FAILED", "ERROR"))][:30],
        tail=lines[-15:],
    )


def _kill(proc):
    import signal

    with contextlib.suppress(Exception):
        os.killpg(proc.pid, signal.SIGKILL)


def section_suite(run, out, deadline):
    if run.args.dry_run or run.args.skip_suite:
        out["status"] = "skipped"
        out["reason"] = "--dry-run" if run.args.dry_run else "--skip-suite"
        print(f"  skipped ({out['reason']})")
        return
    if not importable("pytest"):
        out["status"] = "skipped"
        out["reason"] = "pytest is not installed on this machine"
        print("  skipped: pytest is not installed")
        return
    targeted = run_pytest(run, SUITE_TARGETED, deadline - now())
    out["rows"].append(dict(targeted, part="CUDA-relevant tests"))
    print(f"  CUDA-relevant tests: {targeted['summary']} ({targeted['seconds']:.0f} s)")
    for line in targeted["failed"]:
        print(f"    {line[:160]}")
    run.write()
    left = deadline - now()
    if left < 30:
        out["status"] = "partial"
        out["reason"] = f"{left:.0f} s left: no time for the whole suite"
        print(f"  whole suite not run: {out['reason']}")
        return
    whole = run_pytest(
        run, ["-x", "--ignore=tests/test_common.py", "--ignore=tests/test_speed_paths.py"], left
    )
    out["rows"].append(dict(whole, part="the rest of the suite (-x)"))
    print(f"  rest of the suite: {whole['summary']} ({whole['seconds']:.0f} s)")
    for line in whole["failed"]:
        print(f"    {line[:160]}")
    if whole["timed_out"]:
        out["status"] = "partial"


SECTIONS = {
    "throughput": section_throughput,
    "crossover": section_crossover,
    "default_recipe": section_default_recipe,
    "latency": section_latency,
    "omniglot": section_omniglot,
    "suite": section_suite,
}


# ---------------------------------------------------------------- goals and markdown
def goals(results):
    s = results["sections"]
    rows = []

    def add(goal, measured, met):
        rows.append(dict(goal=goal, measured=measured, met=met))

    tp = s.get("throughput", {}).get("rows", [])
    at = next((r for r in tp if r["meta_batch_size"] == 32768), None)
    if at and at["skreptile"].get("tasks_per_s"):
        v = at["skreptile"]["tasks_per_s"]
        add(">= 2.5M tasks/s at 32,768 tasks", _rate(v), v >= GOALS["tasks_per_s_32768"])
    for r in tp:
        if r.get("ratio_to_reference") is not None and r["meta_batch_size"] >= 4096:
            add(
                f"at least the reference loop's rate at {r['meta_batch_size']:,} tasks",
                f"{r['ratio_to_reference']:.2f}x",
                r["ratio_to_reference"] >= 1.0,
            )
    dr = s.get("default_recipe", {})
    if dr.get("auto_over_cpu") is not None:
        add(
            "default recipe: auto no slower than cpu",
            f"{dr['auto_over_cpu']:.2f}x",
            dr["auto_over_cpu"] <= 1.0,
        )
    la = s.get("latency", {})
    if la.get("auto_over_cpu") is not None:
        add(
            "fit+predict: auto within 1.2x of cpu",
            f"{la['auto_over_cpu']:.2f}x",
            la["auto_over_cpu"] <= 1.2,
        )
    om = s.get("omniglot", {})
    if om.get("projected_100k_min") is not None:
        v = om["projected_100k_min"]
        add("Omniglot: 100,000 meta-iterations in <= 15 min", f"{v:.1f} min", v <= 15)
    su = s.get("suite", {})
    if su.get("rows"):
        ok = all(r["returncode"] == 0 for r in su["rows"]) and su.get("status") == "ok"
        add("the suite passes", "; ".join(str(r["summary"]) for r in su["rows"]), ok)
    return rows


def markdown(results):
    m, s = results["meta"], results["sections"]
    lines = [START, "", "## On a GPU", ""]
    lines.append(
        f"Produced by `python benchmarks/gpu_benchmark.py` (one run, {results.get('elapsed_s', 0):.0f} s, "
        f"budget {m['budget_s']:.0f} s): GPU {m['gpu'] or 'none'}, torch {m['torch']}, CUDA {m['cuda']}, "
        f"{m['cpu_count']} CPU cores, skreptile {m['skreptile']} (commit {m['commit']})."
        + (" **Dry run on the CPU: tiny sizes, the figures mean nothing.**" if m["dry_run"] else "")
    )
    lines.append("")
    if results.get("note"):
        lines += [f"**{results['note']}**", ""]
    for name, sec in s.items():
        if sec.get("status") not in ("ok", "partial", "skipped"):
            lines += [
                f"- section `{name}`: {sec.get('status')} {sec.get('error', '')}".rstrip(),
                "",
            ]
    tp = s.get("throughput", {})
    if tp.get("rows"):
        lines += [
            "Meta-training tasks/s (width 64, 5 inner steps of 10 points; runs of "
            f"about {tp.get('target_s', 0):g} s after a warm-up): a hand-batched plain-PyTorch loop "
            "(`benchmarks/gpu_reference.py`: tasks drawn on the GPU, `baddbmm`, the backward written out) "
            f"against `ReptileRegressor` (tasks drawn on: {tp.get('draw_on')}).",
            "",
            "| meta-batch | reference, eager | reference, CUDA graph | skreptile | skreptile / best reference |",
            "|---|---|---|---|---|",
        ]
        for r in tp["rows"]:
            cells = [
                _rate(r[k].get("tasks_per_s"))
                for k in ("reference_eager", "reference_graph", "skreptile")
            ]
            lines.append(
                f"| {r['meta_batch_size']:,} | {' | '.join(cells)} | {_num(r['ratio_to_reference'], '.2f')} |"
            )
        if tp.get("skipped"):
            lines.append(f"\nSkipped for the budget: {', '.join(f'{t:,}' for t in tp['skipped'])}.")
        lines.append("")
    cr = s.get("crossover", {})
    if cr.get("rows"):
        lines += [
            f"Where the accelerator starts to pay (skreptile, width 64): tasks/s on {cr['device']} and on the CPU.",
            "",
            "| meta-batch | work (tasks x params x points) | " + cr["device"] + " | cpu |",
            "|---|---|---|---|",
        ]
        for r in cr["rows"]:
            lines.append(
                f"| {r['meta_batch_size']} | {r['work']:,} | {_rate(r['device'].get('tasks_per_s'))} | "
                f"{_rate(r['cpu'].get('tasks_per_s'))} |"
            )
        thr = (
            f"`{cr['threshold_name']}` = {cr['threshold']:,}" if cr.get("threshold_name") else "n/a"
        )
        lines += [
            "",
            f"{cr['device']} wins from a work of {_work(cr.get('crossover_work'))}; skreptile's threshold: {thr}.",
            "",
        ]
    dr = s.get("default_recipe", {})
    if dr.get("rows"):
        note = (
            f" (shortened from the default {dr['default_n_meta_iter']:,} to fit the budget)"
            if dr.get("shortened")
            else ""
        )
        lines += [
            f"Default recipe, `ReptileRegressor(random_state=0).meta_fit(SineTaskSampler(random_state=0))`, "
            f"n_meta_iter={dr['n_meta_iter']:,}{note}; held-out MSE on {dr['held_out_tasks']} sine tasks (10 support points, the 50-point grid):",
            "",
            "| device | meta_fit (s) | held-out MSE |",
            "|---|---|---|",
        ]
        lines += [f"| {r['device']} | {r['seconds']:.2f} | {r['mse']:.4f} |" for r in dr["rows"]]
        lines += ["", f"auto / cpu: {_num(dr.get('auto_over_cpu'), '.2f')}.", ""]
    la = s.get("latency", {})
    if la.get("rows"):
        lines += [
            "`fit` (10 points) + `predict` (50) of a meta-fitted model:",
            "",
            "| device | median (ms) | 90th percentile (ms) | calls |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['device']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['calls']} |"
            for r in la["rows"]
        ]
        lines += ["", f"auto / cpu: {_num(la.get('auto_over_cpu'), '.2f')}.", ""]
    om = s.get("omniglot", {})
    if om.get("s_per_meta_iter"):
        lines += [
            "The paper's Omniglot setup (`ConvNet`, 5-way, Adam, 5 inner steps of 10 images, meta-batch 5): "
            f"{1000 * om['s_per_meta_iter']:.1f} ms per meta-iteration ({om['n_meta_iter']} timed), "
            f"**{om['projected_100k_min']:.1f} min projected for 100,000**; accuracy {100 * om['accuracy']:.1f}% "
            f"({om['accuracy_note']}, {om['episodes']} episodes). Data: {om['data']}.",
            "",
        ]
    su = s.get("suite", {})
    if su:
        if su.get("rows"):
            for r in su["rows"]:
                lines.append(f"- Test suite, {r['part']}: {r['summary']} ({r['seconds']:.0f} s).")
                lines += [f"  - `{f[:200]}`" for f in r["failed"]]
        else:
            lines.append(f"- Test suite: {su.get('status')} ({su.get('reason', '')}).")
        lines.append("")
    if results.get("goals"):
        lines += ["| goal | measured | met |", "|---|---|---|"]
        lines += [
            f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'no'} |"
            for g in results["goals"]
        ]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_markdown(path, section):
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--budget-s", type=float, default=None, help="time budget (default 420; 60 with --dry-run)"
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="the watchdog stops the run this long after the budget",
    )
    p.add_argument(
        "--json",
        default=None,
        help="default benchmarks/gpu_results.json (a temp folder with --dry-run)",
    )
    p.add_argument(
        "--markdown", default=None, help="default docs/benchmarks.md (a temp folder with --dry-run)"
    )
    p.add_argument("--dry-run", action="store_true", help="every section on the CPU, tiny sizes")
    p.add_argument("--device", default=None, help="default cuda (cpu with --dry-run)")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset, in this order"
    )
    p.add_argument("--skip-suite", action="store_true")
    p.add_argument(
        "--omniglot-dir", default=None, help="default ../shared/data/omniglot beside the checkout"
    )
    args = p.parse_args(argv)
    dry = args.dry_run
    args.device = args.device or ("cpu" if dry else "cuda")
    args.budget_s = args.budget_s or (60.0 if dry else 420.0)
    if dry and not (args.json and args.markdown):
        # A temporary folder only where a path was not given (the tests give both).
        folder = Path(tempfile.mkdtemp(prefix="gpu_benchmark_"))
        args.json = args.json or str(folder / "gpu_results.json")
        args.markdown = args.markdown or str(folder / "benchmarks.md")
    else:
        args.json = args.json or str(HERE / "gpu_results.json")
        args.markdown = args.markdown or str(ROOT / "docs" / "benchmarks.md")
    if args.omniglot_dir is None and not dry:
        args.omniglot_dir = str(ROOT.parent / "shared" / "data" / "omniglot")
    # Sizes: tiny in a dry run.
    args.n_sizes = 2 if dry else None
    args.n_crossover = 2 if dry else None
    args.target_s = 0.05 if dry else 1.5
    args.held_out_tasks = 50 if dry else 1000
    args.calibrate_iter = 10 if dry else 500
    args.max_default_iter = 30 if dry else None
    args.latency_calls = 20 if dry else 300
    args.omniglot_classes = 40 if dry else 600
    args.omniglot_episodes = 5 if dry else 200
    return args


def main(argv=None):
    args = parse(argv)
    run = Run(args)
    m = run.results["meta"]
    print(
        f"skreptile GPU benchmark{' (DRY RUN on the CPU)' if args.dry_run else ''}: "
        f"GPU {m['gpu'] or 'none'}, torch {m['torch']}, CUDA {m['cuda']}, {m['cpu_count']} CPU cores, "
        f"skreptile {m['skreptile']} ({m['commit']}); device {args.device!r}, budget {args.budget_s:.0f} s",
        flush=True,
    )
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        run.write(
            note="CUDA is not available on this machine: nothing measured (use --dry-run on a CPU)"
        )
        print("CUDA is not available: nothing measured (try --dry-run).")
        return 2
    watchdog = threading.Timer(args.budget_s + args.grace_s, _overrun, args=(run,))
    watchdog.daemon = True
    watchdog.start()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name, fn in SECTIONS.items():
        if name not in wanted:
            continue
        with run.section(name) as (out, deadline):
            fn(run, out, deadline)
    watchdog.cancel()
    run.write()
    print(f"\n== goals (run took {run.elapsed():.0f} s) ==")
    for g in run.results["goals"]:
        print(f"  {'MET    ' if g['met'] else 'NOT MET'} {g['goal']}: {g['measured']}")
    print(f"JSON: {args.json}\nmarkdown: {args.markdown}")
    return 0


def _overrun(run):
    """The watchdog: past budget and grace, write what there is and stop the process."""
    if run.child is not None:
        _kill(run.child)
    sec = run.results["sections"].get(run.current)
    if sec is not None and sec.get("status") == "running":
        sec["status"] = "error"
        sec["error"] = "stopped by the watchdog (budget and grace spent)"
    for _ in range(3):  # the main thread may be changing the results: try again
        try:
            run._write(f"WATCHDOG: stopped after {run.elapsed():.0f} s in section {run.current!r}")
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.2)
    print(
        f"\nWATCHDOG: budget and grace spent in section {run.current!r}; partial results written.",
        flush=True,
    )
    os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
