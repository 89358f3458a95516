"""Smoke runs of the benchmarks (small N, no thresholds) so they cannot rot between uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Smoke runs write their JSON here, never over the committed bench/results/."""
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    return tmp_path


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


def test_the_ingest_benchmark_prints_ours_next_to_the_baseline(results: Path) -> None:
    """The table has the baseline and our figure with a ratio, and a JSON file is written."""
    out = run_bench("ingest_throughput.py", "--events", "3000", "--workloads", "20")
    assert "baseline: aiokafka + orjson.loads" in out
    assert "streamproc ingest (1 partition)" in out
    written = json.loads((results / "ingest_throughput.json").read_text())
    ours = written["rows"][1]
    assert ours["value"] > 0
    assert ours["baseline"] == written["rows"][0]["value"]
    assert written["events"] == 3000


def test_the_end_to_end_benchmark_reports_latency_next_to_the_broker_floor(results: Path) -> None:
    """Small run: latency rows with their floor, all workloads observed, a JSON file."""
    out = run_bench("end_to_end.py", "--seconds", "2", "--workloads", "20", "--rate", "200")
    assert "streamproc: send -> first patch p50 (ms)" in out
    written = json.loads((results / "end_to_end.json").read_text())
    rows = {r["name"]: r for r in written["rows"]}
    observed = rows["workloads observed / published"]
    assert observed["value"] == observed["baseline"] > 0


def test_the_memory_benchmark_reports_each_process_against_its_idle_size(results: Path) -> None:
    """Small run: RSS rows for ingest, windows and the cluster cache, each with its baseline."""
    out = run_bench(
        "memory.py",
        *("--workloads", "200", "--windows", "2", "--window-seconds", "2"),
        *("--cached-pods", "1000", "--forget-after", "20"),
    )
    assert "ingest: RSS with 200 live workloads" in out
    assert "cluster cache: RSS with 1,000 cached pods" in out
    written = json.loads((results / "memory.json").read_text())
    rss = [r for r in written["rows"] if "RSS" in r["name"]]
    assert len(rss) == 6
    assert "windows: RSS with 200 workloads in the escalation history" in out
    assert written["history_workloads"] == 200
    assert all(r["value"] > 0 and r["baseline"] > 0 for r in rss)
    [kept] = [r for r in written["rows"] if r["name"] == "cluster cache: kept per pod"]
    assert kept["value"] > 0
    assert written["cached_pods"] == 1000


def test_the_flood_benchmark_reports_latency_memory_and_api_use_against_their_baselines(
    results: Path,
) -> None:
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
    written = json.loads((results / "flood.json").read_text())
    rows = {r["name"]: r for r in written["rows"]}
    assert rows["latency p50 after the flood (ms)"]["baseline"] > 0
    assert rows["API lookups of made-up pods"]["baseline"] == 500
    assert rows["workloads under observation"]["value"] == 1 + 3 + 3


def test_the_extension_benchmark_reports_writes_per_pod_before_after_and_ideal(
    results: Path,
) -> None:
    """Small run: lazy extension writes fewer times than extending on every window, never
    fewer than the ideal, and no pod went unobserved while its workload offended.
    """
    out = run_bench("extension.py", "--workloads", "3", "--hours", "0.5", "--ttl", "600")
    assert "lazy extension" in out
    rows = {r["name"]: r for r in json.loads((results / "extension.json").read_text())["rows"]}
    eager = rows["writes per pod per hour, extend on every window (before)"]["value"]
    lazy = rows["writes per pod per hour, lazy extension (--extend-below 0.5)"]["value"]
    ideal = rows["ideal: 1 apply + 1 per TTL offended + 1 expiry"]["value"]
    assert ideal <= lazy < eager
    assert rows["pod-windows unobserved while offending (lazy / before)"]["value"] == 0


def test_the_simulate_benchmark_reports_its_rate_and_memory_against_the_baseline(
    results: Path,
) -> None:
    """Small run: simulate's rate next to gzip + orjson.loads, and its peak RSS."""
    out = run_bench("simulate.py", "--events", "4000", "--workloads", "20", "--hours", "0.5")
    assert "baseline: gzip + orjson.loads" in out
    written = json.loads((results / "simulate.json").read_text())
    rows = {r["name"]: r for r in written["rows"]}
    assert rows["streamproc simulate"]["value"] > 0
    assert rows["streamproc simulate --workers 1"]["value"] > 0
    assert written["events"] == 4000
    assert written["workers"] == 1  # a small file is simulated in one process
    assert written["observations_opened"] > 0


def test_the_expiry_benchmark_reports_lateness_next_to_the_ideal(results: Path) -> None:
    """Small run: every pod released with one PATCH and no read, lateness rows beside pods/qps,
    and the new detection's apply measured.
    """
    out = run_bench("expiry.py", "--pods", "60", "--qps", "50", "--probe-after", "0.2")
    assert "60 pods: lateness max (s)" in out
    written = json.loads((results / "expiry-60.json").read_text())
    rows = {r["name"]: r for r in written["rows"]}
    assert written["released"] == 60
    assert rows["60 pods: lateness max (s)"]["baseline"] == 60 / 50
    assert rows["GETs of a pod per expired pod"]["value"] == 0
    assert rows["PATCHes per expired pod"]["value"] == 1
    assert rows["a new detection's apply during the burst (s)"]["value"] > 0
