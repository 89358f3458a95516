"""Outages of what the pipeline depends on: it rides them out without a restart."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import (
    Pipeline,
    consume_all,
    patch_count,
    produce,
    topology_file,
)

pytestmark = pytest.mark.e2e


def test_a_broker_outage_is_ridden_out_and_reported(
    tmp_path: Path,
    durable_broker: EmbeddedBroker,
    emulator: KubeEmulator,
    kubeconfig: Path,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
    env: dict[str, str],
) -> None:
    """The broker stops for 12 s and comes back: no restart, one report, no log flood.

    The broker keeps its data on S3 (moto's local server): tansu's memory storage would lose
    every topic and offset on a restart, which no real Kafka deployment does.
    """
    rng = random.Random(5)
    before, during, after = (
        next(w for w in cluster.workloads if w.name == n) for n in ("frontend", "redis", "postgres")
    )
    env = {**env, "STREAMPROC_BOOTSTRAP_SERVERS": durable_broker.bootstrap}
    pipeline = Pipeline("run", env, topology_file(tmp_path, "3s", "120s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    produce(durable_broker.bootstrap, "falco", [detection(before, rng)])
    wait_for(lambda: annotated(emulator) >= set(before.pods), timeout=60, what="first annotations")
    assert pipeline.metric("streamproc_kafka_up") == 1

    durable_broker.stop()
    down_at = time.monotonic()
    wait_for(
        lambda: pipeline.metric("streamproc_kafka_outages_total") == 1, what="the outage report"
    )
    assert pipeline.metric("streamproc_kafka_up") == 0
    wait_for(lambda: time.monotonic() - down_at > 12, interval=0.5, what="12 s of outage")
    durable_broker.start()
    # Falcosidekick's own retries would deliver what it could not publish during the outage;
    # detections published right after the broker is back stand in for them here.
    produce(durable_broker.bootstrap, "falco", [detection(during, rng), detection(after, rng)])
    expected = set(before.pods) | set(during.pods) | set(after.pods)
    wait_for(lambda: annotated(emulator) >= expected, timeout=90, what="annotations after it")
    recovered_s = time.monotonic() - down_at
    wait_for(lambda: pipeline.metric("streamproc_kafka_up") == 1, what="kafka_up back to 1")

    assert pipeline.process.poll() is None  # never restarted
    assert pipeline.metric("streamproc_kafka_outage_duration_seconds_count") == 1
    assert pipeline.metric("streamproc_kafka_outage_duration_seconds_sum") >= 10
    assert pipeline.metric("streamproc_actions_emitted_total") == 3
    log = pipeline.log.read_text().splitlines()
    assert sum("Kafka unreachable" in line for line in log) == 1
    assert sum("Kafka reachable again" in line for line in log) == 1
    library_errors = [line for line in log if "ERROR   aiokafka" in line]
    assert len(library_errors) < 30, f"{len(library_errors)} aiokafka error lines"
    assert pipeline.stop() == 0
    assert recovered_s < 60


def detection(workload: SampleWorkload, rng: random.Random) -> bytes:
    rule = samples.RULES[0]
    return orjson.dumps(samples.detection(workload, workload.pods[0], rule, time.time(), rng))


def test_a_minute_without_the_api_server_loses_no_action_and_no_expiry(
    tmp_path: Path,
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
    env: dict[str, str],
) -> None:
    """Connections to the API server are refused for 60 s, in the middle of the pipeline's work.

    The first observation's expiry falls due 30 s into the outage; a new detection arrives 50 s
    into it. After the outage the overdue expiry is carried out and the new observation is
    applied, once, with no restart.
    """
    rng = random.Random(6)
    first, second = (
        next(w for w in cluster.workloads if w.name == n) for n in ("frontend", "redis")
    )
    pipeline = Pipeline("run", env, topology_file(tmp_path, "3s", "30s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    produce(broker.bootstrap, "falco", [detection(first, rng)])
    wait_for(lambda: annotated(emulator) >= set(first.pods), timeout=60, what="first annotations")

    with emulator.unreachable():
        down_at = time.monotonic()
        wait_for(lambda: time.monotonic() - down_at >= 50, timeout=60, interval=1, what="50 s")
        produce(broker.bootstrap, "falco", [detection(second, rng)])
        wait_for(
            lambda: pipeline.metric("streamproc_api_request_duration_seconds_count", code="error"),
            what="the pipeline noticing the outage",
        )
        wait_for(lambda: time.monotonic() - down_at >= 60, interval=1, what="a minute")
        assert annotated(emulator) == set(first.pods)  # nothing could be written meanwhile
    up_at = time.monotonic()

    wait_for(lambda: annotated(emulator) == set(second.pods), timeout=30, what="apply and expiry")
    recovered_s = time.monotonic() - up_at
    assert pipeline.process.poll() is None
    assert patch_count(emulator, tuple(second.pods)) == len(second.pods)  # once per pod
    assert pipeline.metric("streamproc_actions_emitted_total") == 2
    assert pipeline.metric("streamproc_observations_expired_total") == len(first.pods)
    assert pipeline.stop() == 0
    audit = [
        orjson.loads(v or b"") for _, v, _ in consume_all(broker.bootstrap, "streamproc.audit")
    ]
    assert [r["name"] for r in audit if r["result"] == "applied"] == ["frontend", "redis"]
    assert {r["name"] for r in audit if r["result"] == "expired"} == set(first.pods)
    assert recovered_s < 15  # the annotator retries at least every 8 s
