"""The scale-out load run (issue 20): its core plan, its CPU accounting, and a short real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.local_cluster import missing_programs
from bench.proc_stats import cpu_seconds, tree_cpu_seconds
from bench.scaleout import CpuPlan, cpu_set, plan_cpus


def test_sixteen_cores_give_every_part_cores_of_its_own() -> None:
    plan = plan_cpus(16, 3)
    assert plan == CpuPlan("0-1", "2", "3", ("4-7", "8-11", "12-15"), shared=False)
    parts = [plan.generator, plan.nginx, plan.redis, *plan.instances]
    assert sum(len(cpu_set(p)) for p in parts) == 16
    assert set().union(*(cpu_set(p) for p in parts)) == set(range(16))


def test_too_few_cores_are_shared_and_said_so() -> None:
    plan = plan_cpus(2, 3)
    assert plan.shared and {plan.generator, plan.nginx, plan.redis, *plan.instances} == {"0-1"}


def test_cpu_lists_read_like_taskset() -> None:
    assert cpu_set("0-1,4,6-7") == {0, 1, 4, 6, 7}


def test_cpu_seconds_count_a_process_and_its_children_apart() -> None:
    """A parent that only waits, with a child that spins: the tree has the child's CPU."""
    spin = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        tree = alone = 0.0
        while time.monotonic() < deadline and parent.poll() is None:
            tree = max(tree, tree_cpu_seconds(parent.pid))
            alone = cpu_seconds(parent.pid)
            time.sleep(0.05)
        assert tree >= 0.3, "the child's CPU is missing from the tree"
        assert alone < tree
    finally:
        parent.wait(30)
    assert cpu_seconds(parent.pid) == 0.0  # gone: nothing to read


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_short_pinned_load_run_reports_turns_latency_and_cpu(tmp_path: Path) -> None:
    if missing := missing_programs():
        pytest.skip(
            f"not installed: {', '.join(missing)} (apt-get install -y redis-server nginx-light)"
        )
    report, markdown = tmp_path / "load.json", tmp_path / "load.md"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "scaleout.py"),
            "load",
            "--instances",
            "1",
            "2",
            "--sessions",
            "2",
            "--seconds",
            "6",
            "--warmup",
            "3",
            "--words",
            "4",
            "--pin",
            "--target-scaling",
            "0",
            "--timeout",
            "600",
            "--json",
            str(report),
            "--markdown",
            str(markdown),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=700,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert report.exists(), run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads(report.read_text())
    assert results["failures"] == [] and run.returncode == 0, results["failures"]
    for count in (1, 2):
        figures = results[f"{count}_instances"]
        assert figures["turns"] > 0 and figures["errors"] == {}
        assert figures["first_segment_ms"]["count"] > 0
        assert 0 < figures["first_segment_ms"]["p50"] <= figures["first_segment_ms"]["p95"]
        assert set(figures["cpu"]) == {
            "load generator",
            "nginx",
            "redis",
            *(f"i{k}" for k in range(1, count + 1)),
        }
        assert all(
            use["cpu_seconds"] > 0 for name, use in figures["cpu"].items() if name.startswith("i")
        )
    assert results["cpu_plan"] is not None and "Scaling" in markdown.read_text()
