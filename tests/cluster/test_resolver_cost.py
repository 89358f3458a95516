"""What resolving costs the API server: bounded under a flood of made-up pods or workloads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streamproc.clients import kube
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model.workloads import WorkloadRef


async def test_pods_beyond_the_lookup_budget_are_resolved_by_name_without_a_request(
    emulator: KubeEmulator, kubeconfig: Path, cluster: ClusterBuilder
) -> None:
    client = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=1)
    try:
        resolver = WorkloadResolver(client, cache_size=10_000, ttl_s=60, lookups_per_s=5)
        fake = [("shop", f"made-up-{i}-5d8f7c9b6d-x2x{'bcdfg'[i % 5]}z") for i in range(2000)]
        refs = await asyncio.gather(*(resolver.resolve(ns, pod) for ns, pod in fake))
        gets = [r for r in emulator.requests if r.method == "GET" and "/pods/made-up-" in r.path]
        # the bucket holds 10 s worth (50 lookups) and refills at 5/s: a little over 50 in the
        # time this takes, against 2,000 without a budget
        assert 50 <= len(gets) <= 60
        assert all(ref.resolved_by == "name-shape" for ref in refs)
        assert {(ref.kind, ref.name) for ref in refs[:3]} == {
            ("Deployment", f"made-up-{i}") for i in range(3)
        }
        # a second look at a made-up pod that was looked up (404) costs nothing for the TTL
        looked_up = gets[0].path.rsplit("/", 1)[-1]
        await resolver.resolve("shop", looked_up)
        assert len([r for r in emulator.requests if r.path.endswith(looked_up)]) == 1

        real = next(w for w in cluster.workloads if w.name == "frontend")
        await asyncio.sleep(1.0)  # the budget refills
        ref = await resolver.resolve(real.namespace, real.pods[0])
        assert (ref.kind, ref.name, ref.resolved_by) == ("Deployment", "frontend", "api")
    finally:
        await client.close()


async def test_finding_a_workloads_pods_reads_only_its_own_replicasets(
    emulator: KubeEmulator, kubeconfig: Path, cluster: ClusterBuilder
) -> None:
    """Other workloads' ReplicaSets in the namespace, and made-up workloads, cost no lookup."""
    client = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=1)
    try:
        resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
        frontend = next(w for w in cluster.workloads if w.name == "frontend")
        listing = await client.list_pods("shop")
        found = await resolver.pods_of(
            WorkloadRef("shop", "Deployment", "frontend", "api"), listing
        )
        assert sorted(p["metadata"]["name"] for p in found) == sorted(frontend.pods)
        made_up = await resolver.pods_of(
            WorkloadRef("shop", "Deployment", "flood-123", "name-shape"), listing
        )
        assert made_up == []
        lookups = [r.path for r in emulator.requests if "/replicasets/" in r.path]
        assert lookups, "the frontend's ReplicaSet is read to reach its Deployment"
        assert all("/replicasets/frontend-" in path for path in lookups)
    finally:
        await client.close()
