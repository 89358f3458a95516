"""Sealed marks (``--mark-key-file``): written, renewed, followed and removed; copies refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from streamproc.clients import kube
from streamproc.cluster import marking
from streamproc.cluster.cache import ClusterCache
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions, marks, seals
from streamproc.stages.annotate.following import Follower
from tests.conftest import (
    action_for,
    async_wait_for,
    make,
    running,
    time_passes,
    topology,
    workload,
)
from tests.doubles import MemoryAuditor
from tests.stages.annotate.test_following import new_frontend_pod

SEALER = seals.Sealer((b"k" * 64,))


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    """Each test sees its own first warning (pod names repeat across tests)."""
    marking._warned.clear()
    yield
    marking._warned.clear()


def pod_of(emulator: KubeEmulator, name: str) -> dict[str, Any]:
    return emulator.get("Pod", "shop", name) or {}


def seal_on(emulator: KubeEmulator, name: str) -> str | None:
    return (pod_of(emulator, name)["metadata"].get("annotations") or {}).get(conventions.SEAL)


def labelled(emulator: KubeEmulator, name: str) -> bool:
    labels = pod_of(emulator, name)["metadata"].get("labels") or {}
    return labels.get(conventions.OBSERVED_LABEL) == "true"


def reads_as_marks(emulator: KubeEmulator, name: str, policy: marks.Policy) -> bool:
    """Whether the pod's marks pass the decoder with the key (its seal verifies)."""
    found = marking.read(pod_of(emulator, name), now=time.time(), policy=policy)
    return isinstance(found, marks.Marks)


def copy_marks(emulator: KubeEmulator, source: str, target: str) -> None:
    """What a tenant can do: copy a pod's streamproc marks, seal included, onto another pod."""
    meta = pod_of(emulator, source)["metadata"]
    annotations = {
        k: v
        for k, v in meta["annotations"].items()
        if k.startswith(f"{conventions.PREFIX}/") or k == "retina.sh"
    }
    labels = {conventions.OBSERVED_LABEL: "true"}
    emulator.update(
        "Pod", "shop", target, {"metadata": {"annotations": annotations, "labels": labels}}
    )


async def test_a_sealed_observation_opens_extends_follows_and_expires_with_its_seal(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Each pod gets its own seal; an extension renews it; the expiry removes it."""
    annotator, expirer = make(client, ttl=60, extend_below=1.0, sealer=SEALER)
    policy = expirer.policy
    follower = Follower(
        client,
        WorkloadResolver(client, cache_size=100, ttl_s=60),
        [topology(ttl=60)],
        expirer,
        MemoryAuditor(),
        clock=expirer.clock,
        policy=policy,
    )
    annotator.follower = follower
    frontend = workload(cluster, "frontend")
    first, second = frontend.pods[0], frontend.pods[1]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(follower.run(stop)), asyncio.create_task(expirer.run(stop))]
    try:
        start = int(time.time()) // 10 * 10
        assert await annotator.apply(action_for(frontend, window_start=start)) == "applied"
        opened = seal_on(emulator, first)
        assert opened is not None
        assert seal_on(emulator, second) not in (None, opened)  # bound to each pod
        assert all(reads_as_marks(emulator, p, policy) for p in frontend.pods)
        later = action_for(frontend, window_start=start + 30)
        assert await annotator.apply(later) == "extended"
        assert seal_on(emulator, first) not in (None, opened)  # renewed with the expiry
        assert reads_as_marks(emulator, first, policy)
        new_frontend_pod(emulator, "frontend-ngq2cd9wfp-sealed")
        await async_wait_for(
            lambda: seal_on(emulator, "frontend-ngq2cd9wfp-sealed"),
            timeout=10,
            what="the followed pod to be sealed",
        )
        assert reads_as_marks(emulator, "frontend-ngq2cd9wfp-sealed", policy)
        time_passes(expirer, 3600)
        await async_wait_for(
            lambda: (
                not any(
                    conventions.SEAL in (p["metadata"].get("annotations") or {})
                    or labelled(emulator, p["metadata"]["name"])
                    for p in emulator.list("Pod", "shop")
                )
            ),
            timeout=20,
            what="every observation, seals included, to end",
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_without_a_key_no_seal_is_written(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """No ``--mark-key-file``: the marks are what they always were, with no seal."""
    annotator, _ = make(client)
    frontend = workload(cluster, "frontend")
    assert await annotator.apply(action_for(frontend)) == "applied"
    assert labelled(emulator, frontend.pods[0])
    assert all(seal_on(emulator, p) is None for p in frontend.pods)


async def test_a_copy_of_a_sealed_pods_marks_onto_another_pod_is_refused_and_ended(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The seal names its pod: copied onto a pod of another workload it is ``bad-seal``."""
    annotator, expirer = make(client, sealer=SEALER)
    auditor = MemoryAuditor()
    expirer._auditor = auditor
    frontend, checkout = workload(cluster, "frontend"), workload(cluster, "checkout")
    assert await annotator.apply(action_for(frontend)) == "applied"
    copy_marks(emulator, frontend.pods[0], checkout.pods[0])
    copy = pod_of(emulator, checkout.pods[0])
    found = marking.read(copy, now=time.time(), policy=expirer.policy)
    assert isinstance(found, marks.Refusal)
    assert found.reason == "bad-seal"
    async with running(expirer.run):
        await async_wait_for(
            lambda: not labelled(emulator, checkout.pods[0]),
            timeout=10,
            what="the copy to be ended",
        )
    left = pod_of(emulator, checkout.pods[0])["metadata"].get("annotations") or {}
    assert not any(k.startswith(f"{conventions.PREFIX}/") for k in left)
    assert any(r.get("refused") == "bad-seal" for r in auditor.records)
    assert labelled(emulator, frontend.pods[0])  # the real observation goes on
    assert reads_as_marks(emulator, frontend.pods[0], expirer.policy)


def forged(emulator: KubeEmulator, pod: str, seal: str | None) -> None:
    """Marks exactly as streamproc writes them on checkout, with ``seal`` (None: none)."""
    annotations = {
        conventions.EXPIRES_AT: conventions.format_time(time.time() + 600),
        conventions.TOPOLOGY: "retina-observe",
        conventions.RULE: "Read sensitive file untrusted",
        conventions.ACTION_ID: "retina-observe/shop/Deployment/checkout/1000",
        conventions.OWNED_KEYS: "retina.sh",
        "retina.sh": "observe",
    }
    if seal is not None:
        annotations[conventions.SEAL] = seal
    labels = {conventions.OBSERVED_LABEL: "true"}
    emulator.update(
        "Pod", "shop", pod, {"metadata": {"annotations": annotations, "labels": labels}}
    )


@pytest.mark.parametrize(
    ("seal", "reason"),
    [
        (None, "unsealed"),
        (seals.Sealer((b"guess" * 8,)).seal(("shop", "x", "y"), {}), "bad-seal"),
        (SEALER.seal(("shop", "frontend", "uid"), {}), "bad-seal"),
    ],
    ids=["no-seal", "another-key", "another-objects-seal"],
)
async def test_marks_without_streamproc_s_seal_take_no_max_observations_slot(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    seal: str | None,
    reason: marks.Reason,
) -> None:
    """maxObservations: 1, checkout forged in streamproc's form: frontend's detection applies."""
    capped = topology(maxObservations=1)
    annotator, expirer = make(client, sealer=SEALER)
    annotator.topologies = {capped.name: capped}
    auditor = MemoryAuditor()
    expirer._auditor = auditor
    follower = Follower(
        client,
        WorkloadResolver(client, cache_size=100, ttl_s=60),
        [capped],
        expirer,
        policy=expirer.policy,
    )
    annotator.follower = follower
    checkout = workload(cluster, "checkout")
    for pod in checkout.pods:
        forged(emulator, pod, seal)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(follower.run(stop)), asyncio.create_task(expirer.run(stop))]
    try:
        await async_wait_for(lambda: follower.resource_version, timeout=10, what="the listing")
        assert follower.observing(capped.name) == set()
        assert await annotator.apply(action_for(workload(cluster, "frontend"))) == "applied"
        await async_wait_for(
            lambda: not any(labelled(emulator, p) for p in checkout.pods),
            timeout=10,
            what="the forged observations to be ended",
        )
        assert {r.get("refused") for r in auditor.records if r.get("refused")} == {reason}
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_the_cluster_cache_keeps_what_a_seal_is_bound_to(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The expirer and follower read marked pods from the cache: its copy verifies as the pod."""
    annotator, expirer = make(client, sealer=SEALER)
    cache = ClusterCache(client)
    frontend = workload(cluster, "frontend")
    async with running(cache.run):
        assert await annotator.apply(action_for(frontend)) == "applied"
        sealed = seal_on(emulator, frontend.pods[0])
        kept = await async_wait_for(
            lambda: (
                (info := cache.pod("shop", frontend.pods[0]))
                and info.marks.get(conventions.SEAL) == sealed
                and info
            ),
            timeout=10,
            what="the cache to see the sealed pod",
        )
        assert kept
        found = marking.read(kept.object(), now=time.time(), policy=expirer.policy)
        assert isinstance(found, marks.Marks)


async def test_status_and_release_with_the_key_show_and_end_sealed_observations_only(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """With the key: the sealed one is listed and released; an unsealed forgery is not listed."""
    from streamproc.cluster import observing

    annotator, _ = make(client, sealer=SEALER)
    frontend = workload(cluster, "frontend")
    assert await annotator.apply(action_for(frontend)) == "applied"
    for pod in workload(cluster, "checkout").pods:
        forged(emulator, pod, None)
    resolver = WorkloadResolver(client, cache_size=10, ttl_s=60)
    keyed = marks.Policy(sealer=SEALER)
    found = await observing.current(client, resolver, keyed)
    assert [o.workload for o in found] == ["frontend"]
    unkeyed = await observing.current(client, resolver)  # no key: sealed or not, all alike
    assert sorted(o.workload for o in unkeyed) == ["checkout", "frontend"]
    pods, _ = await observing.release(
        client, resolver, "shop", None, "frontend", marks.Policy.of([topology()], sealer=SEALER)
    )
    assert sorted(pods) == sorted(frontend.pods)
    assert all(seal_on(emulator, p) is None and not labelled(emulator, p) for p in frontend.pods)
