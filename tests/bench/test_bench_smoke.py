"""Smoke runs of the benchmarks (small N, no thresholds) so they cannot rot between uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_ingest_benchmark_prints_ours_next_to_the_baseline() -> None:
    """The table has the baseline and our figure with a ratio, and a JSON file is written."""
    out = run_bench("ingest_throughput.py", "--events", "3000", "--workloads", "20")
    assert "baseline: aiokafka + orjson.loads" in out
    assert "streamproc ingest (1 partition)" in out
    results = json.loads((ROOT / "bench/results/ingest_throughput.json").read_text())
    ours = results["rows"][1]
    assert ours["value"] > 0
    assert ours["baseline"] == results["rows"][0]["value"]
    assert results["events"] == 3000


def test_the_end_to_end_benchmark_reports_latency_next_to_the_broker_floor() -> None:
    """Small run: latency rows with their floor, all workloads observed, a JSON file."""
    out = run_bench("end_to_end.py", "--seconds", "2", "--workloads", "20", "--rate", "200")
    assert "streamproc: send -> first patch p50 (ms)" in out
    results = json.loads((ROOT / "bench/results/end_to_end.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    observed = rows["workloads observed / published"]
    assert observed["value"] == observed["baseline"] > 0


def test_the_memory_benchmark_reports_each_process_against_its_idle_size() -> None:
    """Small run: RSS rows for ingest and windows, each with its baseline."""
    out = run_bench("memory.py", "--workloads", "200", "--windows", "2", "--window-seconds", "2")
    assert "ingest: RSS with 200 live workloads" in out
    results = json.loads((ROOT / "bench/results/memory.json").read_text())
    assert all(r["value"] > 0 and r["baseline"] > 0 for r in results["rows"])


def test_the_flood_benchmark_reports_latency_memory_and_api_use_against_their_baselines() -> None:
    """Small run: before/after latency, the API's busiest second, lookups avoided, a JSON file."""
    out = run_bench(
        "flood.py",
        "--detections",
        "5000",
        "--fake-workloads",
        "500",
        "--probes",
        "3",
        "--probes-after",
        "3",
    )
    assert "API lookups of made-up pods" in out
    results = json.loads((ROOT / "bench/results/flood.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["latency p50 after the flood (ms)"]["baseline"] > 0
    assert rows["API lookups of made-up pods"]["baseline"] == 500
    assert rows["workloads under observation"]["value"] == 1 + 3 + 3
