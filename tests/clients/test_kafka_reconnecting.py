"""Kafka gone at the wrong moment: clients stopped whole and started anew, never fatal."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiokafka
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import __version__ as kafka_version
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.errors import (
    KafkaConnectionError,
    NodeNotReadyError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from streamproc.clients import kafka
from streamproc.clients.kafka import upstream_fixes
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.settings import Settings
from tests.conftest import async_wait_for

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def aiokafka_tasks() -> list[asyncio.Task[object]]:
    """Tasks of aiokafka's still pending (a client not stopped whole leaves them behind)."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done()
        and "aiokafka" in getattr(t.get_coro(), "cr_code", aiokafka_tasks.__code__).co_filename
    ]


async def test_a_consumer_whose_fetch_backs_off_is_stopped_with_every_other_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka's consumer raised CancelledError from stop() while a failed fetch backed off
    (aio-libs/aiokafka#647): with the fix applied it stops whole, the producer after it too, and
    no aiokafka task is left pending."""
    caplog.set_level(logging.ERROR, logger="aiokafka.consumer.fetcher")
    broker = EmbeddedBroker(log=tmp_path / "tansu.log")
    broker.start()
    try:
        producer = kafka.producer(Settings(bootstrap_servers=broker.bootstrap))
        # no group (no coordinator waiting out the backoff on stop), and a fetch that failed
        # backs off for ten minutes: one fetch per broker is in flight at a time, so once one
        # failed the stop below surely meets its backoff
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, retry_backoff_ms=600_000)
        await producer.start()
        await producer.send_and_wait("t", b"x", partition=0)
        await consumer.start()
        consumer.assign([TopicPartition("t", 0)])
        await consumer.seek_to_beginning()
        for _ in range(300):  # bounded: the record was written before
            if await consumer.getmany(timeout_ms=100):
                break
    finally:
        broker.stop()
    await async_wait_for(
        lambda: any("Failed fetch messages" in r.getMessage() for r in caplog.records),
        what="a failed fetch (its backoff follows)",
    )
    await asyncio.wait_for(kafka.stop_clients([producer, consumer]), timeout=30)
    assert not aiokafka_tasks(), aiokafka_tasks()


def test_the_fix_is_applied_to_the_pinned_aiokafka_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed (pinned) aiokafka has the fixed close; a release not known to need it keeps
    its own."""
    assert kafka_version.startswith(upstream_fixes.FIXED_RELEASES)
    assert Fetcher.close is upstream_fixes._close
    own = object()
    monkeypatch.setattr(Fetcher, "close", own)
    monkeypatch.setattr(aiokafka, "__version__", "0.15.0")
    assert upstream_fixes.apply() is False
    assert Fetcher.close is own


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


def test_only_an_absent_broker_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection errors are waited out; a refusal (ACLs, credentials) is not."""
    monkeypatch.setattr(kafka.connect_errors, "last", "")  # no refusal logged by another test
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
