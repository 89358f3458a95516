"""Kafka gone at the wrong moment: clients stopped whole and started anew, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

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


@contextlib.asynccontextmanager
async def in_background(
    work: Coroutine[Any, Any, Sequence[kafka.Client] | None], stop: asyncio.Event
) -> AsyncIterator[asyncio.Task[Sequence[kafka.Client] | None]]:
    """``work`` as a task; after the block (a failed assertion too) stopped, and what it started
    stopped, so no test leaves a task or a client behind for the next."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:
            task.cancel()
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        if isinstance(outcome, Sequence):
            await kafka.stop_clients(outcome)


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
    try:
        await async_wait_for(
            lambda: any("Failed fetch messages" in r.getMessage() for r in caplog.records),
            what="a failed fetch (its backoff follows)",
        )
        await asyncio.wait_for(kafka.stop_clients([producer, consumer]), timeout=30)
        assert not aiokafka_tasks(), aiokafka_tasks()
    finally:
        await kafka.stop_clients([producer, consumer])  # a no-op unless something above failed


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

    broker = EmbeddedBroker(port=port, log=tmp_path / "tansu.log")
    async with in_background(
        kafka.start_when_reachable(settings, stop, make, "testing"), stop
    ) as starting:
        await async_wait_for(
            lambda: any("went away while testing" in r.getMessage() for r in caplog.records),
            what="the line that says Kafka went away",
        )
        assert not starting.done()
        broker.start()
        try:
            started = await asyncio.wait_for(asyncio.shield(starting), timeout=60)
            assert started is not None
            (producer,) = started
            await producer.send_and_wait("t", b"x")  # a working client, not a failed one's
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
    async with in_background(
        kafka.start_when_reachable(settings, stop, lambda: (kafka.producer(settings),), "testing"),
        stop,
    ) as starting:
        await async_wait_for(
            lambda: any("went away while testing" in r.getMessage() for r in caplog.records),
            what="the line that says Kafka went away",
        )
        stop.set()
        assert await asyncio.wait_for(asyncio.shield(starting), timeout=10) is None
    assert not aiokafka_tasks(), aiokafka_tasks()


def test_only_an_absent_broker_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection errors and timeouts are waited out; a refusal (ACLs, credentials, a certificate)
    is not, also when aiokafka reports it as a connection error with the cause in its log."""
    monkeypatch.setattr(kafka.connect_errors, "last", "")  # no refusal logged by another test
    assert kafka.went_away(KafkaConnectionError())
    assert kafka.went_away(NodeNotReadyError())
    assert kafka.went_away(TimeoutError())  # aiokafka's admin client, no connection ready
    assert kafka.went_away(ConnectionRefusedError())
    assert not kafka.went_away(TopicAuthorizationFailedError())
    assert not kafka.went_away(SaslAuthenticationFailed())
    assert not kafka.went_away(ssl.SSLCertVerificationError())
    monkeypatch.setattr(
        kafka.connect_errors,
        "last",
        'Unable connect to "b:9093": SaslAuthenticationFailed: Authentication failed',
    )
    assert not kafka.went_away(KafkaConnectionError())


async def test_a_timeout_while_creating_topics_is_waited_out_like_any_absence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka's admin client raises Python's TimeoutError when Kafka went away: the work is
    tried again once Kafka answers, not raised (it became a traceback)."""
    caplog.set_level(logging.WARNING, logger="streamproc.kafka")
    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port('127.0.0.1')}")
    stop = asyncio.Event()
    attempts: list[int] = []

    async def create() -> bool:
        attempts.append(1)
        raise TimeoutError

    waiting = asyncio.create_task(kafka.when_reachable(settings, stop, create, "testing"))
    try:
        await async_wait_for(
            lambda: any("went away while testing" in r.getMessage() for r in caplog.records),
            what="the line that says Kafka went away",
        )
        assert not waiting.done()
    finally:
        stop.set()
    assert await asyncio.wait_for(waiting, timeout=10) is None
    assert attempts == [1]  # Kafka never answered: no second attempt without it


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
    work = kafka.start_when_reachable(settings, stop, lambda: (kafka.producer(settings),), "t")
    try:
        async with in_background(work, stop) as starting:
            await async_wait_for(lambda: accepted, what="the client's connection")
            stop.set()
            assert await asyncio.wait_for(asyncio.shield(starting), timeout=10) is None
        assert not aiokafka_tasks(), aiokafka_tasks()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
