"""Kafka plumbing for the aiokafka-based stages; the only importer of aiokafka in streamproc.

The Faust stage talks to Kafka through Faust; everything else comes here, so connection options
(TLS and SASL included, through :func:`connection_options`) are set in one place. Offsets are
always committed by hand, after the work a record caused is durable: at-least-once end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streamproc import metrics
from streamproc.settings import KafkaSecurity, Settings

log = logging.getLogger("streamproc.kafka")

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


class _ConnectErrors(logging.Filter):
    """Remembers why aiokafka last failed to connect, and can keep it off the terminal.

    Its exceptions only say "Unable to bootstrap"; the cause (credentials refused, an untrusted
    certificate, connection refused) is only in the line it logs. ``explain`` needs the cause
    to tell a person what to fix; one-shot commands that explain it hide the raw line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last = ""
        self.hide = False

    def filter(self, record: logging.LogRecord) -> bool:
        """Note a connect failure's cause; pass the record unless hidden."""
        message = record.getMessage()
        if message.startswith("Unable connect"):
            self.last = message[:300]
            return not self.hide
        return True


connect_errors = _ConnectErrors()
logging.getLogger("aiokafka").addFilter(connect_errors)


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
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )


@contextlib.asynccontextmanager
async def started(*clients: AIOKafkaProducer | AIOKafkaConsumer) -> AsyncIterator[None]:
    """Start clients for a block; stop every one after, also those whose start failed.

    A start that fails (the broker went away meanwhile) leaves connections and tasks behind
    unless the client is stopped all the same.
    """
    try:
        for client in clients:
            await client.start()
        yield
    finally:
        for client in reversed(clients):
            try:
                await client.stop()
            except Exception as exc:
                log.warning("stopping a Kafka client: %s", describe(exc))


async def read_topic(
    settings: Settings, topic: str, *, idle_ms: int = 500, limit: int = 100_000
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning until it goes quiet, joining no group.

    For reports (the lab's story): nothing is committed and no group is created. Reads until
    a fetch stays empty for ``idle_ms`` rather than to an end offset, which brokers with a
    wrong ListOffsets(LATEST) (tansu) would misreport.
    """
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    async with started(consumer):
        await consumer.topics()  # fills the metadata that partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[ConsumerRecord] = []
        while len(found) < limit:
            batch = await consumer.getmany(timeout_ms=idle_ms)
            if not batch:
                break
            for records in batch.values():
                found.extend(records)
        return found[:limit]


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


async def wait_for_broker(
    settings: Settings, stop: asyncio.Event, *, report_every_s: float = 5.0
) -> bool:
    """Wait until the brokers answer, or ``stop`` is set; True when they answered.

    A stage may start before Kafka does (a rollout, a broker restart, a typo in the address):
    it retries with backoff instead of failing, says so in one line every ``report_every_s``
    and in ``streamproc_kafka_up``, and a stop request ends the wait at once.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_report = started
    delay = 0.2
    while not stop.is_set():
        probe = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=5000)
        try:
            await _until_stopped(probe.start(), stop, timeout_s=10.0)
        except (KafkaError, OSError, TimeoutError) as exc:
            metrics.kafka_up.set(0)
            if loop.time() >= next_report:
                log.warning(
                    "Kafka not reachable at %s for %.0fs (%s); retrying. Check "
                    "--bootstrap-servers / STREAMPROC_BOOTSTRAP_SERVERS and that the brokers run",
                    settings.bootstrap_servers,
                    loop.time() - started,
                    describe(exc),
                )
                next_report = loop.time() + report_every_s
        else:
            metrics.kafka_up.set(1)
            return True
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 2.0)
    return False


async def _until_stopped(work: Awaitable[Any], stop: asyncio.Event, *, timeout_s: float) -> Any:
    """Await ``work``, giving up when ``stop`` is set (TimeoutError) or after ``timeout_s``."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise TimeoutError("stopped" if stop.is_set() else f"no answer within {timeout_s:g}s")
    return task.result()


def explain(exc: KafkaError) -> str:
    """One line for a person: what failed talking to Kafka and what to do about it."""
    name = type(exc).__name__
    what = describe(exc)
    cause = connect_errors.last
    if isinstance(exc, KafkaConnectionError) and cause:
        if "Authentication" in cause or "Sasl" in cause:
            name, what = "SaslAuthenticationFailed", cause
        elif "CERTIFICATE_VERIFY_FAILED" in cause or "SSL" in cause:
            return (
                f"TLS with Kafka failed ({cause}); check --kafka-ssl-cafile and that the "
                "brokers' certificate names the host in --bootstrap-servers"
            )
        else:
            what = cause
    if "Authentication" in name or "Sasl" in name:
        return (
            f"Kafka refused the credentials ({what}); check --kafka-sasl-username, the "
            "password file and --kafka-sasl-mechanism"
        )
    if "Authorization" in name:
        return f"Kafka refused access ({what}); grant this principal the ACLs in the README"
    if "UnknownTopic" in name:
        return f"a topic is missing ({what}); create it, or let streamproc create it"
    if isinstance(exc, KafkaConnectionError) or "Connection" in name or "NodeNotReady" in name:
        return (
            f"cannot reach Kafka ({what}); check --bootstrap-servers / "
            "STREAMPROC_BOOTSTRAP_SERVERS and that the brokers run"
        )
    if "Timeout" in name:
        return f"Kafka did not answer in time ({what}); check the brokers and the address"
    return f"Kafka: {what}"


def describe(exc: BaseException) -> str:
    """A Kafka client error as one short phrase (aiokafka repeats the class name in str())."""
    text = str(exc)
    name = type(exc).__name__
    if text.startswith(f"{name}: "):
        text = text[len(name) + 2 :]
    return f"{name}: {text}" if text else name


async def watch_broker(settings: Settings, stop: asyncio.Event, interval_s: float = 2.0) -> None:
    """Probe the brokers until ``stop``; report an outage once, in the log and in metrics.

    The stages' clients reconnect on their own (aiokafka retries forever); what an operator
    lacks during an outage is one clear signal, so this says when Kafka went away, when it came
    back and how long it was gone (``streamproc_kafka_up``, ``..._outages_total``,
    ``..._outage_duration_seconds``).
    """
    loop = asyncio.get_running_loop()
    down_since: float | None = None
    admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=5000)
    started = False
    metrics.kafka_up.set(1)
    try:
        while not stop.is_set():
            try:
                if not started:
                    await admin.start()
                    started = True
                # one small topic every stage may describe, not the whole cluster's metadata
                probe = admin.describe_topics([settings.topics.dead_letters])
                await asyncio.wait_for(probe, timeout=interval_s * 2)
            except (KafkaError, OSError, TimeoutError) as exc:
                if down_since is None:
                    down_since = loop.time()
                    metrics.kafka_up.set(0)
                    metrics.kafka_outages.inc()
                    log.warning("Kafka unreachable at %s: %s", settings.bootstrap_servers, exc)
            else:
                if down_since is not None:
                    lasted = loop.time() - down_since
                    metrics.kafka_outage_seconds.observe(lasted)
                    metrics.kafka_up.set(1)
                    log.warning("Kafka reachable again after %.1fs", lasted)
                    down_since = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
    finally:
        if started:
            await admin.close()


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


class Committer:
    """Commits a stage's offsets in the background, at most every ``interval_s``, in order.

    The next batch is fetched and worked on while the broker acknowledges a commit: one round
    trip off the path of every record. Offsets of batches that finish meanwhile are merged and
    go with the next commit, so a busy stage sends a few commits a second, not one per batch
    (Faust commits every 0.5 s as well): fewer requests for the broker, and a crash repeats at
    most that much more (at least once). ``before`` runs ahead of each commit (the annotator
    makes its audit records durable there). A failed commit is counted and logged, not raised:
    commits are absolute offsets, so the next one covers it.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        stage: str,
        before: Callable[[], Awaitable[None]] | None = None,
        interval_s: float = 0.5,
    ) -> None:
        self._consumer = consumer
        self._stage = stage
        self._before = before
        self._interval_s = interval_s
        self._pending: dict[TopicPartition, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Have ``offsets`` committed soon (later offsets of a partition replace earlier ones)."""
        self._pending.update(offsets)
        self._wake.set()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            # not a Kafka error (those are handled in _commit_pending): say so, keep committing
            log.error(
                "%s: committer stopped: %r; restarting it", self._stage, self._task.exception()
            )
            self._task = None
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop committing in the background; commit what is still pending, once.

        Bounded: with the broker gone, a stopping stage leaves the offsets uncommitted (a
        restart repeats those batches) rather than hang.
        """
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._commit_pending(), timeout_s)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._commit_pending()
            await asyncio.sleep(self._interval_s)

    async def _commit_pending(self) -> None:
        if not self._pending:
            return
        offsets, self._pending = self._pending, {}
        try:
            if self._before is not None:
                await self._before()
            await self._consumer.commit(offsets)
        except asyncio.CancelledError:
            self._pending = offsets | self._pending  # stopping: ``close`` commits them
            raise
        except KafkaError as exc:
            metrics.stage_errors.labels(stage=self._stage, error=type(exc).__name__).inc()
            log.warning(
                "%s: committing offsets failed (%s); the next commit covers them", self._stage, exc
            )
