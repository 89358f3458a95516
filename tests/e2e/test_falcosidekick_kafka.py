"""Falcosidekick's Kafka output as configured in the field: every codec, and a batch no one reads.

Falcosidekick (falcosecurity/falcosidekick 2.34.1, ``outputs/kafka.go``) writes through
segmentio/kafka-go with ``kafka.compression`` GZIP, SNAPPY, LZ4, ZSTD or NONE. A producer that
has every codec writes the same compressed record batches here; the pipeline must read all of
them. A batch that cannot be decoded (corrupt payload, valid CRC: the embedded broker accepts
it) must be skipped and dead-lettered without stopping the stage or losing the records around it.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import annotated, wait_for, workload
from tests.e2e.conftest import Pipeline, consume_all, produce, topic_names, topology_file

pytestmark = pytest.mark.e2e
CODECS = ("gzip", "snappy", "lz4", "zstd")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "falcosidekick.json"


def detection(workload: SampleWorkload, rng: random.Random) -> bytes:
    return orjson.dumps(
        samples.detection(workload, workload.pods[0], samples.RULES[1], time.time(), rng)
    )


async def _produce_compressed(bootstrap: str, by_codec: dict[str, list[bytes]]) -> None:
    for codec, values in by_codec.items():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all")
        await producer.start()
        try:
            for value in values:
                await producer.send("falco", value, partition=0)
            await producer.flush()
        finally:
            await producer.stop()


def corrupt_gzip_batch(values: list[bytes]) -> bytes:
    """A gzip record batch whose payload is damaged but whose CRC matches (so it is stored)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=1,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for index, value in enumerate(values):
        builder.append(index, timestamp=None, key=None, value=value, headers=[])
    raw = bytearray(builder.build())
    raw[70:80] = b"X" * 10  # inside the compressed records
    raw[17:21] = struct.pack(">I", crc32c(bytes(raw[21:])))  # CRC covers attributes onwards
    return bytes(raw)


async def _produce_raw_batch(bootstrap: str, raw: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.client.force_metadata_update()
        node = producer.client.cluster.leader_for_partition(TopicPartition("falco", 0))
        response = await producer.client.send(
            node, ProduceRequest(None, -1, 5000, [("falco", [(0, raw)])])
        )
        assert response.topics[0][1][0][1] == 0, response  # stored
    finally:
        await producer.stop()


def test_every_falcosidekick_codec_is_read_end_to_end(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """GZIP, SNAPPY, LZ4 and ZSTD batches each open an observation; nothing is dead-lettered."""
    rng = random.Random(5)
    workloads = dict(zip(CODECS, cluster.workloads[:4], strict=True))
    pipeline = Pipeline("run", env, topology_file(tmp_path, "2s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    asyncio.run(
        _produce_compressed(
            broker.bootstrap, {c: [detection(w, rng)] * 3 for c, w in workloads.items()}
        )
    )
    expected = {w.pods[0] for w in workloads.values()}
    wait_for(
        lambda: expected <= annotated(emulator),
        timeout=90,
        what=f"pods of every codec's workload annotated; log: {pipeline.log}",
    )
    assert pipeline.metric("streamproc_dead_letters_total") == 0
    assert pipeline.metric("streamproc_batches_skipped_total") == 0
    assert "UnsupportedCodecError" not in pipeline.log.read_text()


def test_an_undecodable_batch_is_dead_lettered_and_the_stage_keeps_going(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Good, corrupt, good on one partition: both good detections land, the bad batch is
    dead-lettered naming topic, partition and offsets, and the stage never restarts.
    """
    rng = random.Random(6)
    before, after = cluster.workloads[0], cluster.workloads[1]
    asyncio.run(_produce_compressed(broker.bootstrap, {"gzip": [detection(before, rng)]}))
    asyncio.run(
        _produce_raw_batch(broker.bootstrap, corrupt_gzip_batch([detection(before, rng)] * 5))
    )
    asyncio.run(_produce_compressed(broker.bootstrap, {"lz4": [detection(after, rng)]}))
    pipeline = Pipeline("run", env, topology_file(tmp_path, "2s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    wait_for(
        lambda: {before.pods[0], after.pods[0]} <= annotated(emulator),
        timeout=90,
        what=f"the detections on both sides of the bad batch applied; log: {pipeline.log}",
    )
    assert (
        pipeline.metric(
            "streamproc_batches_skipped_total", stage="ingest", reason="undecodable-batch"
        )
        == 1
    )
    assert pipeline.process.poll() is None
    letters = consume_all(broker.bootstrap, "streamproc.dlq", idle_s=1.0)
    assert len(letters) == 1
    _, value, headers = letters[0]
    assert value is not None
    assert value[16] == 2  # the raw record batch (magic 2) for whoever investigates it
    assert headers["streamproc.reason"] == b"undecodable-batch"
    assert headers["streamproc.source.topic"] == b"falco"
    assert headers["streamproc.source.partition"] == b"0"
    assert headers["streamproc.source.offset"] == b"1"
    assert headers["streamproc.source.next-offset"] == b"6"
    log = pipeline.log.read_text()
    assert log.count("skipped an undecodable record batch in falco[0], offsets 1-5") == 1
    assert "Traceback" not in log


def named(workload: SampleWorkload, pod: str, cluster: str) -> bytes:
    """The fixture's payload for ``pod``, now, as ``customfields: cluster:NAME`` sends it."""
    doc = orjson.loads(FIXTURE.read_bytes())
    doc["time"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    doc["output_fields"] |= {
        "k8s.ns.name": workload.namespace,
        "k8s.pod.name": pod,
        "cluster": cluster,  # Falcosidekick sets each custom field in output_fields
    }
    return orjson.dumps(doc)


def test_a_single_cluster_observes_its_pods_whatever_cluster_customfields_name(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """`streamproc run` as the README starts it (no --cluster): payloads naming their cluster
    (`customfields: cluster:prod-eu`, or made-up names) are this cluster's, their pods are
    observed, and no topic is made for any name.
    """
    frontend, checkout = workload(cluster, "frontend"), workload(cluster, "checkout")
    pipeline = Pipeline("run", env, topology_file(tmp_path, "2s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    produce(
        broker.bootstrap,
        "falco",
        [named(frontend, pod, "prod-eu") for pod in frontend.pods]
        + [named(checkout, checkout.pods[0], f"made-up-{i}") for i in range(20)],
    )
    expected = {*frontend.pods, *checkout.pods}  # a workload is observed as a whole
    wait_for(
        lambda: annotated(emulator) >= expected,
        timeout=60,
        what=f"the named clusters' pods observed; log: {pipeline.log}",
    )
    assert annotated(emulator) == expected
    actions = consume_all(broker.bootstrap, "streamproc.actions", idle_s=0.5)
    assert {orjson.loads(v or b"")["cluster"] for _, v, _ in actions} == {""}
    assert not {t for t in topic_names(broker.bootstrap) if "actions." in t}
    assert consume_all(broker.bootstrap, "streamproc.dlq", idle_s=0.5) == []
    total = len(frontend.pods) + 20
    wait_for(
        lambda: pipeline.metric("streamproc_cluster_field_ignored_total") == total,
        what="every ignored cluster field counted",
    )
    log = pipeline.log.read_text()
    assert log.count("detections name cluster 'prod-eu'") == 1  # once, at INFO
    assert "WARNING" not in log
