"""Kafka plumbing for the aiokafka-based stages; the only importer of aiokafka in streamproc.

The Faust stage talks to Kafka through Faust; everything else comes here, so connection options
(TLS and SASL included, through :func:`connection_options`) are set in one place. Offsets are
always committed by hand, after the work a record caused is durable: at-least-once end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streamproc.settings import KafkaSecurity, Settings

__all__ = [
    "AIOKafkaConsumer",
    "AIOKafkaProducer",
    "ConsumerRecord",
    "KafkaError",
    "TopicPartition",
    "connection_options",
    "consumer",
    "ensure_topics",
    "producer",
    "ssl_context",
]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic streamproc creates when it is missing."""

    name: str
    partitions: int


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """A verifying TLS context for the brokers, or None when connections are not encrypted."""
    if not security.tls:
        return None
    context = ssl.create_default_context(cafile=str(security.ca_file) if security.ca_file else None)
    context.check_hostname = security.check_hostname
    if security.cert_file is not None and security.key_file is not None:
        context.load_cert_chain(security.cert_file, security.key_file, security.key_password)
    return context


def connection_options(settings: Settings) -> dict[str, Any]:
    """Everything an aiokafka client needs to reach the brokers, security included."""
    security = settings.kafka_security
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": security.protocol,
        "ssl_context": ssl_context(security),
    }
    if security.sasl:
        options |= {
            "sasl_mechanism": security.sasl_mechanism,
            "sasl_plain_username": security.sasl_username,
            "sasl_plain_password": security.sasl_password,
        }
    return options


def producer(settings: Settings, *, linger_ms: int = 5) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas: a detection's trace must not be lost."""
    return AIOKafkaProducer(
        **connection_options(settings),
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=1 << 20,
        max_request_size=2 << 20,
        enable_idempotence=settings.enable_idempotence,
    )


def consumer(settings: Settings, topics: Iterable[str], group: str) -> AIOKafkaConsumer:
    """A group consumer with manual commits, starting from the earliest offset for new groups."""
    session_ms = int(settings.session_timeout_s * 1000)
    return AIOKafkaConsumer(
        *topics,
        **connection_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(500, session_ms // 5),
        rebalance_timeout_ms=max(session_ms, 10_000),
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
        # Bounded long-poll: Apache Kafka answers as soon as data arrives anyway; brokers that
        # do not wake a parked fetch (tansu) would otherwise add up to the full wait per hop.
        fetch_max_wait_ms=50,
    )


async def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> None:
    """Create missing topics one by one (so one that exists cannot abort the others)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        for spec in specs:
            if spec.name in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(spec.name, spec.partitions, 1)])
            existing.add(spec.name)
    finally:
        await admin.close()


async def wait_for_broker(settings: Settings, *, timeout_s: float = 30.0) -> None:
    """Block until the broker answers metadata requests (a stage may start before it)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        probe = AIOKafkaAdminClient(**connection_options(settings))
        try:
            await probe.start()
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
        else:
            await probe.close()
            return


def batch_lag(consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> int:
    """Records still behind the last one fetched, from the high watermarks of the fetch itself.

    The fetch response's high watermark is used rather than a ListOffsets request: cheaper, and
    correct on brokers whose ListOffsets(LATEST) is not. An empty batch means caught up.
    """
    total = 0
    for tp, records in batch.items():
        high = consumer.highwater(tp)
        if high is not None and records:
            total += max(0, high - records[-1].offset - 1)
    return total
