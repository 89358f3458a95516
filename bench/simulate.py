"""``streamproc simulate`` throughput and memory over a generated gzip file of detections.

    python bench/simulate.py [--events 1000000] [--workloads 500] [--hours 6]

The file holds ~430-byte Falcosidekick payloads spread evenly over ``--hours`` (so windows open,
qualify and close all along). The baseline of the same run only decompresses the file and
``orjson.loads`` each line; the simulation parses, matches, identifies, windows, escalates,
annotates and expires a simulated cluster (the live code). Target (issue #15): simulate >= 0.3 of
the baseline, with the workers ``--workers 0`` picks on this machine; the same run in one
process is shown beside it. Memory: the simulation runs in a fresh process over the whole file and
over its first quarter; its peak RSS (with its workers') should not grow with the file's length
(it follows the live windows).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compact_event, report, topology_yaml, workload_pods
from streamproc.model import topologies
from streamproc.settings import Settings
from streamproc.simulating import inputs, session

#: the time compact_event writes, replaced by each detection's own
_FIXED_TIME = b"2026-11-28T02:03:16.349478045Z"
T0 = 1_900_000_000.0


def generate(path: Path, events: int, workloads: int, hours: float) -> None:
    """Write ``events`` payloads as Falco emits them: in bursts from one pod, over ``hours``.

    A burst is a rule firing again and again in one pod (a loop, a scan): 1 to 200 detections,
    20 ms apart. Bursts start evenly over the span; their workloads follow a Zipf-like law
    (a few noisy workloads, a long quiet tail), as detections in a real cluster do.
    """
    rng = random.Random(1)
    pods = workload_pods(workloads)
    weights = [1 / (i + 1) for i in range(workloads)]
    sizes: list[int] = []
    while sum(sizes) < events:
        sizes.append(min(rng.randint(1, 200), events - sum(sizes)))
    step = hours * 3600 / len(sizes)
    with gzip.open(path, "wb", compresslevel=1) as out:
        for index, size in enumerate(sizes):
            namespace, pod = rng.choices(pods, weights)[0]
            start = T0 + index * step
            chunk = []
            for k in range(size):
                at = start + k * 0.02
                stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
                value = compact_event(rng, namespace, pod, at).replace(_FIXED_TIME, stamp.encode())
                chunk.append(value)
            out.write(b"\n".join(chunk) + b"\n")


def baseline(path: Path) -> tuple[int, float]:
    """(lines, events/s) of decompressing and ``orjson.loads`` each line."""
    loads = orjson.loads
    started = time.perf_counter()
    n = 0
    for line in inputs.lines(path):
        loads(line)
        n += 1
    return n, n / (time.perf_counter() - started)


async def _simulate(path: Path, topology: Path, limit: int | None, workers: int) -> dict[str, Any]:
    """The command's own run (``session.simulate``) over the file, or its first ``limit`` lines."""
    if limit is not None:
        head = path.with_name(f"head-{limit}.jsonl")
        with head.open("wb") as out:
            for n, line in enumerate(inputs.lines(path)):
                if n >= limit:
                    break
                out.write(line + b"\n")
        path = head
    request = session.Request(
        settings=Settings(simulate_workers=workers),
        topology_sets=[topologies.load_path(topology)],
        names=[str(topology)],
        files=[path],
    )
    started = time.perf_counter()
    [found] = await session.simulate(request)
    seconds = time.perf_counter() - started
    processes = session.workers_for(request)
    # ru_maxrss of children is the largest worker's: count it once per worker (an upper bound)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "events": found.records,
        "per_s": found.records / seconds,
        "opened": sum(s.opened for s in found.stats.values()),
        "most_windows": found.most_live_windows,
        "workers": processes,
        "max_rss_mb": (own + (children * processes if processes > 1 else 0)) / 1024,
    }


def _worker(path: str, topology: str, limit: int | None, workers: int, out: Any) -> None:
    out.put(asyncio.run(_simulate(Path(path), Path(topology), limit, workers)))


def in_fresh_process(
    path: Path, topology: Path, limit: int | None, workers: int = 0
) -> dict[str, Any]:
    """One simulation in its own process, so its peak RSS (and its workers') is its own."""
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    worker = spawn.Process(target=_worker, args=(str(path), str(topology), limit, workers, queue))
    worker.start()
    found: dict[str, Any] = queue.get(timeout=3600)
    worker.join()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workloads", type=int, default=500)
    parser.add_argument("--hours", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamproc-bench-simulate-") as scratch:
        folder = Path(scratch)
        path = folder / "falco.jsonl.gz"
        topology = folder / "bench.yaml"
        topology.write_text(topology_yaml(window_s=60, threshold=20, ttl="15m"))
        generate(path, args.events, args.workloads, args.hours)
        lines, base = baseline(path)
        full = in_fresh_process(path, topology, None)
        alone = in_fresh_process(path, topology, None, workers=1)
        quarter = in_fresh_process(path, topology, args.events // 4)
    rows = [
        {"name": "baseline: gzip + orjson.loads", "value": base, "unit": "events/s"},
        {
            "name": "streamproc simulate",
            "value": full["per_s"],
            "baseline": base,
            "unit": "events/s",
        },
        {
            "name": "streamproc simulate --workers 1",
            "value": alone["per_s"],
            "baseline": base,
            "unit": "events/s",
        },
        {
            "name": "peak RSS with workers, whole file (baseline: first quarter)",
            "value": full["max_rss_mb"],
            "baseline": quarter["max_rss_mb"],
            "unit": "MiB",
        },
    ]
    report(
        "simulate",
        rows,
        {
            "events": lines,
            "workers": full["workers"],
            "workloads": args.workloads,
            "hours": args.hours,
            "observations_opened": full["opened"],
            "most_live_windows": full["most_windows"],
            "most_live_windows_quarter": quarter["most_windows"],
        },
    )


if __name__ == "__main__":
    main()
