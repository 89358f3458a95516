"""What ``streamproc evidence`` and ``release`` read and write: each pod over its own range, and a
Namespace observation's release recorded as the Namespace it was."""

from __future__ import annotations

import time

import orjson

from streamproc.cli import evidence as command
from streamproc.clients import kube
from streamproc.cluster import evidencing, observing
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions, evidence
from streamproc.settings import Settings
from tests.conftest import action_for, make, workload


async def test_a_pod_followed_later_is_read_from_its_own_start(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Two pods, one observed 100 s later: the command asks each over its own range."""
    redis = workload(cluster, "redis")
    annotator, _expirer = make(client, ttl=600)
    await annotator.apply(action_for(redis))
    first, later = redis.pods[0], redis.pods[1]
    meta = (emulator.get("Pod", "shop", first) or {})["metadata"]
    start = conventions.parse_time(meta["annotations"][conventions.OBSERVED_SINCE])
    assert start is not None
    followed = conventions.format_time(start + 100)
    emulator.update("Pod", "shop", later, {"metadata": {"annotations": {
        conventions.OBSERVED_SINCE: followed
    }}})  # fmt: skip
    resolver = WorkloadResolver(client, cache_size=10, ttl_s=60)
    live = await observing.find(client, resolver, ("shop", "StatefulSet", "redis"))
    assert live is not None
    target = command.live_target(live, start + 400)
    assert dict(zip(target.pods, target.starts, strict=True)) == {
        first: start,
        later: start + 100,
    }
    expr = evidence.queries(target, "retina")[0].expr
    assert f'podname="{first}"}}[400000ms]' in expr
    assert f'podname="{later}"}}[300000ms]' in expr
    past = evidencing.Found((first, later), start, start + 400, (start, start + 100))
    assert past.target("shop").starts_of() == {
        first: conventions.format_time(start),
        later: followed,
    }


def test_releasing_a_namespace_observation_records_the_namespace_without_evidence() -> None:
    """Kind Namespace, no pods, no evidence: not a bogus Pod named after the namespace."""
    before = observing.Observation("shop", "Namespace", "shop", "ns-observe", "rule", 0.0)
    ((key, value),) = command.released_records(Settings(), before, ["shop"], [None], time.time())
    record = orjson.loads(value)
    assert key == b"shop/Namespace/shop"
    assert (record["kind"], record["name"], record["pods"]) == ("Namespace", "shop", [])
    assert record["result"] == "released"
    assert "evidence" not in record
