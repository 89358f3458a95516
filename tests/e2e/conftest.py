"""End-to-end helpers: streamproc as a real subprocess against the broker and the emulator."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from streamproc.clients import kafka
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.settings import Settings
from tests.conftest import wait_for
from tests.kafka_gate import KAFKA_4_0, KafkaGate

TOPOLOGY = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: retina-observe
spec:
  match:
    priority: ">=Warning"
    sources: [syscall]
  window:
    size: {window}
    threshold: 1
  action:
    annotate:
      retina.sh: observe
    ttl: {ttl}
"""


class Pipeline:
    """One ``streamproc`` process; its log goes to a file the test can show on failure."""

    def __init__(self, command: str, env: dict[str, str], topology: Path, log: Path) -> None:
        self.metrics_port = free_port()
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamproc",
                command,
                "--topology",
                str(topology),
                "--session-timeout",
                "6",
                "--metrics-port",
                str(self.metrics_port),
                "--metrics-host",
                "127.0.0.1",
            ],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` matching ``labels``, scraped over HTTP; 0 if down."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def stop(self) -> int:
        """SIGTERM and wait: a clean shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._out.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash with no chance to commit or clean up."""
        self.process.kill()
        self.process.wait(10)
        self._out.close()


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value)
        await producer.flush()
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Publish raw records, as Falcosidekick would."""
    asyncio.run(_produce(bootstrap, topic, values))


async def _consume(
    bootstrap: str, topic: str, idle_s: float
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                return out
            for records in batch.values():
                out.extend((r.key, r.value, dict(r.headers)) for r in records)
    finally:
        await consumer.stop()


def consume_all(
    bootstrap: str, topic: str, idle_s: float = 2.0
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record on a topic, read from the beginning until it stays quiet for ``idle_s``.

    Read until idle rather than to the end offset: tansu answers ListOffsets(LATEST) wrongly.
    """
    return asyncio.run(_consume(bootstrap, topic, idle_s))


async def _topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def topic_names(bootstrap: str) -> set[str]:
    """Every topic on the broker (a Metadata request, which creates none)."""
    return asyncio.run(_topic_names(bootstrap))


def group_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Records on ``topic`` past ``group``'s committed offsets (None: it never committed)."""
    settings = Settings(bootstrap_servers=bootstrap)
    found = asyncio.run(kafka.survey(settings, [topic], {group: [topic]}, since_ms=0))
    return found.lag[group]


@pytest.fixture
def env(broker: EmbeddedBroker, kubeconfig: Path) -> dict[str, str]:
    """Environment for streamproc subprocesses: the broker and the emulated cluster."""
    return {
        **os.environ,
        "STREAMPROC_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KUBECONFIG": str(kubeconfig),
        "STREAMPROC_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def kafka4(tmp_path: Path) -> Iterator[KafkaGate]:
    """tansu behind a gate that answers and refuses like an Apache Kafka 4.0 broker."""
    gate = KafkaGate(port=free_port(), upstream_port=free_port(), api_versions=KAFKA_4_0)
    broker = EmbeddedBroker(
        port=gate.upstream_port, advertised_port=gate.port, log=tmp_path / "tansu.log"
    )
    with broker.running(), gate.serving():
        yield gate


@pytest.fixture
def pipelines(tmp_path: Path) -> Iterator[list[Pipeline]]:
    """Every Pipeline a test starts is stopped after it, and its log shown if the test failed."""
    started: list[Pipeline] = []
    yield started
    for pipeline in started:
        pipeline.stop()


def topology_file(tmp_path: Path, window: str, ttl: str) -> Path:
    path = tmp_path / "topologies"
    path.mkdir(exist_ok=True)
    (path / "retina-observe.yaml").write_text(TOPOLOGY.format(window=window, ttl=ttl))
    return path


def patch_count(emulator: KubeEmulator, pods: tuple[str, ...]) -> int:
    return sum(
        1
        for r in emulator.requests
        if r.method == "PATCH" and r.status == 200 and r.path.rsplit("/", 1)[-1] in pods
    )


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """A local S3 (moto's server) so the broker's data outlives a broker restart."""
    port = free_port()
    log = (tmp_path / "moto.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

        def bucket() -> bool:
            try:
                s3.create_bucket(Bucket="streamproc-broker")
            except Exception:
                return False
            return True

        wait_for(bucket, timeout=20, what="moto's S3 server")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def durable_broker(tmp_path: Path, s3_endpoint: str) -> Iterator[EmbeddedBroker]:
    """tansu on S3 storage: stopping and starting it again keeps topics, records and offsets."""
    instance = EmbeddedBroker(
        log=tmp_path / "tansu.log",
        storage="s3://streamproc-broker/",
        env={
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
        },
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
