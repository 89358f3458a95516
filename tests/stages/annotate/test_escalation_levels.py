"""The annotator takes an observation's TTL from its own topology's ladder, by its level."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from prometheus_client import REGISTRY

from streamproc.clients import kube
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from tests import doubles as testing
from tests.conftest import action_for, async_wait_for, make, time_passes, topology, workload

LADDER = {"ttls": ["15m", "1h", "6h", "24h"], "forgetAfter": "7d"}


def expires_at(pod: dict[str, Any]) -> float | None:
    """The pod's expiry as written (these tests read what streamproc wrote)."""
    value = (pod.get("metadata", {}).get("annotations") or {}).get(conventions.EXPIRES_AT)
    return conventions.parse_time(value) if value else None


def annotations(emulator: KubeEmulator, pod: str) -> dict[str, str]:
    return (emulator.get("Pod", "shop", pod) or {})["metadata"].get("annotations") or {}


def started(emulator: KubeEmulator, pods: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        e
        for e in emulator.list("Event", "shop")
        if e["reason"] == "ObservationStarted" and e["involvedObject"]["name"] in pods
    ]


def opened(level: str) -> float:
    labels = {"topology": "retina-observe", "level": level}
    return REGISTRY.get_sample_value("streamproc_observations_opened_total", labels) or 0.0


async def test_each_level_observes_for_its_step_and_says_so(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Level 3 of 4: six hours on every pod, "3/4" on them, in the Event, the audit and metric."""
    laddered = topology(ttl="15m", escalation=LADDER)
    annotator, expirer = make(client)
    annotator.topologies = {laddered.name: laddered}
    annotator.auditor = auditor = testing.MemoryAuditor()
    frontend = workload(cluster, "frontend")
    before = opened("3")
    now = annotator.clock()
    action = dataclasses.replace(action_for(frontend, window_start=int(now) - 5), level=3)
    assert await annotator.apply(action) == "applied"
    for pod in frontend.pods:
        found = annotations(emulator, pod)
        assert found[conventions.LEVEL] == "3/4"
        until = expires_at(emulator.get("Pod", "shop", pod) or {})
        assert until is not None
        assert abs(until - (now + 6 * 3600)) <= 1
    [record] = auditor.records
    assert record["level"] == 3
    # Events are posted in the background: wait for one per pod
    await async_wait_for(
        lambda: len(started(emulator, frontend.pods)) == len(frontend.pods),
        timeout=15,
        what="an ObservationStarted Event for every pod",
    )
    events = started(emulator, frontend.pods)
    assert all("level 3 of 4, 6h" in e["message"] for e in events)
    assert opened("3") == before + 1
    # released at its step's end, the level's bookkeeping with the rest
    stop = asyncio.Event()
    task = asyncio.create_task(expirer.run(stop))
    try:
        time_passes(expirer, 6 * 3600 + 15)
        await async_wait_for(
            lambda: all(not annotations(emulator, pod) for pod in frontend.pods),
            timeout=15,
            what="the level-3 observation to expire",
        )
    finally:
        stop.set()
        await task


async def test_a_forged_level_gets_no_step_beyond_the_ladder(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    laddered = topology(ttl="15m", escalation=LADDER)
    annotator, _ = make(client)
    annotator.topologies = {laddered.name: laddered}
    redis = workload(cluster, "redis")
    action = dataclasses.replace(action_for(redis, window_start=int(time.time()) - 5), level=999)
    assert await annotator.apply(action) == "applied"
    pod = emulator.get("Pod", "shop", redis.pods[0]) or {}
    assert annotations(emulator, redis.pods[0])[conventions.LEVEL] == "4/4"
    until = expires_at(pod)
    assert until is not None
    assert until <= action.window_end + 24 * 3600 + 1


async def test_without_a_ladder_the_level_is_ignored_and_not_written(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    annotator, _ = make(client, ttl=600)
    frontend = workload(cluster, "frontend")
    action = dataclasses.replace(action_for(frontend, window_start=int(time.time()) - 5), level=4)
    assert await annotator.apply(action) == "applied"
    found = annotations(emulator, frontend.pods[0])
    assert conventions.LEVEL not in found
    until = expires_at(emulator.get("Pod", "shop", frontend.pods[0]) or {})
    assert until is not None
    assert until <= action.window_end + 600 + 1


async def test_a_capture_waits_for_its_min_level(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """capture.minLevel 3: a Critical window at level 2 observes only; at level 3 it captures."""
    laddered = topology(ttl="15m", escalation=LADDER, capture={"minLevel": 3})
    annotator, _ = make(client)
    annotator.topologies = {laddered.name: laddered}
    frontend = workload(cluster, "frontend")
    start = int(time.time()) - 5
    critical = dataclasses.replace(action_for(frontend, window_start=start), priority=5, level=2)
    assert await annotator.apply(critical) == "applied"
    assert emulator.list("Capture") == []
    again = dataclasses.replace(action_for(frontend, window_start=start + 1), priority=5, level=3)
    await annotator.apply(again)
    assert len(emulator.list("Capture", "shop")) == 1
