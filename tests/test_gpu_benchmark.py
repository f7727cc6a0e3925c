"""``benchmarks/gpu_benchmark.py --dry-run``: every section runs on the CPU and reports numbers."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("throughput", "crossover", "default_recipe", "latency", "omniglot", "suite")


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_gpu_benchmark_dry_run_reports_every_section(tmp_path):
    results, md = tmp_path / "gpu.json", tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nThe CPU figures.\n")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_benchmark.py", "--dry-run", "--json", str(results)]
        + ["--markdown", str(md)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(results.read_text())
    assert r["meta"]["dry_run"] and r["meta"]["device"] == "cpu"
    s = r["sections"]
    assert set(s) == set(SECTIONS)
    for name in SECTIONS[:-1]:
        assert s[name]["status"] == "ok", (name, s[name].get("traceback"), done.stdout)
    assert s["suite"]["status"] == "skipped"

    rows = s["throughput"]["rows"]
    assert [row["meta_batch_size"] for row in rows] == [8, 64]
    for row in rows:
        assert _positive(row["reference_eager"]["tasks_per_s"])
        assert row["reference_eager"]["finite"]
        assert "skipped" in row["reference_graph"]  # no CUDA graph without CUDA, and said why
        assert _positive(row["skreptile"]["tasks_per_s"]) and row["skreptile"]["finite"]
        assert _positive(row["ratio_to_reference"])

    cross = s["crossover"]
    assert len(cross["rows"]) == 2
    for row in cross["rows"]:
        assert _positive(row["device"]["tasks_per_s"]) and _positive(row["cpu"]["tasks_per_s"])
        assert (
            _positive(row["device_over_cpu"]) and row["work"] == row["meta_batch_size"] * 4353 * 10
        )

    recipe = s["default_recipe"]
    assert [row["device"] for row in recipe["rows"]] == ["cpu", "auto"]
    assert recipe["shortened"] and _positive(recipe["auto_over_cpu"])
    assert all(_positive(row["seconds"]) and _positive(row["mse"]) for row in recipe["rows"])

    latency = s["latency"]
    assert {row["device"] for row in latency["rows"]} == {"auto", "cpu"}
    assert all(row["calls"] > 0 and _positive(row["median_ms"]) for row in latency["rows"])
    assert _positive(latency["auto_over_cpu"])

    omniglot = s["omniglot"]
    assert _positive(omniglot["s_per_meta_iter"]) and _positive(omniglot["projected_100k_min"])
    assert 0 <= omniglot["accuracy"] <= 1 and omniglot["episodes"] > 0
    assert omniglot["data"].startswith("SYNTHETIC")

    assert r["goals"], "the goals this run could judge"
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nThe CPU figures.\n")  # the rest of the file is kept
    assert text.count("<!-- gpu-benchmark:start -->") == 1
    assert text.count("<!-- gpu-benchmark:end -->") == 1
    assert "Dry run on the CPU" in text and "| 64 |" in text
    # Written again, the section is replaced, not appended.
    subprocess.run(
        [sys.executable, "benchmarks/gpu_benchmark.py", "--dry-run", "--sections", "latency"]
        + ["--json", str(results), "--markdown", str(md)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=240,
        check=True,
    )
    again = md.read_text()
    assert again.count("<!-- gpu-benchmark:start -->") == 1 and "| 64 |" not in again


def test_the_docs_keep_a_gpu_section_between_markers():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    start = text.index("<!-- gpu-benchmark:start -->")
    assert start < text.index("<!-- gpu-benchmark:end -->")
