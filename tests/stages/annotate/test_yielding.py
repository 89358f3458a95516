"""A key streamproc added that a person changed or removed is theirs: never written back."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamproc.clients import kube
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from tests.conftest import action_for, async_wait_for, make, time_passes, workload
from tests.doubles import MemoryAuditor

WINDOWS = 8


def annotations(emulator: KubeEmulator, pod: str) -> dict[str, str]:
    return (emulator.get("Pod", "shop", pod) or {})["metadata"].get("annotations") or {}


def labelled(emulator: KubeEmulator) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in emulator.list("Pod")
        if conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
    ]


@pytest.mark.parametrize("value", ["off", None], ids=["changed", "removed"])
async def test_a_key_a_person_changed_or_removed_is_yielded_for_every_window_and_at_expiry(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder, value: str | None
) -> None:
    """8 later windows neither write it back nor count it; expiry ends the rest, not it."""
    annotator, expirer = make(client, ttl=600, extend_below=1.0)
    auditor = MemoryAuditor()
    annotator.auditor = expirer._auditor = auditor
    frontend = workload(cluster, "frontend")
    person, untouched = frontend.pods[0], frontend.pods[1]
    start = int(time.time()) // 10 * 10 - 10 * WINDOWS
    assert await annotator.apply(action_for(frontend, window_start=start)) == "applied"
    emulator.update("Pod", "shop", person, {"metadata": {"annotations": {"retina.sh": value}}})
    for window in range(1, WINDOWS + 1):
        action = action_for(frontend, window_start=start + 10 * window)
        assert await annotator.apply(action) == "extended"
        assert annotations(emulator, person).get("retina.sh") == value
    yielded = [r for r in auditor.records if r["result"] == "yielded"]
    assert [(r["pods"], r["annotations"]) for r in yielded] == [([person], ["retina.sh"])]
    assert annotations(emulator, person)[conventions.OWNED_KEYS] == ""
    assert annotations(emulator, untouched)[conventions.OWNED_KEYS] == "retina.sh"
    stop = asyncio.Event()
    task = asyncio.create_task(expirer.run(stop))
    try:
        time_passes(expirer, 3600)
        await async_wait_for(lambda: not labelled(emulator), timeout=15, what="the expiry")
    finally:
        stop.set()
        await task
    assert annotations(emulator, person).get("retina.sh") == value
    assert not any(k.startswith(conventions.PREFIX) for k in annotations(emulator, person))
    assert "retina.sh" not in annotations(emulator, untouched)
    assert len([r for r in auditor.records if r["result"] == "yielded"]) == 1


async def test_a_key_changed_after_the_last_window_is_left_at_expiry_and_audited(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """No window comes after the change: the expirer yields it, says so, ends the rest."""
    annotator, expirer = make(client, ttl=600)
    auditor = MemoryAuditor()
    expirer._auditor = auditor
    redis = workload(cluster, "redis")
    person = redis.pods[0]
    assert await annotator.apply(action_for(redis)) == "applied"
    emulator.update("Pod", "shop", person, {"metadata": {"annotations": {"retina.sh": "off"}}})
    stop = asyncio.Event()
    task = asyncio.create_task(expirer.run(stop))
    try:
        time_passes(expirer, 3600)
        await async_wait_for(lambda: not labelled(emulator), timeout=15, what="the expiry")
    finally:
        stop.set()
        await task
    assert annotations(emulator, person) == {"retina.sh": "off"}
    yielded = [r for r in auditor.records if r["result"] == "yielded"]
    assert [(r["pods"], r["annotations"]) for r in yielded] == [([person], ["retina.sh"])]
    assert {r["name"] for r in auditor.records if r["result"] == "expired"} == set(redis.pods)
