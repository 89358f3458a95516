"""Apache Kafka 4.0's protocol floor (KIP-896), enforced on every connection of the pipeline.

Kafka 4.0 removed the protocol versions older than Kafka 2.1 and closes the connection when a
client sends one: a client change that falls back to such a version (as Faust 0.15 does with
aiokafka < 0.13: CreateTopics v1) would only show on a real 4.0 broker. The gate in
``tests/kafka_gate.py`` answers ApiVersions like a 4.0 broker in front of tansu and closes the
connection on anything below, so every stage here must get by with the versions 4.0 serves.
"""

from __future__ import annotations

import io
import os
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka.protocol.admin import ApiVersionResponse_v0, CreateTopicsRequest_v1

from streamproc.lab import samples
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import Pipeline, topology_file
from tests.kafka_gate import API_NAMES, KAFKA_4_0, KafkaGate

pytestmark = pytest.mark.e2e


def _exchange(port: int, api_key: int, version: int, body: bytes) -> bytes:
    """Send one request on a fresh connection; the answer's bytes, or b"" if it was closed."""
    header = struct.pack(">hhih", api_key, version, 7, 4) + b"test"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(header + body)) + header + body)
        size = sock.recv(4)
        if not size:
            return b""
        data = b""
        while len(data) < struct.unpack(">i", size)[0]:
            data += sock.recv(65536)
        return data


def test_the_gate_lists_kafka_4_0s_floors_and_the_brokers_ceilings(kafka4: KafkaGate) -> None:
    """ApiVersions shows 4.0's floors (Fetch v4, CreateTopics v2, ...) and no version above
    what tansu serves; Produce is listed from v0 as 4.0 lists it (KAFKA-18659)."""
    answer = _exchange(kafka4.port, 18, 0, b"")
    rows = {
        k: (lo, hi)
        for k, lo, hi in ApiVersionResponse_v0.decode(io.BytesIO(answer[4:])).api_versions
    }
    assert rows[1][0] == 4
    assert rows[19][0] == 2
    assert rows[8][0] == 2
    assert rows[11][0] == 2
    assert rows[0][0] == 0
    assert all(KAFKA_4_0[k][0] <= lo <= hi <= KAFKA_4_0[k][1] for k, (lo, hi) in rows.items())


def test_a_flexible_api_versions_answer_is_cut_to_kafka_4_0_as_well(kafka4: KafkaGate) -> None:
    """ApiVersions v3 (compact arrays and tagged fields: librdkafka's and Java's choice) gets the
    same floors; the answer still parses to its end."""
    name = b"\x05test"  # compact string "test": length + 1
    header = struct.pack(">hhih", 18, 3, 9, 4) + b"test" + b"\0"  # request header v2
    body = name + b"\x021" + b"\0"  # client software name, version "1", no tagged fields
    with socket.create_connection(("127.0.0.1", kafka4.port), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(header + body)) + header + body)
        size = struct.unpack(">i", sock.recv(4))[0]
        data = b""
        while len(data) < size:
            data += sock.recv(65536)
    answer = io.BytesIO(data[4:])
    assert struct.unpack(">h", answer.read(2))[0] == 0
    count = answer.read(1)[0] - 1  # fewer than 127 rows: one byte
    rows = {}
    for _ in range(count):
        key, low, high = struct.unpack(">hhh", answer.read(6))
        assert answer.read(1) == b"\0"
        rows[key] = (low, high)
    answer.read(4)  # throttle time
    assert answer.read(1)  # the top-level tagged fields are still there
    assert rows[1][0] == 4
    assert rows[19][0] == 2
    assert set(rows) <= set(KAFKA_4_0)


@pytest.mark.parametrize(
    ("api_key", "version"),
    [(19, 1), (0, 2), (1, 3), (11, 1), (8, 1), (2, 0)],
    ids=[
        "CreateTopics-v1",
        "Produce-v2",
        "Fetch-v3",
        "JoinGroup-v1",
        "OffsetCommit-v1",
        "ListOffsets-v0",
    ],
)
def test_a_request_below_kafka_4_0s_floor_closes_the_connection(
    kafka4: KafkaGate, api_key: int, version: int
) -> None:
    """As a 4.0 broker does: no answer, the connection closed, the refusal recorded. CreateTopics
    v1 is what Faust 0.15 sends with aiokafka < 0.13; Produce v2 is listed (KAFKA-18659) yet
    refused."""
    # the body matters little: the broker refuses on the header; CreateTopics v1 is the real one
    body = (
        CreateTopicsRequest_v1(create_topic_requests=[], timeout=1000, validate_only=False).encode()
        if api_key == 19
        else b""
    )
    assert _exchange(kafka4.port, api_key, version, body) == b""
    assert len(kafka4.refused) == 1
    assert kafka4.refused[0].startswith(f"{API_NAMES[api_key]} v{version} "), kafka4.refused


def test_the_whole_pipeline_runs_on_the_versions_kafka_4_0_serves(
    tmp_path: Path,
    kafka4: KafkaGate,
    emulator: KubeEmulator,
    kubeconfig: Path,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """send, ingest, Faust's windows stage (topic creation included) and the annotator all
    speak versions a 4.0 broker serves; the detection becomes an annotation."""
    env = {
        **os.environ,
        "STREAMPROC_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka4.port}",
        "KUBECONFIG": str(kubeconfig),
        "STREAMPROC_LOG_LEVEL": "INFO",
    }
    pipeline = Pipeline("run", env, topology_file(tmp_path, "3s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    workload = next(w for w in cluster.workloads if w.name == "frontend")
    detection = samples.detection(
        workload, workload.pods[0], samples.RULES[0], time.time(), random.Random(4)
    )
    source = tmp_path / "detections.jsonl"
    source.write_bytes(orjson.dumps(detection) + b"\n")
    sent = subprocess.run(
        [sys.executable, "-m", "streamproc", "send", str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: annotated(emulator) >= set(workload.pods), timeout=90, what="annotations")
    assert pipeline.stop() == 0
    assert not kafka4.refused, (kafka4.refused, pipeline.log.read_text()[-3000:])
    used = {key for key, _ in kafka4.requests}
    # produce, fetch, metadata, the consumer group's whole life and Faust's topic creation
    assert used >= {0, 1, 3, 8, 9, 10, 11, 12, 14, 19}, sorted(kafka4.requests)
