"""Retries of the annotate stage: a failing workload waits on its own; an outage gives up nothing.

Against the emulated API server through the real client; the retries' clock is moved instead
of waiting for a backoff or for ``--retry-for`` to pass.
"""

from __future__ import annotations

import time

from streamproc.clients import kube
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import Fault, KubeEmulator
from streamproc.stages.annotate.loop import Retries
from tests import doubles as testing
from tests.conftest import action_for, annotated, make, workload


class _Later:
    """``time.monotonic`` (the API client's clock too) plus an offset a test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_a_workload_failing_alone_is_given_up_after_retry_for_while_others_land(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Its PATCHes answer 500 while frontend lands: parked, then given up with the error."""
    annotator, _ = make(client)
    emulator.faults.append(
        Fault(method="PATCH", path="/namespaces/payments/pods/", status=500, times=10**9)
    )
    clock = _Later()
    retries: Retries[str] = Retries(annotator, retry_for_s=30, clock=clock)
    api, frontend = workload(cluster, "api"), workload(cluster, "frontend")
    assert await retries.apply([(action_for(api), "api")]) == []
    assert len(retries) == 1
    assert await retries.apply([(action_for(frontend), "frontend")]) == []
    assert annotated(emulator) == set(frontend.pods)  # not held back by api
    clock.offset += 31
    given_up = await retries.apply([])
    assert [(a.name, where) for a, where, _ in given_up] == [("api", "api")]
    assert "HTTP 500" in given_up[0][2]
    assert len(retries) == 0
    assert testing.metric("streamproc_actions_handled_total", result="retries-exhausted") >= 1


async def test_nothing_is_given_up_while_the_api_server_answers_nothing(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Every request fails for longer than retry_for: actions wait, then land once it is back."""
    annotator, _ = make(client)
    outage = Fault(status=503, times=10**9)
    emulator.faults.append(outage)
    clock = _Later()
    retries: Retries[None] = Retries(annotator, retry_for_s=30, clock=clock)
    names = ("frontend", "redis")
    assert await retries.apply([(action_for(workload(cluster, n)), None) for n in names]) == []
    clock.offset += 300
    assert await retries.apply([]) == []
    assert len(retries) == 2
    outage.times = 0
    clock.offset += 300
    assert await retries.apply([]) == []
    assert len(retries) == 0
    assert annotated(emulator) == {p for n in names for p in workload(cluster, n).pods}


async def test_a_later_action_of_a_parked_workload_waits_behind_it(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Windows stay in order: the next window's action is not applied before the parked one."""
    annotator, _ = make(client)
    fault = Fault(method="PATCH", path="/namespaces/shop/pods/", status=500, times=10**9)
    emulator.faults.append(fault)
    clock = _Later()
    retries: Retries[int] = Retries(annotator, retry_for_s=30, clock=clock)
    frontend = workload(cluster, "frontend")
    start = int(time.time()) // 10 * 10 - 10
    assert await retries.apply([(action_for(frontend, window_start=start), 1)]) == []
    fault.times = 0
    assert await retries.apply([(action_for(frontend, window_start=start + 10), 2)]) == []
    assert sorted(retries.positions()) == [1, 2]  # the later one waits, unattempted
    assert not annotated(emulator)
    clock.offset += retries.wait_s()
    assert await retries.apply([]) == []
    assert len(retries) == 0
    assert annotated(emulator) == set(frontend.pods)
