"""Pods created while their workload is observed get the observation, and lose it at expiry."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from streamproc.clients import kube
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder, pod
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from streamproc.stages.annotate.following import Follower
from tests.conftest import action_for, async_wait_for, make, time_passes, topology, workload
from tests.doubles import MemoryAuditor


def new_frontend_pod(emulator: KubeEmulator, name: str) -> None:
    """A pod the frontend Deployment's ReplicaSet creates (a rollout or scale-up)."""
    template = next(
        p for p in emulator.list("Pod", "shop") if p["metadata"]["name"].startswith("frontend-")
    )
    owner = template["metadata"]["ownerReferences"][0]
    labels = {
        k: v for k, v in template["metadata"]["labels"].items() if k != conventions.OBSERVED_LABEL
    }
    emulator.create(pod("shop", name, labels, owner, "node-b", "nginx"))


def observed(emulator: KubeEmulator, name: str) -> bool:
    found = emulator.get("Pod", "shop", name) or {}
    return (found.get("metadata", {}).get("annotations") or {}).get("retina.sh") == "observe"


async def test_a_pod_created_during_the_observation_is_annotated_then_released(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Scale-up during an observation: the new pod is observed and expires with the others."""
    annotator, expirer = make(client, ttl=60)
    auditor = MemoryAuditor()
    follower = Follower(
        client,
        WorkloadResolver(client, cache_size=100, ttl_s=60),
        [topology(ttl=60)],
        expirer,
        auditor,
        clock=expirer.clock,  # the same "now": the observation ends for both at once
    )
    annotator.follower = follower
    stop = asyncio.Event()
    tasks = [asyncio.create_task(follower.run(stop)), asyncio.create_task(expirer.run(stop))]
    try:
        frontend = workload(cluster, "frontend")
        assert await annotator.apply(action_for(frontend)) == "applied"
        new_frontend_pod(emulator, "frontend-ngq2cd9wfp-zzzzz")
        await async_wait_for(
            lambda: observed(emulator, "frontend-ngq2cd9wfp-zzzzz"),
            timeout=10,
            what="the new pod to be observed",
        )
        assert auditor.records[-1]["result"] == "followed"
        time_passes(expirer, 3600)
        await async_wait_for(
            lambda: (
                not any(
                    conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
                    for p in emulator.list("Pod")
                )
            ),
            timeout=20,
            what="every observation, the followed pod's included, to expire",
        )
        new_frontend_pod(emulator, "frontend-ngq2cd9wfp-yyyyy")
        created = int(
            (emulator.get("Pod", "shop", "frontend-ngq2cd9wfp-yyyyy") or {})["metadata"][
                "resourceVersion"
            ]
        )
        await async_wait_for(
            lambda: int(follower.resource_version or 0) >= created,
            timeout=10,
            what="the follower to handle the pod created after the end",
        )
        assert not observed(emulator, "frontend-ngq2cd9wfp-yyyyy")  # seen, and left alone
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_a_restarted_follower_resumes_from_the_pods_marks(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A fresh follower rebuilds what it follows from the pods and still covers new pods."""
    annotator, expirer = make(client, ttl=60)
    await annotator.apply(
        action_for(workload(cluster, "frontend"), window_start=int(time.time()) - 9)
    )
    fresh = Follower(
        client, WorkloadResolver(client, cache_size=100, ttl_s=60), [topology(ttl=60)], expirer
    )
    stop = asyncio.Event()
    task = asyncio.create_task(fresh.run(stop))
    try:
        await async_wait_for(lambda: bool(fresh.resource_version), timeout=10, what="its listing")
        new_frontend_pod(emulator, "frontend-ngq2cd9wfp-xxxxx")
        await async_wait_for(
            lambda: observed(emulator, "frontend-ngq2cd9wfp-xxxxx"),
            timeout=10,
            what="the new pod to be observed after a restart",
        )
        assert fresh.followed_pods == 1
    finally:
        stop.set()
        await task


async def test_beyond_max_observations_new_workloads_are_refused(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """With maxObservations: 1, a second workload is refused and nothing is written on it."""
    capped = topology(maxObservations=1)
    annotator, expirer = make(client, extend_below=1.0)
    annotator.topologies = {capped.name: capped}
    annotator.follower = Follower(
        client, WorkloadResolver(client, cache_size=100, ttl_s=60), [capped], expirer
    )
    start = int(time.time()) - 5
    assert (
        await annotator.apply(action_for(workload(cluster, "frontend"), window_start=start))
        == "applied"
    )
    assert (
        await annotator.apply(action_for(workload(cluster, "redis"), window_start=start))
        == "refused-cap"
    )
    # the workload already observed may still be extended
    assert (
        await annotator.apply(action_for(workload(cluster, "frontend"), window_start=start + 1))
        == "extended"
    )
    assert not any(observed(emulator, p) for p in workload(cluster, "redis").pods)


async def test_a_batch_of_new_workloads_applied_together_keeps_to_max_observations(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Workloads of one batch are applied concurrently; maxObservations: 1 still lets one in."""
    capped = topology(maxObservations=1)
    annotator, expirer = make(client)
    annotator.topologies = {capped.name: capped}
    annotator.follower = Follower(
        client, WorkloadResolver(client, cache_size=100, ttl_s=60), [capped], expirer
    )
    names = ["frontend", "checkout", "redis"]
    await annotator.handle([action_for(workload(cluster, name)) for name in names])
    observing = {
        name for name in names if any(observed(emulator, p) for p in workload(cluster, name).pods)
    }
    assert len(observing) == 1, observing


async def test_kubernetes_events_record_start_and_expiry_on_each_pod(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """kubectl describe shows ObservationStarted and ObservationExpired from streamproc."""
    annotator, expirer = make(client, ttl=60)
    redis = workload(cluster, "redis")
    await annotator.apply(action_for(redis))
    stop = asyncio.Event()
    task = asyncio.create_task(expirer.run(stop))
    try:
        time_passes(expirer, 3600)

        def reasons() -> list[tuple[str, str]]:
            return sorted(
                (e["involvedObject"]["name"], e["reason"]) for e in emulator.list("Event", "shop")
            )

        expected = sorted(
            [(p, "ObservationStarted") for p in redis.pods]
            + [(p, "ObservationExpired") for p in redis.pods]
        )
        await async_wait_for(lambda: reasons() == expected, timeout=15, what="the events")
    finally:
        stop.set()
        await task
    event = next(e for e in emulator.list("Event", "shop") if e["reason"] == "ObservationStarted")
    assert event["source"]["component"] == "streamproc"
    assert "retina.sh=observe" in event["message"]


async def test_no_events_writes_no_event_objects(
    kubeconfig: Path, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """With events turned off, observing a workload creates no Event."""
    quiet = await kube.Kube.connect(str(kubeconfig), limits=kube.Limits(events=False))
    try:
        annotator, _ = make(quiet)
        await annotator.apply(
            action_for(workload(cluster, "redis"), window_start=int(time.time()) - 5)
        )
    finally:
        await quiet.close()
    assert observed(emulator, "redis-0")
    assert emulator.list("Event") == []


async def test_a_new_pod_on_a_node_at_its_budget_is_not_observed_and_says_so(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The follower shares the annotator's node budget: Retina's filter map cannot overflow."""
    from streamproc.stages.annotate.node_budget import NodeBudget

    annotator, expirer = make(client, node_budget=1)
    auditor = MemoryAuditor()
    budget = NodeBudget(expirer, 1)
    annotator.budget = budget
    follower = Follower(
        client,
        WorkloadResolver(client, cache_size=100, ttl_s=60),
        [topology()],
        expirer,
        auditor,
        budget=budget,
    )
    annotator.follower = follower
    stop = asyncio.Event()
    tasks = [asyncio.create_task(follower.run(stop)), asyncio.create_task(expirer.run(stop))]
    try:
        # started first: its first list then finds nothing to follow, and hears of the new pod
        await async_wait_for(lambda: bool(follower.resource_version), what="the follower's list")
        frontend = workload(cluster, "frontend")
        assert await annotator.apply(action_for(frontend)) == "applied"
        full = {n for n in ("node-a", "node-b") if expirer.observed_on(n) >= 1}
        assert "node-b" in full  # the sample's frontend has a pod there
        new_frontend_pod(emulator, "frontend-ngq2cd9wfp-budget")  # lands on node-b
        await async_wait_for(
            lambda: any(r["result"] == "refused-node-budget" for r in auditor.records),
            what="the follower to refuse the pod",
        )
        assert not observed(emulator, "frontend-ngq2cd9wfp-budget")
        refused = next(r for r in auditor.records if r["result"] == "refused-node-budget")
        assert refused["pods"] == ["frontend-ngq2cd9wfp-budget"]
        assert refused["nodes"] == ["node-b"]
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_a_follower_over_10000_pods_starts_without_a_request_per_pod(
    tmp_path: Path,
) -> None:
    """Three lists and the watches, then the marks of the observed pods: no GET per pod."""
    builder = ClusterBuilder(seed=11)
    deployments = [builder.deployment(f"ns-{i % 50}", f"app-{i}", 2, "x") for i in range(5000)]
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    with emulator.serve():
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
        client = await kube.Kube.connect(str(kubeconfig), timeout_s=10.0, attempts=1)
        try:
            annotator, expirer = make(client, ttl=600)
            observed_now = deployments[:20]
            for deployment in observed_now:
                assert await annotator.apply(action_for(deployment)) == "applied"
            before = len(emulator.requests)
            follower = Follower(
                client,
                WorkloadResolver(client, cache_size=100, ttl_s=60),
                [topology(ttl=600)],
                expirer,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(follower.run(stop))
            try:
                await async_wait_for(
                    lambda: bool(follower.resource_version), timeout=60, what="its start"
                )
                assert len(follower.cache) == 10_000
                assert {k[2] for k in follower.followed()} == {d.name for d in observed_now}
                made = emulator.requests[before:]
                reads = [r for r in made if r.method == "GET" and "watch=" not in r.query]
                # only the three lists, in pages of 500: 10,000 pods, 5,000 ReplicaSets, no Jobs
                pages = Counter(r.path for r in reads)
                assert pages == {
                    "/api/v1/pods": 20,
                    "/apis/apps/v1/replicasets": 10,
                    "/apis/batch/v1/jobs": 1,
                }
            finally:
                stop.set()
                await task
        finally:
            await client.close()


async def test_after_a_410_the_follower_finds_the_pods_it_missed(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A pod created while the watch was gone is found in the new list and observed."""
    annotator, expirer = make(client, ttl=60)
    follower = Follower(
        client, WorkloadResolver(client, cache_size=100, ttl_s=60), [topology(ttl=60)], expirer
    )
    annotator.follower = follower
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    try:
        await async_wait_for(lambda: bool(follower.resource_version), timeout=10, what="a list")
        assert await annotator.apply(action_for(workload(cluster, "frontend"))) == "applied"
        heard: list[str] = []
        follower.cache.subscribe(lambda kind, _pod: heard.append(kind))
        emulator.compact()
        new_frontend_pod(emulator, "frontend-ngq2cd9wfp-wwwww")
        await async_wait_for(
            lambda: observed(emulator, "frontend-ngq2cd9wfp-wwwww"),
            timeout=20,
            what="the pod created across the 410 to be observed",
        )
        assert "LISTED" in heard  # found by the new list, not by the watch that ended
        assert follower.followed_pods == 1
    finally:
        stop.set()
        await task
