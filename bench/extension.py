"""Extension economy: API writes per observed pod per hour under sustained detections.

    python bench/extension.py [--workloads 50] [--hours 1] [--window 60] [--ttl 900]

Every workload offends in every window for ``--hours``, then stops; the observations then
expire. The real annotator and expirer run against the emulated API server over HTTP, on a
simulated clock (an hour takes seconds), once with ``--extend-below 1`` (extend on every
qualifying window: the behaviour before lazy extension, the baseline of the same run) and once
with the default (0.5). Printed next to the ideal: 1 apply + the extensions the TTL really
needs (one per TTL of offending) + 1 expiry. Writes are the PATCH requests the API server saw.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_action, report
from streamproc.clients import kube
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model.topologies import Topology
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer


class SimulatedClock:
    """Wall time plus an offset the benchmark moves forward window by window."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def topology(window: int, ttl: int) -> Topology:
    return Topology.model_validate(
        {
            "apiVersion": "streamproc/v1",
            "kind": "Topology",
            "metadata": {"name": "bench"},
            "spec": {"window": {"size": f"{window}s"}, "action": {"ttl": ttl}},
        }
    )


async def writes_per_pod(
    extend_below: float, *, workloads: int, hours: float, window: int, ttl: int
) -> tuple[float, int]:
    """PATCHes per pod over the run, and how many pods lapsed while their workload offended."""
    builder = ClusterBuilder(seed=3)
    apps = [builder.deployment(f"ns-{i % 5}", f"app-{i}", 3, "nginx") for i in range(workloads)]
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    clock = SimulatedClock()
    lapsed = 0
    with emulator.serve(), tempfile.TemporaryDirectory() as tmp:
        config = emulator.write_kubeconfig(Path(tmp) / "kubeconfig")
        client = await kube.Kube.connect(
            str(config), limits=kube.Limits(qps=100_000, burst=100_000)
        )
        try:
            settings = Settings(node_budget=0, extend_below=extend_below)
            expirer = Expirer(client, resync_s=10**9, clock=clock)
            resolver = WorkloadResolver(client, cache_size=10_000, ttl_s=10**9)
            annotator = Annotator(
                settings, [topology(window, ttl)], client, resolver, expirer, clock=clock
            )
            stop = asyncio.Event()
            expiring = asyncio.create_task(expirer.run(stop))
            first = int(clock()) // window * window
            for index in range(int(hours * 3600 / window)):
                start = first + index * window
                clock.offset = start + window - time.time() + 1  # just after the window ends
                expirer.wake()
                await annotator.handle([bench_action(w, start, window) for w in apps])
                lapsed += sum(1 for w in apps for p in w.pods if not _observed(emulator, w, p))
            clock.offset += ttl + 1  # detections stop: every observation ends
            expirer.wake()
            for _ in range(1000):
                if not expirer.active:
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await expiring
        finally:
            await client.close()
    pods = sum(len(w.pods) for w in apps)
    patches = sum(1 for r in emulator.requests if r.method == "PATCH" and "/pods/" in r.path)
    return patches / pods, lapsed


def _observed(emulator: KubeEmulator, workload: SampleWorkload, pod: str) -> bool:
    found = emulator.get("Pod", workload.namespace, pod) or {}
    return "retina.sh" in (found.get("metadata", {}).get("annotations") or {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", type=int, default=50)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=60, help="window size (s)")
    parser.add_argument("--ttl", type=int, default=900, help="observation TTL (s)")
    args = parser.parse_args()
    options = {
        "workloads": args.workloads,
        "hours": args.hours,
        "window": args.window,
        "ttl": args.ttl,
    }
    eager, eager_lapsed = asyncio.run(writes_per_pod(1.0, **options))  # type: ignore[arg-type]
    lazy, lazy_lapsed = asyncio.run(writes_per_pod(0.5, **options))  # type: ignore[arg-type]
    ideal = 1 + math.ceil(args.hours * 3600 / args.ttl) + 1
    per_hour = 1 / args.hours
    report(
        "extension",
        [
            {
                "name": "writes per pod per hour, extend on every window (before)",
                "value": eager * per_hour,
                "unit": "PATCH",
            },
            {
                "name": "writes per pod per hour, lazy extension (--extend-below 0.5)",
                "value": lazy * per_hour,
                "baseline": eager * per_hour,
                "unit": "PATCH",
            },
            {
                "name": "ideal: 1 apply + 1 per TTL offended + 1 expiry",
                "value": ideal * per_hour,
                "unit": "PATCH",
            },
            {
                "name": "pod-windows unobserved while offending (lazy / before)",
                "value": lazy_lapsed,
                "baseline": eager_lapsed or None,
                "unit": "pod-windows",
            },
        ],
        options,
    )


if __name__ == "__main__":
    main()
