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
