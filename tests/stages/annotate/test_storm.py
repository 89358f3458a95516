"""A detection storm seen from the API server: the client-side limit holds, nothing is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from streamproc.clients import kube
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from tests import doubles as testing
from tests.conftest import action_for, topology


async def test_5000_actions_over_2000_pods_stay_within_the_rate_limit(tmp_path: Path) -> None:
    """Every pod is observed once, and no second of server time sees more than qps + burst."""
    builder = ClusterBuilder(seed=5)
    workloads = [builder.deployment(f"ns-{i % 20}", f"app-{i}", 2, "nginx") for i in range(1000)]
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    qps, burst, concurrency = 400, 50, 32
    with emulator.serve():
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
        # the limiter's own clock, from before the first request to after the last event posted
        waited = testing.metric("streamproc_api_rate_limit_waits_total")
        began = asyncio.get_running_loop().time()
        client = await kube.Kube.connect(
            str(kubeconfig), limits=kube.Limits(qps=qps, burst=burst, concurrency=concurrency)
        )
        try:
            start = int(time.time()) - 5
            # five actions per workload: the storm's replays and re-deliveries of one window
            actions = [action_for(w, window_start=start) for w in workloads for _ in range(5)]
            annotator = Annotator(
                # 1,000 pods on each of two nodes: more than Retina would hold, and not what
                # this test is about (the API economy), so the per-node budget is off
                Settings(node_budget=0),
                [topology()],
                client,
                WorkloadResolver(client, cache_size=5000, ttl_s=60),
                Expirer(client, resync_s=60),
            )
            await annotator.handle(actions)
        finally:
            await client.close()
        span = asyncio.get_running_loop().time() - began
        waits = testing.metric("streamproc_api_rate_limit_waits_total") - waited
        # Events have a budget of their own (``--event-qps``), bounded apart below
        times = sorted(r.at for r in emulator.requests if not r.path.endswith("/events"))
        events = [r for r in emulator.requests if r.path.endswith("/events")]
        patches = [r for r in emulator.requests if r.method == "PATCH"]
        conflicts = [r for r in patches if r.status == 409]
        observed = [
            p
            for p in emulator.list("Pod")
            if conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
        ]
    assert len(observed) == 2000
    assert len(patches) == 2000  # one patch per pod, whatever the number of actions
    assert not conflicts
    # The client's bucket lets through at most burst + qps * w requests in any w seconds. The
    # server stamps a request when its thread gets to it, so requests sent before a window but
    # still queued at the server land in it too: at most `concurrency` of them are ever in flight.
    window = 2.0
    peak = max(
        sum(1 for t in times[i : i + 2 * (qps + burst)] if t < start_t + window)
        for i, start_t in enumerate(times)
    )
    assert peak <= window * qps + burst + concurrency, f"{peak} requests in {window:.0f} seconds"
    # Over the whole run, on the clock the limiter itself keeps: an exact bound, no slack for
    # the server's scheduling (every request the server saw was sent within ``span``).
    assert len(times) <= burst + qps * span, f"{len(times)} requests in {span:.2f} s"
    event_limits = kube.Limits()
    assert len(events) <= event_limits.event_burst + event_limits.event_qps * span
    assert waits > 0  # the limit was reached, so the bound above was tested
