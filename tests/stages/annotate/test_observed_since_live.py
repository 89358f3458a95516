"""The observed-since mark on real pods (emulated API server) and the expirer's gauge of it:
set while the expirer holds a pod's observation, kept on extension and restart, gone at the end."""

from __future__ import annotations

import time

from streamproc.clients import kube
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from streamproc.stages.annotate.expiring import Expirer
from tests import doubles as testing
from tests.conftest import action_for, async_wait_for, make, running, time_passes, workload

GAUGE = "streamproc_observed_pod_since_seconds"


def since_on(emulator: KubeEmulator, pod: str) -> str | None:
    annotations = (emulator.get("Pod", "shop", pod) or {})["metadata"].get("annotations") or {}
    return annotations.get(conventions.OBSERVED_SINCE)


def gauge(pod: str) -> float:
    return testing.metric(
        GAUGE,
        namespace="shop",
        pod=pod,
        workload_kind="StatefulSet",
        workload_name="redis",
        topology="retina-observe",
    )


async def test_the_start_is_written_kept_on_extension_exported_and_survives_a_restart(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Open, extend, restart the expirer, expire: one start throughout, the gauge follows."""
    redis = workload(cluster, "redis")
    annotator, expirer = make(client, ttl=60, extend_below=1.0)
    start = int(time.time()) - 10
    await annotator.apply(action_for(redis, window_start=start))
    written = {p: since_on(emulator, p) for p in redis.pods}
    assert all(written.values())
    expected = {p: conventions.parse_time(str(v)) for p, v in written.items()}
    assert all(gauge(p) == expected[p] for p in redis.pods)

    time_passes(expirer, 30)
    annotator.clock = expirer.clock
    await annotator.apply(action_for(redis, window_start=start + 30))  # an extension
    assert {p: since_on(emulator, p) for p in redis.pods} == written
    assert all(gauge(p) == expected[p] for p in redis.pods)

    expirer._forget_all()  # the process ends: its series go with it
    assert all(gauge(p) == 0 for p in redis.pods)
    restarted = Expirer(client, resync_s=60, clock=expirer.clock, policy=expirer.policy)
    await restarted.resync()  # the start is read back from the pods
    assert all(gauge(p) == expected[p] for p in redis.pods)

    async with running(restarted.run):
        time_passes(restarted, 3600)
        await async_wait_for(lambda: not restarted.active, timeout=15, what="the expiry")
    assert all(since_on(emulator, p) is None for p in redis.pods)
    assert all(gauge(p) == 0 for p in redis.pods)
