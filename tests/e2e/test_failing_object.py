"""One object whose writes always fail holds back nothing but itself.

An admission webhook that is down, with ``failurePolicy: Fail``, turns every PATCH of a pod in
its namespace into a 500 while the API server answers everything else. The failing workload's
action is retried on its own and then dead-lettered; other workloads' actions land meanwhile;
and the commit never passes it while it is being retried, so a crash loses nothing.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import Fault, KubeEmulator
from tests.conftest import annotated, wait_for, workload
from tests.e2e.conftest import Pipeline, consume_all, group_lag, produce, topology_file

pytestmark = pytest.mark.e2e
OTHERS = ("frontend", "redis", "node-exporter", "debug-shell")


def _webhook_down(emulator: KubeEmulator) -> Fault:
    """Every PATCH of a pod in ``payments`` fails with 500, as a failing webhook makes it."""
    fault = Fault(method="PATCH", path="/namespaces/payments/pods/", status=500, times=10**9)
    emulator.faults.append(fault)
    return fault


def _detection(target: SampleWorkload) -> bytes:
    rule = samples.RULES[0]
    return orjson.dumps(
        samples.detection(target, target.pods[0], rule, time.time(), random.Random(3))
    )


def _refused_patches(emulator: KubeEmulator) -> int:
    return sum(
        1
        for r in emulator.requests
        if r.method == "PATCH" and r.status == 500 and "/namespaces/payments/" in r.path
    )


def test_a_namespace_whose_patches_always_fail_delays_no_other_workload(
    tmp_path: Path,
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
    env: dict[str, str],
) -> None:
    """Four other workloads land while it fails; it is dead-lettered and the commit moves on."""
    fault = _webhook_down(emulator)
    env = {**env, "STREAMPROC_RETRY_FOR": "10"}
    pipeline = Pipeline("run", env, topology_file(tmp_path, "2s", "300s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    api = workload(cluster, "api")
    produce(broker.bootstrap, "falco", [_detection(api)])
    wait_for(lambda: _refused_patches(emulator), timeout=90, what="the failing namespace's PATCH")
    others = [workload(cluster, name) for name in OTHERS]
    produce(broker.bootstrap, "falco", [_detection(w) for w in others])
    expected = {p for w in others for p in w.pods}
    wait_for(
        lambda: annotated(emulator) >= expected,
        timeout=45,
        what=f"the other workloads applied while one fails; log: {pipeline.log}",
    )
    assert fault.times > 0  # still failing: the others did not wait for it
    assert pipeline.metric("streamproc_actions_parked") == 1
    wait_for(
        lambda: pipeline.metric("streamproc_dead_letters_total", reason="retries-exhausted"),
        timeout=60,
        what="the failing workload's action given up",
    )
    wait_for(
        lambda: group_lag(broker.bootstrap, "streamproc-annotate", "streamproc.actions") == 0,
        timeout=30,
        what="the commit past the given-up action",
    )
    [letter] = [
        h
        for _, _, h in consume_all(broker.bootstrap, "streamproc.dlq", idle_s=1.0)
        if h["streamproc.reason"] == b"retries-exhausted"
    ]
    assert b"HTTP 500" in letter["streamproc.detail"]
    assert not set(api.pods) & annotated(emulator)
    assert pipeline.metric("streamproc_actions_parked") == 0
    assert pipeline.process.poll() is None


def test_an_action_still_being_retried_is_read_again_after_a_crash(
    tmp_path: Path,
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
    env: dict[str, str],
) -> None:
    """Later actions landed and were committed; the parked one was not, and lands after a kill."""
    fault = _webhook_down(emulator)
    topologies = topology_file(tmp_path, "2s", "300s")
    first = Pipeline("run", env, topologies, tmp_path / "first.log")
    pipelines.append(first)
    api = workload(cluster, "api")
    produce(broker.bootstrap, "falco", [_detection(api)])
    wait_for(lambda: _refused_patches(emulator), timeout=90, what="the failing namespace's PATCH")
    frontend = workload(cluster, "frontend")
    produce(broker.bootstrap, "falco", [_detection(frontend)])
    wait_for(lambda: annotated(emulator) >= set(frontend.pods), timeout=45, what="frontend")
    first.kill()  # while api's action is parked
    fault.times = 0  # the webhook is back
    second = Pipeline("run", env, topologies, tmp_path / "second.log")
    pipelines.append(second)
    wait_for(
        lambda: annotated(emulator) >= set(api.pods),
        timeout=90,
        what=f"the parked action read again and applied; log: {second.log}",
    )
