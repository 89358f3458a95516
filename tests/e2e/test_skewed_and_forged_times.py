"""No record time stops or shortens the response (issue 24, item 0), end to end.

The issue's run: one detection stamped year 9999 stalled the windows stage at 100 % CPU in
Faust's window arithmetic; 0 of 11 pods were observed after it, ``/metrics`` timed out and
SIGTERM was ignored. A Falco host 20 min behind (TTL 15m) had its detection dropped, one 10 min
behind got 301 s of observation instead of 900. Here the same records go through one live
pipeline, with forged tallies beside them, and every detection is observed for its full TTL.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from tests.conftest import annotated, wait_for, workload
from tests.e2e.conftest import Pipeline, consume_all, topology_file

pytestmark = pytest.mark.e2e

YEAR_9999_MS = 253_402_300_800_000
TTL_S = 15 * 60
MINUTE_MS = 60_000


async def _send(bootstrap: str, topic: str, records: list[tuple[bytes, int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value, timestamp_ms in records:
            await producer.send(topic, value, timestamp_ms=timestamp_ms)
        await producer.flush()
    finally:
        await producer.stop()


def send(bootstrap: str, topic: str, records: list[tuple[bytes, int]]) -> None:
    """Publish records with the CreateTime a producer chose, as a skewed or forged one would."""
    asyncio.run(_send(bootstrap, topic, records))


def _detection(target: SampleWorkload) -> bytes:
    found = samples.detection(
        target, target.pods[0], samples.RULES[1], time.time(), random.Random(3)
    )
    return orjson.dumps(found)


def _tally(window_start_ms: int) -> bytes:
    return orjson.dumps(
        {
            "topology": "retina-observe",
            "namespace": "shop",
            "kind": "Deployment",
            "name": "checkout",
            "resolved_by": "api",
            "window_start": window_start_ms,
            "count": 1,
            "first_append_ms": window_start_ms,
            "rule": "r",
            "priority": 4,
            "pod": "",
            "uuids": [],
        }
    )


def _expiry(emulator: KubeEmulator, target: SampleWorkload) -> float:
    pod = emulator.get("Pod", target.namespace, target.pods[0]) or {}
    value = (pod["metadata"].get("annotations") or {}).get(conventions.EXPIRES_AT, "")
    return conventions.parse_time(value) or 0.0


def test_forged_and_skewed_record_times_neither_stall_nor_shorten_observation(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Year 9999 first, then good and late detections: all observed a full TTL, stage stays up."""
    pipeline = Pipeline("run", env, topology_file(tmp_path, "60s", "15m"), tmp_path / "run.log")
    pipelines.append(pipeline)
    wait_for(
        lambda: "running: ingest, windows, annotate" in pipeline.log.read_text(),
        timeout=60,
        what="the pipeline to start",
    )
    forged_9999, good, behind_20, behind_10 = (
        workload(cluster, name) for name in ("frontend", "api", "redis", "postgres")
    )
    now_ms = int(time.time() * 1000)
    # what stalled Faust: a record time past its window arithmetic, on a tally and a detection
    send(
        broker.bootstrap,
        "streamproc.tallies",
        [(_tally(now_ms // MINUTE_MS * MINUTE_MS), YEAR_9999_MS), (_tally(YEAR_9999_MS), now_ms)],
    )
    send(broker.bootstrap, "falco", [(_detection(forged_9999), YEAR_9999_MS)])
    send(broker.bootstrap, "falco", [(_detection(good), int(time.time() * 1000))])
    wait_for(
        lambda: {*forged_9999.pods, *good.pods} <= annotated(emulator),
        timeout=90,
        what=f"detections after the year-9999 record observed; log: {pipeline.log}",
    )
    # a Falco host 20 min behind, another 10 min behind (TTL 15m), both read as they arrive
    sent_at = time.time()
    send(
        broker.bootstrap,
        "falco",
        [
            (_detection(behind_20), int(sent_at * 1000) - 20 * MINUTE_MS),
            (_detection(behind_10), int(sent_at * 1000) - 10 * MINUTE_MS),
        ],
    )
    wait_for(
        lambda: {*behind_20.pods, *behind_10.pods} <= annotated(emulator),
        timeout=90,
        what=f"the detections of clocks behind observed; log: {pipeline.log}",
    )
    for target in (behind_20, behind_10, forged_9999):
        assert _expiry(emulator, target) >= sent_at + TTL_S - 5, target.name
        assert _expiry(emulator, target) <= time.time() + TTL_S + 120, target.name
    # the stage answers /metrics, counted what it replaced, and refused what Faust cannot hold
    assert pipeline.metric("streamproc_record_times_retimed_total", reason="ahead") == 1
    assert pipeline.metric("streamproc_record_times_retimed_total", reason="behind") == 2
    wait_for(
        lambda: pipeline.metric("streamproc_dead_letters_total", reason="invalid-timestamp") == 2,
        timeout=30,
        what="both forged tallies dead-lettered",
    )
    reasons = [
        h["streamproc.reason"] for _, _, h in consume_all(broker.bootstrap, "streamproc.dlq")
    ]
    assert reasons == [b"invalid-timestamp", b"invalid-timestamp"]
    started = time.monotonic()
    assert pipeline.stop() == 0
    assert time.monotonic() - started < 15
    assert "Traceback" not in pipeline.log.read_text()
