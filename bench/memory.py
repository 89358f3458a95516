"""Memory: resident size of the ingest and windows processes with many live workloads.

    python bench/memory.py [--workloads 100000] [--windows 10] [--window-seconds 3]

Runs ``streamproc ingest`` and ``streamproc windows`` as separate processes (as deployed) on
their own broker, records each one's resident memory idle (the baseline, same run), then after
one window in which ``--workloads`` distinct workloads each fire, then at the end of each of
``--windows`` further windows of steady load over the same workloads. Targets (issue #4):
<= 250 MB with 100,000 live workloads, no growth across 10 windows (expired windows are dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compact_event, create_topic, load_topic, report, topology_yaml
from streamproc.lab.broker import EmbeddedBroker, free_port


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", type=int, default=100_000)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--window-seconds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(4)
    pods = [(f"ns-{i % 100}", f"app-{i}-7d4b9c8f5x-x2x7k") for i in range(args.workloads)]
    with tempfile.TemporaryDirectory() as tmp_dir, EmbeddedBroker().running() as broker:
        tmp = os.environ.get("BENCH_WORKDIR", tmp_dir)
        folder = Path(tmp) / "topologies"
        folder.mkdir(exist_ok=True)
        (folder / "bench.yaml").write_text(
            topology_yaml(window_s=args.window_seconds, threshold=1_000_000)
        )
        asyncio.run(create_topic(broker.bootstrap, "falco", 1))
        env = {
            **os.environ,
            "STREAMPROC_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KUBECONFIG": str(Path(tmp) / "none"),
            "STREAMPROC_LOG_LEVEL": "WARNING",
        }
        stages = {}
        for stage in ("ingest", "windows"):
            stages[stage] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamproc",
                    stage,
                    "--topology",
                    str(folder),
                    "--session-timeout",
                    "6",
                    "--metrics-host",
                    "127.0.0.1",
                    "--metrics-port",
                    str(free_port()),
                ],
                env=env,
                stdout=(Path(tmp) / f"{stage}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        try:
            time.sleep(10)  # group joins
            idle = {s: rss_mb(p.pid) for s, p in stages.items()}
            values = [compact_event(rng, ns, pod, time.time()) for ns, pod in pods]
            asyncio.run(load_topic(broker.bootstrap, "falco", values, 1))
            time.sleep(args.window_seconds + 5)
            live = {s: rss_mb(p.pid) for s, p in stages.items()}
            per_window: list[dict[str, float]] = []
            steady = max(1, args.workloads // 10)
            for _ in range(args.windows):
                started = time.time()
                batch = [
                    compact_event(rng, *pods[rng.randrange(len(pods))], time.time())
                    for _ in range(steady)
                ]
                asyncio.run(load_topic(broker.bootstrap, "falco", batch, 1))
                time.sleep(max(0.0, args.window_seconds - (time.time() - started)) + 0.5)
                per_window.append({s: rss_mb(p.pid) for s, p in stages.items()})
        finally:
            for process in stages.values():
                process.terminate()
                process.wait(30)
    rows = []
    for stage in ("ingest", "windows"):
        rows.append(
            {
                "name": f"{stage}: RSS with {args.workloads:,} live workloads",
                "value": live[stage],
                "baseline": idle[stage],
                "unit": "MB (baseline: idle)",
            }
        )
        rows.append(
            {
                "name": f"{stage}: RSS after {args.windows} more windows",
                "value": per_window[-1][stage],
                "baseline": per_window[0][stage],
                "unit": "MB (baseline: after the first)",
            }
        )
    report(
        "memory",
        rows,
        {
            "workloads": args.workloads,
            "windows": args.windows,
            "window_seconds": args.window_seconds,
            "per_window": per_window,
            "target": "<= 250 MB, no growth across windows",
        },
    )


if __name__ == "__main__":
    main()
