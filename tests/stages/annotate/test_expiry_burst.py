"""Observations that end together: one request per pod, Events apart, new actions not held back.

Each test counts the requests the emulated API server saw (never the time they took): speed
targets live in ``bench/expiry.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streamproc.clients import kube
from streamproc.cluster.cache import ClusterCache
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator, LoggedRequest
from streamproc.model import conventions, patches
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from tests.conftest import action_for, async_wait_for, running, topology


@dataclass
class Burst:
    """A cluster whose marked pods all ended a minute ago, and workloads nobody observes yet."""

    emulator: KubeEmulator
    kubeconfig: Path
    marked: list[tuple[str, str]]
    probe: SampleWorkload
    #: Deployments nobody observes yet, for a storm of actions
    fresh: list[SampleWorkload]


def marked(pod: dict[str, object], workload: SampleWorkload, until: float) -> None:
    """Write on ``pod`` what the annotator would have written for an observation until ``until``."""
    patch = patches.observe(
        pod,
        annotations={"retina.sh": "observe"},
        until=until,
        topology="retina-observe",
        rule="Read sensitive file untrusted",
        action_id=f"retina-observe/{workload.namespace}/Deployment/{workload.name}/0",
        previous=None,  # a pod not observed before
    )
    assert patch is not None
    meta = pod["metadata"]
    assert isinstance(meta, dict)
    meta["annotations"] = {k: v for k, v in patch.annotations.items() if v is not None}
    meta["labels"] = {**meta.get("labels", {}), **patch.labels}


@contextlib.contextmanager
def burst(tmp_path: Path, deployments: int, fresh: int = 0) -> Iterator[Burst]:
    """``deployments`` Deployments of two pods, all observed until a minute ago, a probe and
    ``fresh`` Deployments nobody observes.
    """
    builder = ClusterBuilder(seed=11)
    workloads = [
        builder.deployment(f"ns-{i % 4}", f"app-{i}", 2, "nginx") for i in range(deployments)
    ]
    probe = builder.deployment("ns-probe", "probe", 2, "nginx")
    others = [builder.deployment(f"fresh-{i % 4}", f"new-{i}", 2, "nginx") for i in range(fresh)]
    until = float(int(time.time()) - 60)
    owner = {p: w for w in workloads for p in w.pods}
    for obj in builder.objects:
        if obj["kind"] == "Pod" and obj["metadata"]["name"] in owner:
            marked(obj, owner[obj["metadata"]["name"]], until)
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    with emulator.serve():
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
        pods = [(w.namespace, p) for w in workloads for p in w.pods]
        yield Burst(emulator, kubeconfig, pods, probe, others)


def still_marked(emulator: KubeEmulator) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in emulator.list("Pod")
        if conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
    ]


def pod_requests(emulator: KubeEmulator, method: str, names: set[str]) -> list[LoggedRequest]:
    """Requests of ``method`` on one of the named pods (reads and writes of a single pod)."""
    return [
        r
        for r in emulator.requests
        if r.method == method and "/pods/" in r.path and r.path.rsplit("/", 1)[-1] in names
    ]


async def synced(cache: ClusterCache) -> None:
    await asyncio.wait_for(cache.synced(), timeout=30)


async def test_an_expiry_the_cache_holds_costs_one_patch_and_no_read(tmp_path: Path) -> None:
    """Pods whose marks and resourceVersion the cache holds are released with one PATCH each."""
    with burst(tmp_path, deployments=10) as cluster:
        client = await kube.Kube.connect(str(cluster.kubeconfig))
        try:
            cache = ClusterCache(client)
            expirer = Expirer(client, resync_s=3600, cache=cache)
            async with running(cache.run):
                await synced(cache)
                async with running(expirer.run):
                    await async_wait_for(
                        lambda: not still_marked(cluster.emulator), timeout=30, what="expiry"
                    )
        finally:
            await client.close()
        names = {name for _, name in cluster.marked}
        writes = pod_requests(cluster.emulator, "PATCH", names)
        assert [r.status for r in writes] == [200] * len(names)
        assert pod_requests(cluster.emulator, "GET", names) == []
        assert expirer.expired == len(names)
        expired = [e for e in cluster.emulator.list("Event") if e["reason"] == "ObservationExpired"]
        assert sorted(e["involvedObject"]["name"] for e in expired) == sorted(names)
        # the Event names the pod as the API server returned it, uid included
        assert all(e["involvedObject"]["uid"] for e in expired)


async def test_an_extension_the_cache_has_not_seen_still_wins(tmp_path: Path) -> None:
    """A cached copy older than an extension is refused (409); the pod is read and kept."""
    with burst(tmp_path, deployments=2) as cluster:
        client = await kube.Kube.connect(str(cluster.kubeconfig))
        try:
            cache = ClusterCache(client)
            async with running(cache.run):
                await synced(cache)
            # the cache stopped watching: its copy misses the extension written now
            namespace, extended = cluster.marked[0]
            later = conventions.format_time(time.time() + 3600)
            cluster.emulator.update(
                "Pod",
                namespace,
                extended,
                {"metadata": {"annotations": {conventions.EXPIRES_AT: later}}},
            )
            expirer = Expirer(client, resync_s=3600, cache=cache)
            async with running(expirer.run):
                await async_wait_for(
                    lambda: still_marked(cluster.emulator) == [extended], timeout=30, what="expiry"
                )
                await async_wait_for(
                    lambda: expirer.expired == len(cluster.marked) - 1, timeout=30, what="counts"
                )
        finally:
            await client.close()
        refused = pod_requests(cluster.emulator, "PATCH", {extended})
        assert [r.status for r in refused] == [409]
        assert len(pod_requests(cluster.emulator, "GET", {extended})) == 1
        assert (
            conventions.parse_time(later)
            == expirer.active[kube.ObjectRef.pod(namespace, extended)][0]
        )


async def test_events_are_sent_from_their_own_budget(tmp_path: Path) -> None:
    """A budget with room for the cache and the PATCHes only still expires every pod and Events
    every pod: the Events never took a request of it.
    """
    deployments = 10
    with burst(tmp_path, deployments=deployments) as cluster:
        pods = len(cluster.marked)
        # the cache's 3 lists and 3 watches, the expirer's list of observed namespaces, one
        # PATCH per pod, and a little room; then next to nothing (one request per 20 s)
        limits = kube.Limits(qps=0.05, burst=pods + 10)
        client = await kube.Kube.connect(str(cluster.kubeconfig), limits=limits)
        try:
            cache = ClusterCache(client)
            expirer = Expirer(client, resync_s=3600, cache=cache)
            async with running(cache.run):
                await synced(cache)
                async with running(expirer.run):
                    await async_wait_for(
                        lambda: not still_marked(cluster.emulator), timeout=30, what="expiry"
                    )

                    def events() -> int:
                        found = cluster.emulator.list("Event")
                        return sum(1 for e in found if e["reason"] == "ObservationExpired")

                    await async_wait_for(lambda: events() == pods, timeout=30, what="Events")
            assert client.granted["events"] == pods
            assert client.granted["expire"] == pods + 1  # the PATCHes and the namespaces' list
        finally:
            await client.close()


async def test_a_new_action_is_not_queued_behind_an_expiry_burst(tmp_path: Path) -> None:
    """While 120 pods expire at the budget's rate, a new workload's apply takes turns with them:
    between its first request and its last patch the server sees about as many expiry PATCHes
    as the apply makes requests, not the burst.
    """
    with burst(tmp_path, deployments=60) as cluster:
        limits = kube.Limits(qps=30, burst=1, concurrency=16)
        client = await kube.Kube.connect(str(cluster.kubeconfig), limits=limits)
        try:
            cache = ClusterCache(client)
            expirer = Expirer(client, resync_s=3600, cache=cache)
            resolver = WorkloadResolver(client, cache_size=100, ttl_s=60, cache=cache)
            annotator = Annotator(Settings(), [topology()], client, resolver, expirer)
            names = {name for _, name in cluster.marked}
            async with running(cache.run):
                await synced(cache)
                async with running(expirer.run):
                    await async_wait_for(
                        lambda: len(pod_requests(cluster.emulator, "PATCH", names)) >= 10,
                        timeout=30,
                        what="the burst to begin",
                    )
                    asked = time.time()
                    await annotator.handle([action_for(cluster.probe)])
                    await async_wait_for(
                        lambda: set(still_marked(cluster.emulator)) == set(cluster.probe.pods),
                        timeout=60,
                        what="the burst to end",
                    )
        finally:
            await client.close()
        probe = set(cluster.probe.pods)
        applied = pod_requests(cluster.emulator, "PATCH", probe)
        assert len(applied) == 2
        done = max(r.at for r in applied)
        made = [
            r
            for r in cluster.emulator.requests
            if asked <= r.at <= done
            and ("/ns-probe/" in r.path or r.path.endswith("/ns-probe"))
            and not r.path.endswith("/events")  # those have a budget of their own
        ]
        behind = [
            r for r in pod_requests(cluster.emulator, "PATCH", names) if asked <= r.at <= done
        ]
        # in turns: about one expiry per request of its own (in line ahead of it: the 8 workers)
        assert len(behind) <= 2 * len(made) + 2, (len(behind), len(made))


async def test_expiry_keeps_its_share_of_the_budget_while_a_storm_of_actions_is_applied(
    tmp_path: Path,
) -> None:
    """While 60 new workloads are applied and 60 pods expire, each gets about half the budget:
    of the PATCHes the server sees while both are at work, at least a third are expiries.
    """
    with burst(tmp_path, deployments=30, fresh=60) as cluster:
        limits = kube.Limits(qps=50, burst=1, concurrency=16)
        client = await kube.Kube.connect(str(cluster.kubeconfig), limits=limits)
        try:
            cache = ClusterCache(client)
            expirer = Expirer(client, resync_s=3600, cache=cache)
            resolver = WorkloadResolver(client, cache_size=1000, ttl_s=60, cache=cache)
            annotator = Annotator(Settings(node_budget=0), [topology()], client, resolver, expirer)
            expiring = {name for _, name in cluster.marked}
            async with running(cache.run):
                await synced(cache)
                storm = asyncio.create_task(
                    annotator.handle([action_for(w) for w in cluster.fresh])
                )
                async with running(expirer.run):
                    await async_wait_for(
                        lambda: not set(still_marked(cluster.emulator)) & expiring,
                        timeout=60,
                        what="the burst to end",
                    )
                    await storm
        finally:
            await client.close()
        applying = {p for w in cluster.fresh for p in w.pods}
        expired = pod_requests(cluster.emulator, "PATCH", expiring)
        applied = pod_requests(cluster.emulator, "PATCH", applying)
        both = (
            max(min(r.at for r in expired), min(r.at for r in applied)),
            min(max(r.at for r in expired), max(r.at for r in applied)),
        )
        share = [r for r in expired if both[0] <= r.at <= both[1]]
        total = [r for r in [*expired, *applied] if both[0] <= r.at <= both[1]]
        assert len(total) >= 20  # both were at work together for a while
        assert len(share) * 3 >= len(total), (len(share), len(total))
