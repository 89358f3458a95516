"""Memory: resident size of the ingest and windows processes with many live workloads (and with
many in the escalation history), and of the cluster cache (list+watch of pods, ReplicaSets, Jobs)
that ingest and annotate keep.

    python bench/memory.py [--workloads 100000] [--windows 10] [--window-seconds 3]
                           [--cached-pods 100000] [--forget-after 86400]

Runs ``streamproc ingest`` and ``streamproc windows`` as separate processes (as deployed) on
their own broker, records each one's resident memory idle (the baseline, same run), then after
one window in which ``--workloads`` distinct workloads each fire, then at the end of each of
``--windows`` further windows of steady load over the same workloads. Targets (issue #4):
<= 250 MB with 100,000 live workloads, no growth across 10 windows (expired windows are dropped).

The escalation part runs a windows stage with a laddered topology whose ``--forget-after`` is
longer than the run, gives ``--workloads`` distinct workloads one offence each, and records its
RSS once all of them are in the history (idle as the baseline). Dropping them after
``forgetAfter`` is tested in tests/e2e/test_escalation.py.

The cache part serves ``--cached-pods`` pods (two per Deployment, each with its ReplicaSet) from
the emulated API server and runs a ``ClusterCache`` in a child process: its resident size before
the first list is the baseline, then after every resource is listed and watched; the objects the
cache keeps are also sized one by one (``sys.getsizeof``, shared strings once).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compact_event, create_topic, load_topic, report, topology_yaml
from bench.end_to_end import scrape
from streamproc.clients import kube
from streamproc.cluster.cache import ClusterCache
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model.tallies import start_tally
from streamproc.model.workloads import WorkloadRef
from streamproc.settings import Topics


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def deep_size(root: object) -> int:
    """Bytes of ``root`` and everything it holds, each object once (interned strings shared)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, Mapping):  # dicts, and the shared empty marks
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (tuple, list, set, frozenset)):
            stack.extend(obj)
    return total


async def cache_child(kubeconfig: str) -> None:
    """In a child process: RSS before and after the cache's first full list, and its kept size."""
    client = await kube.Kube.connect(kubeconfig, timeout_s=120.0)
    cache = ClusterCache(client)
    before = rss_mb(os.getpid())
    stop = asyncio.Event()
    task = asyncio.create_task(cache.run(stop))
    started = time.perf_counter()
    await cache.synced()
    synced_s = time.perf_counter() - started
    gc.collect()
    after = rss_mb(os.getpid())
    kept = deep_size((cache._pods, cache._controllers))  # noqa: SLF001 - sizing its stores
    stop.set()
    await task
    await client.close()
    print(f"{before} {after} {kept} {len(cache)} {synced_s}")  # to the parent


def cache_rows(pods: int, tmp: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    builder = ClusterBuilder(seed=3)
    for i in range(pods // 2):
        builder.deployment(f"ns-{i % 100}", f"app-{i}", 2, "registry.example/app:1.0")
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    with emulator.serve():
        kubeconfig = emulator.write_kubeconfig(tmp / "cache-kubeconfig")
        out = subprocess.run(
            [sys.executable, __file__, "--cache-child", str(kubeconfig)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout.split()
    before, after, kept, count, synced_s = (float(v) for v in out[-5:])
    rows: list[dict[str, object]] = [
        {
            "name": f"cluster cache: RSS with {int(count):,} cached pods",
            "value": after,
            "baseline": before,
            "unit": "MB (baseline: before the first list)",
        },
        {
            "name": "cluster cache: kept per pod",
            "value": kept / count,
            "unit": "bytes (its ReplicaSet's entry included)",
        },
    ]
    return rows, {"cached_pods": int(count), "cache_synced_s": round(synced_s, 2)}


LADDER = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: ladder
spec:
  window:
    size: 3s
    threshold: 1
  action:
    ttl: {ttl}s
    escalation:
      ttls: [{ttl}s, {ttl2}s]
      forgetAfter: {forget}s
"""


async def publish_tallies(bootstrap: str, cohort: int, workloads: int) -> None:
    """One offence each for ``workloads`` distinct workloads, keyed as ingest keys them."""
    now_ms = int(time.time() * 1000)
    tallies = [
        start_tally(
            "ladder",
            WorkloadRef(f"ns-{i % 100}", "Deployment", f"app-{cohort}-{i}", "api"),
            now_ms,
            now_ms,
            "Terminal shell",
            4,
            "",
            "",
        )
        for i in range(workloads)
    ]
    values = [t.encode() for t in tallies]
    keys = [t.workload_key.encode() for t in tallies]
    await load_topic(bootstrap, Topics().tallies, values, 1, keys)


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (a scrape) until true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)


def ladder_rows(
    workloads: int, forget_after: int, tmp: Path
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """The windows stage's RSS with ``workloads`` workloads in the escalation history, idle as
    the baseline (``forgetAfter`` is longer than the run: nothing is forgotten meanwhile)."""
    folder = tmp / "ladder"
    folder.mkdir(exist_ok=True)
    ttl = max(1, forget_after // 2)
    (folder / "ladder.yaml").write_text(LADDER.format(ttl=ttl, ttl2=2 * ttl, forget=forget_after))
    port = free_port()
    with EmbeddedBroker().running() as broker:
        env = {
            **os.environ,
            "STREAMPROC_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KUBECONFIG": str(tmp / "none"),
            "STREAMPROC_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "streamproc", "windows", "--topology", str(folder)]
        windows = subprocess.Popen(
            [*command, "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
            env=env,
            stdout=(tmp / "ladder-windows.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            until(lambda: scrape(port, "streamproc_assigned_partitions") > 0, 120, "the group")
            idle = rss_mb(windows.pid)
            started = time.perf_counter()
            asyncio.run(publish_tallies(broker.bootstrap, 1, workloads))
            until(
                lambda: scrape(port, "streamproc_actions_emitted_total") >= workloads,
                1800,
                "an action per workload",
            )
            intake_s = time.perf_counter() - started
            # the gauge is set by the sweep (every tenth of forgetAfter, at most a minute)
            until(
                lambda: scrape(port, "streamproc_escalation_histories") >= workloads,
                max(90, forget_after // 10 + 30),
                "every workload in the history",
            )
            loaded = rss_mb(windows.pid)
        finally:
            windows.terminate()
            windows.wait(30)
    rows: list[dict[str, object]] = [
        {
            "name": f"windows: RSS with {workloads:,} workloads in the escalation history",
            "value": loaded,
            "baseline": idle,
            "unit": "MB (baseline: idle)",
        },
        {
            "name": "windows: resident bytes per workload in the escalation history",
            "value": (loaded - idle) * 1024 * 1024 / workloads,
            "unit": "bytes (its window and action included)",
        },
    ]
    return rows, {
        "history_workloads": workloads,
        "forget_after_s": forget_after,
        "history_intake_s": round(intake_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", type=int, default=100_000)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--window-seconds", type=int, default=3)
    parser.add_argument("--cached-pods", type=int, default=100_000)
    # longer than the run: the figure is the history at its fullest
    parser.add_argument("--forget-after", type=int, default=86_400)
    parser.add_argument("--cache-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cache_child:
        asyncio.run(cache_child(args.cache_child))
        return
    rng = random.Random(4)
    pods = [(f"ns-{i % 100}", f"app-{i}-7d4b9c8f5x-x2x7k") for i in range(args.workloads)]
    with tempfile.TemporaryDirectory() as tmp_dir, EmbeddedBroker().running() as broker:
        tmp = os.environ.get("BENCH_WORKDIR") or tmp_dir  # empty: the temporary folder
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
        ports = {stage: free_port() for stage in ("ingest", "windows")}
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
                    str(ports[stage]),
                ],
                env=env,
                stdout=(Path(tmp) / f"{stage}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        try:
            for stage, port in ports.items():  # idle: each stage holds its partitions
                until(lambda p=port: scrape(p, "streamproc_assigned_partitions") > 0, 120, stage)
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
        cached, cache_extra = cache_rows(args.cached_pods, Path(tmp))
        laddered, ladder_extra = ladder_rows(args.workloads, args.forget_after, Path(tmp))
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
    rows += laddered + cached
    report(
        "memory",
        rows,
        {
            "workloads": args.workloads,
            "windows": args.windows,
            "window_seconds": args.window_seconds,
            "per_window": per_window,
            "target": "<= 250 MB, no growth across windows",
            **cache_extra,
            **ladder_extra,
        },
    )


if __name__ == "__main__":
    main()
