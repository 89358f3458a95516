"""The cluster cache: one list and watch per resource, then pods resolve without a request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamproc.clients import kube, metrics
from streamproc.cluster.cache import ClusterCache
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder, pod
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import async_wait_for


@pytest.fixture
async def cached(
    kubeconfig: Path,
) -> AsyncIterator[tuple[kube.Kube, ClusterCache]]:
    client = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=1)
    cache = ClusterCache(client)
    stop = asyncio.Event()
    task = asyncio.create_task(cache.run(stop))
    try:
        await asyncio.wait_for(cache.synced(), timeout=10)
        yield client, cache
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        await client.close()


def _pod_reads(emulator: KubeEmulator) -> list[str]:
    """GETs of single pods, ReplicaSets or Jobs: what the cache is there to avoid."""
    return [
        r.path
        for r in emulator.requests
        if r.method == "GET"
        and "watch=" not in r.query
        and any(f"/{kind}/" in r.path for kind in ("pods", "replicasets", "jobs"))
    ]


def _pod_lists(emulator: KubeEmulator) -> list[str]:
    return [
        r.path for r in emulator.requests if r.path == "/api/v1/pods" and "watch" not in r.query
    ]


async def test_every_pod_resolves_from_the_cache_without_a_request(
    emulator: KubeEmulator, cluster: ClusterBuilder, cached: tuple[kube.Kube, ClusterCache]
) -> None:
    client, cache = cached
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60, cache=cache)
    for workload in cluster.workloads:
        for name in workload.pods:
            ref = await resolver.resolve(workload.namespace, name)
            assert (ref.kind, ref.name) == (workload.kind, workload.name), name
    assert _pod_reads(emulator) == []
    # a DaemonSet's pod reads like a Deployment's by its name shape; the cache knows better
    exporter = next(w for w in cluster.workloads if w.kind == "DaemonSet")
    found = resolver.known_pod(exporter.namespace, exporter.pods[0])
    assert found is not None
    assert (found.kind, found.name) == ("DaemonSet", "node-exporter")


async def test_a_pod_the_synced_cache_does_not_know_costs_no_request(
    emulator: KubeEmulator, cached: tuple[kube.Kube, ClusterCache]
) -> None:
    client, cache = cached
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60, cache=cache)
    unknown = metrics.resolver_unknown_pods._value.get()
    names = [f"made-up-{i}-5d8f7c9b6d-x2x7z" for i in range(500)]
    refs = [await resolver.resolve("shop", name) for name in names]
    assert _pod_reads(emulator) == []
    assert metrics.resolver_unknown_pods._value.get() - unknown == 500
    assert {(r.kind, r.resolved_by) for r in refs} == {("Deployment", "name-shape")}


async def test_the_cache_follows_pods_created_and_deleted_after_its_list(
    emulator: KubeEmulator, cluster: ClusterBuilder, cached: tuple[kube.Kube, ClusterCache]
) -> None:
    client, cache = cached
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60, cache=cache)
    # a pod resolved by name shape before the watch brought it is resolved properly after
    name = "late-agent-x7k2p"
    early = await resolver.resolve("monitoring", name)
    assert early.resolved_by == "name-shape"
    exporter = emulator.get("DaemonSet", "monitoring", "node-exporter")
    assert exporter is not None
    owner = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "name": "node-exporter",
        "uid": exporter["metadata"]["uid"],
        "controller": True,
    }
    emulator.create(pod("monitoring", name, {"app": "node-exporter"}, owner, "node-9", "x"))
    await async_wait_for(lambda: cache.pod("monitoring", name), what="the watched pod")
    assert _pod_reads(emulator) == []  # resolving it by its name shape cost no GET
    ref = await resolver.resolve("monitoring", name)
    assert (ref.kind, ref.name) == ("DaemonSet", "node-exporter")
    assert cache.pod("monitoring", name).node == "node-9"  # type: ignore[union-attr]
    emulator.delete("Pod", "monitoring", name)
    await async_wait_for(lambda: cache.pod("monitoring", name) is None, what="the deletion")


async def test_a_watch_too_old_lists_again(
    emulator: KubeEmulator, cached: tuple[kube.Kube, ClusterCache]
) -> None:
    """After a 410 the copy is rebuilt from a new list, and subscribers hear of it."""
    _client, cache = cached
    heard: list[str] = []
    cache.subscribe(lambda kind, _pod: heard.append(kind))
    lists = len(
        [r for r in emulator.requests if r.path == "/api/v1/pods" and "watch" not in r.query]
    )
    emulator.compact()  # the server forgets its history: the next watch resume gets 410
    emulator.create(pod("shop", "after-compaction", {}, None, "node-1", "x"))
    await async_wait_for(lambda: "LISTED" in heard, timeout=80, what="a new list")
    assert len(_pod_lists(emulator)) == lists + 1
    assert cache.pod("shop", "after-compaction") is not None


def test_a_marked_pods_copy_keeps_the_keys_streamproc_added_so_a_release_from_it_removes_them() -> (
    None
):
    """The cached copy of a marked pod holds its owned keys' values: an expiry written from the
    copy must not take a key it cannot see for one a person removed (and leave it behind)."""
    from streamproc.cluster.cache import PodInfo
    from streamproc.model import conventions, marks, patches

    annotations = {
        "retina.sh": "observe",
        "team": "payments",
        conventions.EXPIRES_AT: "2026-12-06T06:00:00Z",
        conventions.TOPOLOGY: "t",
        conventions.RULE: "r",
        conventions.ACTION_ID: "t/shop/Deployment/web/1000",
        conventions.OWNED_KEYS: "retina.sh",
    }
    api_pod = {
        "metadata": {
            "namespace": "shop",
            "name": "web-1",
            "resourceVersion": "7",
            "labels": {conventions.OBSERVED_LABEL: "true"},
            "annotations": annotations,
        }
    }
    copy = PodInfo.of(api_pod).object()
    assert copy["metadata"]["annotations"]["retina.sh"] == "observe"
    assert "team" not in copy["metadata"]["annotations"]  # only what streamproc may write
    policy = marks.Policy(ttls={"t": 900.0}, writes={"t": {"retina.sh": "observe"}})
    found = marks.decode(
        copy["metadata"]["annotations"],
        copy["metadata"]["labels"],
        namespace="shop",
        now=conventions.parse_time("2026-12-06T06:00:00Z"),
        policy=policy,
    )
    patch = patches.release(copy, found, lambda key, value: policy.ours("t", key, value))
    assert patch.annotations.get("retina.sh", "kept") is None
    assert not patch.yielded
