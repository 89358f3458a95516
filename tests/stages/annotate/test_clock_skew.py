"""Annotate replicas whose clocks run ahead or behind still observe for the whole TTL.

The issue's run: three replicas under libfaketime, one 90 s ahead (every action on its
partitions judged ``expired-before-apply``), one 30 s behind (observations removed 30 s late).
The emulated API server plays the same with its ``Date`` header: a server 90 s behind this
host is this host 90 s ahead of the cluster, and the action's times are the cluster's. The
annotator and expirer are wired as ``running`` wires them: on the API client's clock.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamproc.clients import kube
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.doctor import diagnosing
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from tests import doubles as testing
from tests.conftest import action_for, annotated, topology, workload

TTL_S = 60


def _wired(client: kube.Kube) -> tuple[Annotator, Expirer]:
    """An annotator and expirer on the API server's time, as ``running`` makes them."""
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
    expirer = Expirer(client, resync_s=60, clock=client.now)
    annotator = Annotator(
        Settings(), [topology(TTL_S)], client, resolver, expirer, clock=client.now
    )
    return annotator, expirer


async def test_a_replica_90s_ahead_applies_actions_for_the_full_ttl(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Its own clock says the window ended 90 s ago; the cluster's says now: observed 60 s."""
    emulator.clock_offset_s = -90.0
    await client.server_version()  # any answer carries the server's Date
    assert abs(client.skew.seconds - 90) < 1.5
    assert abs(testing.metric("streamproc_clock_skew_seconds", server=client.server) - 90) < 1.5
    annotator, _ = _wired(client)
    frontend = workload(cluster, "frontend")
    cluster_now = time.time() - 90
    action = action_for(frontend, window_start=int(cluster_now) // 10 * 10)
    assert await annotator.apply(action) == "applied"
    assert annotated(emulator) == set(frontend.pods)
    pod = emulator.get("Pod", "shop", frontend.pods[0]) or {}
    until = conventions.parse_time(pod["metadata"]["annotations"][conventions.EXPIRES_AT])
    assert until is not None
    assert cluster_now + TTL_S - 3 <= until <= cluster_now + TTL_S + 2


async def test_a_replica_30s_behind_removes_observations_on_the_clusters_time(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """An observation the cluster's clock says ended 5 s ago is removed now, not in 25 s."""
    emulator.clock_offset_s = 30.0
    await client.server_version()
    annotator, _ = _wired(client)
    frontend = workload(cluster, "frontend")
    assert await annotator.apply(action_for(frontend)) == "applied"
    _, expirer = _wired(client)  # a replica that knows the pods only from their marks
    ended = conventions.format_time(time.time() + 30 - 5)
    for pod in frontend.pods:
        emulator.update("Pod", "shop", pod, {"metadata": {"annotations": {
            conventions.EXPIRES_AT: ended,
        }}})  # fmt: skip
    await expirer.resync()
    await expirer.expire_due()
    assert not annotated(emulator)
    assert expirer.expired == len(frontend.pods)


@pytest.mark.parametrize(
    ("offset_s", "status"), [(0.0, "ok"), (-10.0, "warn"), (120.0, "fail"), (-120.0, "fail")]
)
async def test_doctor_judges_this_hosts_clock_against_the_api_servers(
    emulator: KubeEmulator, kubeconfig: Path, offset_s: float, status: str
) -> None:
    """In step ✔, off by more than the Date's resolution ⚠, beyond --clock-tolerance ✘."""
    emulator.clock_offset_s = offset_s
    found = await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), [])
    [clock] = [c for c in found if c.name == "clock"]
    assert clock.status == status, clock
    if status != "ok":
        assert ("ahead of" if offset_s < 0 else "behind") in clock.detail
        assert "NTP" in clock.fix


async def test_a_window_that_ended_within_the_tolerance_is_observed_a_full_ttl(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Ended 50 s ago by its own times (clocks may differ by 60 s): TTL from now; 70 s: late."""
    annotator, _ = _wired(client)
    frontend, redis = workload(cluster, "frontend"), workload(cluster, "redis")
    now = client.now()
    timely = action_for(frontend, window_start=int(now) - 10 - 50)
    assert await annotator.apply(timely) == "applied"
    pod = emulator.get("Pod", "shop", frontend.pods[0]) or {}
    until = conventions.parse_time(pod["metadata"]["annotations"][conventions.EXPIRES_AT])
    assert until is not None
    assert now + TTL_S - 1 <= until <= client.now() + TTL_S
    # later than the tolerance: TTL from its window's end, which here is already past
    late = action_for(redis, window_start=int(now) - 10 - 70)
    assert await annotator.apply(late) == "expired-before-apply"
    assert annotated(emulator) == set(frontend.pods)
