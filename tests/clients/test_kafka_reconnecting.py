"""Kafka gone at the wrong moment: clients stopped whole and started anew, never fatal."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import (
    KafkaConnectionError,
    NodeNotReadyError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from streamproc.clients import kafka
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.settings import Settings
from tests.conftest import async_wait_for

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def aiokafka_tasks() -> list[asyncio.Task[object]]:
    """Tasks of aiokafka's still pending (a client not stopped whole leaves them behind)."""
    return [t for t in asyncio.all_tasks() if not t.done() and "aiokafka" in repr(t.get_coro())]


async def test_a_consumer_whose_fetch_backs_off_is_stopped_with_every_other_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka's consumer raised CancelledError from stop() while a failed fetch backed off
    (aio-libs/aiokafka#647): with the fix applied it stops whole, the producer after it too, and
    no aiokafka task is left pending."""
    broker = EmbeddedBroker(log=tmp_path / "tansu.log")
    broker.start()
    try:
        producer = kafka.producer(Settings(bootstrap_servers=broker.bootstrap))
        # a long backoff after a failed fetch: the stop below surely meets it
        consumer = AIOKafkaConsumer(
            "t",
            bootstrap_servers=broker.bootstrap,
            group_id="g",
            enable_auto_commit=False,
            retry_backoff_ms=2000,
        )
        await producer.start()
        await producer.send_and_wait("t", b"x")
        await consumer.start()
        for _ in range(600):  # bounded: tansu's first join takes a few seconds
            await consumer.getmany(timeout_ms=100)
            if consumer.assignment():
                break
        assert consumer.assignment(), "the group never assigned a partition"
    finally:
        broker.stop()
    caplog.set_level(logging.ERROR, logger="aiokafka.consumer.fetcher")
    await async_wait_for(
        lambda: any("Failed fetch messages" in r.getMessage() for r in caplog.records),
        what="a failed fetch (its backoff follows)",
    )
    await asyncio.wait_for(kafka.stop_clients([producer, consumer]), timeout=30)
    assert not aiokafka_tasks(), aiokafka_tasks()


async def test_clients_are_started_once_kafka_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka away when a stage starts its clients: one line says so, and the same call starts
    fresh clients once a broker answers at the address."""
    caplog.set_level(logging.WARNING, logger="streamproc.kafka")
    port = free_port("127.0.0.1")
    settings = Settings(bootstrap_servers=f"127.0.0.1:{port}")
    stop = asyncio.Event()
    made: list[kafka.Producer] = []

    def make() -> tuple[kafka.Producer]:
        made.append(kafka.producer(settings))
        return (made[-1],)

    starting = asyncio.create_task(kafka.start_when_reachable(settings, stop, make, "testing"))
    await async_wait_for(
        lambda: any("went away while testing" in r.getMessage() for r in caplog.records),
        what="the line that says Kafka went away",
    )
    assert not starting.done()
    broker = EmbeddedBroker(port=port, log=tmp_path / "tansu.log")
    broker.start()
    try:
        started = await asyncio.wait_for(starting, timeout=60)
        assert started is not None
        (producer,) = started
        await producer.send_and_wait("t", b"x")  # a working client, not one whose start failed
        assert producer is made[-1]
        assert len(made) >= 2  # the first, whose start failed, was not started again
        await kafka.stop_clients(started)
    finally:
        broker.stop()
    assert not aiokafka_tasks(), aiokafka_tasks()


async def test_a_stop_while_kafka_is_away_ends_the_wait_with_nothing_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopping while Kafka is away ends the wait at once: None, and no client left open."""
    caplog.set_level(logging.WARNING, logger="streamproc.kafka")
    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port('127.0.0.1')}")
    stop = asyncio.Event()
    starting = asyncio.create_task(
        kafka.start_when_reachable(settings, stop, lambda: (kafka.producer(settings),), "testing")
    )
    await async_wait_for(
        lambda: any("went away while testing" in r.getMessage() for r in caplog.records),
        what="the line that says Kafka went away",
    )
    stop.set()
    assert await asyncio.wait_for(starting, timeout=10) is None
    assert not aiokafka_tasks(), aiokafka_tasks()


def test_only_an_absent_broker_is_waited_for() -> None:
    """Connection errors are waited out; a refusal (ACLs, credentials) is not."""
    assert kafka.went_away(KafkaConnectionError())
    assert kafka.went_away(NodeNotReadyError())
    assert not kafka.went_away(TopicAuthorizationFailedError())
    assert not kafka.went_away(SaslAuthenticationFailed())


async def test_a_stop_cancels_a_start_that_waits_on_an_address_that_never_answers() -> None:
    """A broker address that accepts and never answers holds a client's start for its request
    timeout (40 s); a stop meanwhile ends the start at once, with nothing left open."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(bootstrap_servers=f"127.0.0.1:{port}")
    stop = asyncio.Event()
    try:
        starting = asyncio.create_task(
            kafka.start_when_reachable(
                settings, stop, lambda: (kafka.producer(settings),), "testing"
            )
        )
        await async_wait_for(lambda: accepted, what="the client's connection")
        stop.set()
        assert await asyncio.wait_for(starting, timeout=10) is None
        assert not aiokafka_tasks(), aiokafka_tasks()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
