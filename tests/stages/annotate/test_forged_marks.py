"""A tenant's forged marks on its own pods: no crash, no extension, no slot, no followed pods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from streamproc.clients import kube
from streamproc.cluster import marking
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions, marks
from streamproc.model.workloads import WorkloadRef
from streamproc.stages.annotate.following import Follower
from streamproc.stages.annotate.node_budget import NodeBudget
from tests import doubles as testing
from tests.conftest import action_for, async_wait_for, make, topology, workload
from tests.doubles import MemoryAuditor

FOREVER = "9999-12-31T23:59:59-14:00"
#: the forgery in full: the label, an action id of the workload, owned keys and retina.sh
FULL = {
    "labels": {conventions.OBSERVED_LABEL: "true"},
    "annotations": {
        conventions.EXPIRES_AT: FOREVER,
        conventions.TOPOLOGY: "retina-observe",
        conventions.ACTION_ID: "retina-observe/shop/Deployment/frontend/1000",
        conventions.OWNED_KEYS: "retina.sh",
        "retina.sh": "observe",
        "team": "tenant",
    },
}
#: the forgery at its barest: only the expiry, no label
BARE = {"annotations": {conventions.EXPIRES_AT: FOREVER, "team": "tenant"}}


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    """Each test sees its own first warning (pod names repeat across tests)."""
    marking._warned.clear()
    yield
    marking._warned.clear()


def forge(emulator: KubeEmulator, pod: str, metadata: dict[str, dict[str, str]]) -> None:
    """What anyone allowed to edit pods in namespace shop can write."""
    emulator.update("Pod", "shop", pod, {"metadata": metadata})


def meta(emulator: KubeEmulator, pod: str) -> dict[str, dict[str, str]]:
    return (emulator.get("Pod", "shop", pod) or {})["metadata"]


def refused() -> float:
    """Refusals counted so far, whatever the reason."""
    return sum(
        testing.metric("streamproc_marks_refused_total", reason=reason) for reason in marks.REASONS
    )


@pytest.mark.parametrize("forgery", [FULL, BARE], ids=["with-label-action-owned-keys", "bare"])
async def test_a_forged_far_expiry_crashes_neither_the_start_nor_the_detect_path(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    forgery: dict[str, dict[str, str]],
) -> None:
    """expires-at in the year 10000: follower and expirer run on; both detections apply."""
    frontend = workload(cluster, "frontend")
    forged = frontend.pods[0]
    forge(emulator, forged, forgery)
    before = refused()
    annotator, expirer = make(client, ttl=600)
    auditor = MemoryAuditor()
    expirer._auditor = auditor
    follower = Follower(
        client,
        WorkloadResolver(client, cache_size=100, ttl_s=60),
        [topology(ttl=600)],
        expirer,
        auditor,
        clock=expirer.clock,
    )
    annotator.follower = follower
    stop = asyncio.Event()
    tasks = [asyncio.create_task(follower.run(stop)), asyncio.create_task(expirer.run(stop))]
    try:
        await async_wait_for(lambda: follower.resource_version, timeout=10, what="the listing")
        if "labels" in forgery:  # the expirer ends a labelled forgery at once
            await async_wait_for(
                lambda: conventions.OBSERVED_LABEL not in meta(emulator, forged)["labels"],
                timeout=10,
                what="the forged observation to be ended",
            )
            assert auditor.records[-1]["result"] == "expired"
            assert auditor.records[-1]["refused"] == "beyond-policy"
            assert meta(emulator, forged)["annotations"] == {"team": "tenant"}
        assert not any(task.done() for task in tasks)
        # a real detection elsewhere is applied
        assert await annotator.apply(action_for(workload(cluster, "checkout"))) == "applied"
        # the detect path on the forged workload opens an observation of the topology's TTL
        assert await annotator.apply(action_for(frontend)) == "applied"
        for pod in frontend.pods:
            until = conventions.parse_time(
                meta(emulator, pod)["annotations"][conventions.EXPIRES_AT]
            )
            assert until is not None
            assert until <= time.time() + 600 + 5
        assert meta(emulator, forged)["annotations"]["team"] == "tenant"
        assert not any(task.done() for task in tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert refused() - before == 1  # one warning and one count, however often it was read


async def test_a_forged_mark_takes_no_max_observations_slot(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """With maxObservations: 1 and a forged mark on frontend, a real detection still applies."""
    capped = topology(maxObservations=1)
    annotator, expirer = make(client)
    annotator.topologies = {capped.name: capped}
    follower = Follower(
        client, WorkloadResolver(client, cache_size=100, ttl_s=60), [capped], expirer
    )
    annotator.follower = follower
    for pod in workload(cluster, "frontend").pods:
        forge(emulator, pod, FULL)
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    try:
        await async_wait_for(lambda: follower.resource_version, timeout=10, what="the listing")
        assert follower.observing(capped.name) == set()
        assert await annotator.apply(action_for(workload(cluster, "checkout"))) == "applied"
        assert follower.followed_pods == 0  # the forged workload's pods were not followed
    finally:
        stop.set()
        await task


async def test_a_forged_mark_takes_no_slot_of_the_node_budget(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The expirer does not count a refused pod on its node; a real pod there is admitted."""
    _, expirer = make(client)
    forged = workload(cluster, "frontend").pods[0]
    forge(emulator, forged, FULL)
    node = (emulator.get("Pod", "shop", forged) or {})["spec"]["nodeName"]
    await expirer.resync()
    assert expirer.observed_on(node) == 0
    other = next(
        p
        for p in emulator.list("Pod", "shop")
        if p["spec"].get("nodeName") == node and p["metadata"]["name"] != forged
    )
    admitted, _ = NodeBudget(expirer, 1).admit(
        [other],
        MemoryAuditor(),
        WorkloadRef("shop", "Deployment", "checkout", "api"),
        topology="retina-observe",
        rule="r",
    )
    assert admitted == [other]


async def test_status_neither_crashes_on_nor_lists_a_forged_mark(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """``status`` reads marks through the decoder: a year-10000 observation is not one."""
    from streamproc.cluster import observing

    forge(emulator, workload(cluster, "frontend").pods[0], FULL)
    found = await observing.current(client, WorkloadResolver(client, cache_size=10, ttl_s=60))
    assert [o.workload for o in found] == []
