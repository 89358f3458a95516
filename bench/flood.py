"""Hostile flood: 1,000,000 detections for 50,000 made-up workloads, with the default API limits.

    python bench/flood.py [--detections 1000000] [--fake-workloads 50000]

Anyone who can write to the input topic can invent pods. This runs the three stages as separate
processes with their *default* Kubernetes API limits (20 requests/s, burst 40, 100 observations
per topology) against the emulated API server (500 real Deployments), then:

1. before: probes real workloads one at a time (2/s) and measures detection -> first patch;
2. flood: publishes ``--detections`` detections spread over ``--fake-workloads`` invented pods
   as fast as the broker takes them, sampling each process's resident memory;
3. after: probes other real workloads (one every 2 s) from the moment the flood is published,
   and reports when latency is back to its pre-flood level.

It prints, side by side: latency before/after (the baseline is the pre-flood figure), peak
memory per process against its idle size, the API server's busiest second against the limit
(qps + burst), requests caused by the flood, workloads under observation against the cap, and
the time to recover. Writes ``bench/results/flood.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compact_event, report, topology_yaml
from bench.end_to_end import Processes, first_patches, percentile, publish, request_log, scrape
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder

QPS, BURST, CAP = 20, 40, 100  # streamproc's defaults


async def probe(
    bootstrap: str, api: str, workloads: list, pod_owner: dict[str, str], rate: float
) -> dict[str, tuple[float, float]]:
    """Send one detection per workload at ``rate``/s; per workload: (sent, acknowledged)."""
    rng = random.Random(len(workloads))
    sent: dict[str, float] = {}
    for w in workloads:
        sent[w.name] = time.time()
        value = compact_event(rng, w.namespace, w.pods[0], time.time())
        await publish(bootstrap, [(w.name, value)], 1000, {}, {})
        await asyncio.sleep(1 / rate)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        patched = first_patches(request_log(api), pod_owner)
        if all(w.name in patched for w in workloads):
            break
        await asyncio.sleep(0.5)
    patched = first_patches(request_log(api), pod_owner)
    return {name: (sent[name], patched.get(name, float("inf"))) for name in sent}


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


async def run(args: argparse.Namespace) -> None:
    builder = ClusterBuilder(seed=3)
    real = [builder.deployment(f"ns-{i % 25}", f"app-{i}", 2, "nginx:1.27") for i in range(500)]
    pod_owner = {pod: w.name for w in real for pod in w.pods}
    rng = random.Random(11)
    before_set = real[1 : 1 + args.probes]
    after_set = real[1 + args.probes : 1 + args.probes + args.probes_after]
    suffixes = "bcdfghjklmnpqrstvwxz2456789"
    fake = [
        (f"ns-{i % 25}", f"flood-{i}-5d8f7c9b6d-{''.join(rng.choice(suffixes) for _ in range(5))}")
        for i in range(args.fake_workloads)
    ]
    storm = [
        (pod, compact_event(rng, ns, pod, time.time()))
        for ns, pod in (fake[i % len(fake)] for i in range(args.detections))
    ]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker().running() as broker:
        procs = Processes(
            Path(os.environ.get("BENCH_WORKDIR", tmp)),
            500,
            broker.bootstrap,
            topology=topology_yaml(window_s=600, threshold=1, max_observations=CAP),
            stage_env={},
        )
        try:
            warm = real[0]
            await probe(broker.bootstrap, procs.api, [warm], pod_owner, 1)
            idle = procs.rss_mb()
            before = await probe(broker.bootstrap, procs.api, before_set, pod_owner, 2)
            before_lat = [ack - sent for sent, ack in before.values()]

            peak = dict(idle)
            sampling = True
            flood_consumed = 1 + args.probes + args.detections
            drained = float("nan")

            async def sample() -> None:
                nonlocal drained
                while sampling:
                    for name, mb in procs.rss_mb().items():
                        peak[name] = max(peak[name], mb)
                    consumed = scrape(procs.ports["ingest"], "streamproc_records_consumed_total")
                    if math.isnan(drained) and consumed >= flood_consumed:
                        drained = time.time()
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            flood_started = time.time()
            await publish(broker.bootstrap, storm, 1e9, {}, {})
            flood_published = time.time()
            # after: one new workload every 2 s, long enough to see the latency come back
            after = await probe(broker.bootstrap, procs.api, after_set, pod_owner, 0.5)
            deadline = time.monotonic() + 900
            while math.isnan(drained) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            sampling = False
            await sampler
            log = request_log(procs.api)
            over_budget = scrape(
                procs.ports["ingest"], "streamproc_resolver_lookups_over_budget_total"
            )
            observed = len(first_patches(log, pod_owner))
            fake_lookups = sum(1 for r in log if r[1] == "GET" and "/pods/flood-" in str(r[2]))
        finally:
            procs.stop()
    after_lat = {name: ack - sent for name, (sent, ack) in after.items()}
    normal = max(percentile(before_lat, 0.99) * 2, percentile(before_lat, 0.99) + 0.5)
    # recovered: from the first probe after which every probe's latency was normal again
    ordered = sorted(after.values())
    recovered_s = float("nan")
    for i, (sent, _) in enumerate(ordered):
        if all(ack - s <= normal for s, ack in ordered[i:]):
            recovered_s = max(0.0, sent - flood_published)
            break
    flood_requests = [float(r[0]) for r in log if float(r[0]) >= flood_started]
    rows = [
        {
            "name": "latency p50 after the flood (ms)",
            "value": statistics.median(after_lat.values()) * 1e3,
            "baseline": statistics.median(before_lat) * 1e3,
            "unit": "ms (baseline = before the flood)",
        },
        {
            "name": "latency p99 after the flood (ms)",
            "value": percentile(list(after_lat.values()), 0.99) * 1e3,
            "baseline": percentile(before_lat, 0.99) * 1e3,
            "unit": "ms (baseline = before the flood)",
        },
        {
            "name": "seconds from flood published to normal latency (nan: not in the probes)",
            "value": recovered_s,
            "unit": "s",
        },
        {
            "name": "seconds from flood start to ingest having read it all",
            "value": drained - flood_started,
            "unit": "s",
        },
        {
            "name": "API requests in the busiest second",
            "value": busiest_second(flood_requests),
            "baseline": 2 * (QPS + BURST),
            "unit": "requests (baseline = qps + burst, x2 processes with API access)",
        },
        {
            "name": "API lookups of made-up pods",
            "value": fake_lookups,
            "baseline": args.fake_workloads,
            "unit": "GETs (baseline = one per made-up pod)",
        },
        {
            "name": "made-up pods resolved by name, no request",
            "value": over_budget,
            "unit": "pods",
        },
        {
            "name": "workloads under observation",
            "value": observed,
            "baseline": CAP,
            "unit": "workloads (baseline = the cap)",
        },
    ]
    rows += [
        {
            "name": f"peak resident memory: {name}",
            "value": peak[name],
            "baseline": idle[name],
            "unit": "MB (baseline = idle)",
        }
        for name in ("ingest", "windows", "annotate")
    ]
    report(
        "flood",
        rows,
        {
            "detections": args.detections,
            "fake_workloads": args.fake_workloads,
            "probes": args.probes,
            "probes_after": args.probes_after,
            "limits": {"qps": QPS, "burst": BURST, "max_observations": CAP},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=1_000_000)
    parser.add_argument("--fake-workloads", type=int, default=50_000)
    parser.add_argument("--probes", type=int, default=20, help="before the flood, 2/s")
    parser.add_argument("--probes-after", type=int, default=75, help="after it, one per 2 s")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
