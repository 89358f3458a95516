"""Expiry lateness: thousands of observations ending in the same second, at the default budget.

    python bench/expiry.py [--pods 1000] [--qps 20] [--burst 40] [--probe-after 5]

Windows are epoch-aligned, so under a real incident the observations of many workloads end in
the same second. This marks ``--pods`` pods (Deployments of two) with one ``expires-at``, then
runs the real expirer with its cluster cache against the emulated API server over HTTP, at
``--qps``/``--burst`` (streamproc's defaults), and moves its clock to that second. Each pod's
lateness is from then until the API server answered its release PATCH. ``--probe-after``
seconds into the burst, a detection's action for a workload nobody observes is applied through
the same connection: its wait is what a new detection arriving behind the burst waits.

Printed next to the ideal: the budget spent on nothing but one PATCH per pod (pods / qps for
the last pod, half that for the median). Requests per pod are counted by the API server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_action, report
from streamproc.clients import kube
from streamproc.cluster.cache import ClusterCache
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions, patches
from streamproc.model.topologies import Topology
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer

TOPOLOGY = Topology.model_validate(
    {
        "apiVersion": "streamproc/v1",
        "kind": "Topology",
        "metadata": {"name": "bench"},
        "spec": {"window": {"size": "60s"}, "action": {"ttl": 900}},
    }
)


class SimulatedClock:
    """Wall time plus an offset: the benchmark moves it to the second the observations end."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def mark(pod: dict, workload: SampleWorkload, until: float) -> None:
    """Write on ``pod`` what the annotator writes for an observation until ``until``."""
    patch = patches.observe(
        pod,
        annotations={"retina.sh": "observe"},
        until=until,
        topology="bench",
        rule="Terminal shell in container",
        action_id=f"bench/{workload.namespace}/Deployment/{workload.name}/0",
        previous=None,  # a pod not observed before
    )
    assert patch is not None
    meta = pod["metadata"]
    meta["annotations"] = {k: v for k, v in patch.annotations.items() if v is not None}
    meta["labels"] = {**meta.get("labels", {}), **patch.labels}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def burst(pods: int, qps: float, burst: int, probe_after: float) -> dict[str, float]:
    """Lateness of every pod's release, the probe's wait, and requests per pod by kind."""
    builder = ClusterBuilder(seed=7)
    workloads = [
        builder.deployment(f"ns-{i % 50}", f"app-{i}", 2, "nginx") for i in range(pods // 2)
    ]
    probe = builder.deployment("ns-probe", "probe", 2, "nginx")
    until = float(int(time.time()) + 3600)
    owner = {p: w for w in workloads for p in w.pods}
    for obj in builder.objects:
        if obj["kind"] == "Pod" and obj["metadata"]["name"] in owner:
            mark(obj, owner[obj["metadata"]["name"]], until)
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    clock = SimulatedClock()
    names = set(owner)
    with emulator.serve(), tempfile.TemporaryDirectory() as tmp:
        config = emulator.write_kubeconfig(Path(tmp) / "kubeconfig")
        client = await kube.Kube.connect(str(config), limits=kube.Limits(qps=qps, burst=burst))
        stop = asyncio.Event()
        try:
            cache = ClusterCache(client)
            caching = asyncio.create_task(cache.run(stop))
            await cache.synced()
            expirer = Expirer(client, resync_s=10**9, clock=clock, cache=cache)
            resolver = WorkloadResolver(client, cache_size=1000, ttl_s=600, cache=cache)
            annotator = Annotator(Settings(node_budget=0), [TOPOLOGY], client, resolver, expirer)
            expiring = asyncio.create_task(expirer.run(stop))
            while len(expirer.active) < len(names):  # the resync has scheduled every pod
                await asyncio.sleep(0.1)
            await asyncio.sleep(burst / qps)  # the bucket full again, as after a quiet minute
            began = time.time()
            clock.offset = until - began  # the second every observation ends
            expirer.wake()
            await asyncio.sleep(probe_after)
            asked = time.time()
            now = clock()
            await annotator.handle(
                [bench_action(probe, int(now) // 60 * 60, 60, first_append_ms=int(now * 1000))]
            )
            probe_wait = time.time() - asked
            while expirer.expired < len(names):
                await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(expiring, caching)
        finally:
            await client.close()
    released = [
        r
        for r in emulator.requests
        if r.method == "PATCH"
        and r.status == 200
        and r.path.rsplit("/", 1)[-1] in names
        and f'"{conventions.OBSERVED_LABEL}":null'.encode() in r.body.replace(b" ", b"")
    ]
    late = [r.done - began for r in released]
    during = [r for r in emulator.requests if began <= r.at]
    return {
        "pods": len(names),
        "released": len(released),
        "p50": quantile(late, 0.5),
        "p99": quantile(late, 0.99),
        "max": max(late),
        "mean": statistics.fmean(late),
        "probe": probe_wait,
        "get": sum(1 for r in during if r.method == "GET" and r.path.rsplit("/", 1)[-1] in names)
        / len(names),
        "patch": sum(
            1 for r in during if r.method == "PATCH" and r.path.rsplit("/", 1)[-1] in names
        )
        / len(names),
        "event": sum(1 for r in during if r.method == "POST" and r.path.endswith("/events"))
        / len(names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--pods", type=int, default=1000, help="pods whose observations end together"
    )
    parser.add_argument("--qps", type=float, default=20.0, help="--api-qps")
    parser.add_argument("--burst", type=int, default=40, help="--api-burst")
    parser.add_argument("--probe-after", type=float, default=5.0, help="seconds into the burst")
    args = parser.parse_args()
    found = asyncio.run(burst(args.pods, args.qps, args.burst, args.probe_after))
    pods = found["pods"]
    ideal = pods / args.qps
    report(
        f"expiry-{int(pods)}",
        [
            {
                "name": f"{int(pods):,} pods: lateness p50 (s)",
                "value": found["p50"],
                "baseline": ideal / 2,
                "unit": "s",
            },
            {
                "name": f"{int(pods):,} pods: lateness p99 (s)",
                "value": found["p99"],
                "baseline": ideal * 0.99,
                "unit": "s",
            },
            {
                "name": f"{int(pods):,} pods: lateness max (s)",
                "value": found["max"],
                "baseline": ideal,
                "unit": "s",
            },
            {
                "name": "a new detection's apply during the burst (s)",
                "value": found["probe"],
                "unit": "s",
            },
            {"name": "GETs of a pod per expired pod", "value": found["get"], "unit": "requests"},
            {"name": "PATCHes per expired pod", "value": found["patch"], "unit": "requests"},
            {
                "name": "Events posted during the burst per expired pod",
                "value": found["event"],
                "unit": "requests",
            },
        ],
        {
            "pods": int(pods),
            "qps": args.qps,
            "burst": args.burst,
            "released": int(found["released"]),
            "ideal_s": ideal,
        },
    )


if __name__ == "__main__":
    main()
