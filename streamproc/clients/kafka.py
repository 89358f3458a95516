"""Kafka plumbing for the aiokafka-based stages; the only importer of aiokafka in streamproc.

The Faust stage talks to Kafka through Faust; everything else comes here, so connection options
(TLS and SASL included, through :func:`connection_options`) are set in one place. Offsets are
always committed by hand, after the work a record caused is durable: at-least-once end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    UnsupportedCodecError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from streamproc import reasons, stopping
from streamproc.clients import metrics
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
    "read_range",
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


async def publish(
    settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    """Publish (key, value) records to one topic and wait until the brokers have every one.

    For the commands a person runs (``send``, ``release --forget``); returns how many.
    """
    client = producer(settings)
    futures = []
    try:
        await client.start()
        futures = [await client.send(topic, key=key, value=value) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await client.stop()
    return len(futures)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition a keyed record goes to, as the producers' default partitioner puts it.

    aiokafka's (and so Faust's) default: murmur2 as in the Java client.
    """
    return int(DefaultPartitioner()(key, list(range(partitions)), []))


class CountingAssignor:
    """Round robin, and in each member's assignment the partition counts it was made from.

    A member that reads the topic's partition count itself, after the group assigned, can see
    another count than the assignment covers: partitions were added (or the topic re-created)
    in between, or the broker handed back an older assignment (tansu does after a topic's
    re-creation: "[0] of 4"). Workloads whose key hashes to a partition nobody holds would
    then have no owner, and their pods would never be expired. Every member hashing over the
    count the leader assigned from, in which every partition has a holder, leaves no workload
    without an owner; the group rebalances once the leader's metadata shows the new count
    (``--metadata-max-age``), and ownership moves with it.

    When the topic had no partitions at all (deleted under a running group), the first member
    is the fallback owner of every workload: expiry falls back to one owner, never to nobody.
    An aiokafka partition assignor (``name``, ``metadata``, ``assign``, ``on_assignment``,
    aiokafka 0.14 ``coordinator/assignors/abstract.py``), used by one consumer, so its state
    is that consumer's.

    It keeps round robin's protocol name, metadata and assignment, and only adds user data,
    which round robin ignores: members of an older version join the same group (a second
    protocol name would need every member to offer it, and makes tansu's first join twice as
    slow); where one of them leads, assignments carry no counts and members use their own.
    """

    name = RoundRobinPartitionAssignor.name
    version = RoundRobinPartitionAssignor.version

    def __init__(self) -> None:
        #: topic -> partition count of the last assignment; None: not known (plain roundrobin)
        self.counted: dict[str, int] | None = None
        #: whether this member is the fallback owner (the topic had no partitions)
        self.fallback = False

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """What this member tells the group: its topics, as round robin does."""
        return RoundRobinPartitionAssignor.metadata(topics)

    def assign(
        self, cluster: Any, members: dict[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """Round robin's assignment, with the counts it was made from (the leader runs it)."""
        assigned = RoundRobinPartitionAssignor.assign(cluster, members)
        topics = sorted({t for member in members.values() for t in member.subscription})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        first = min(members, default="")
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version,
                assignment.assignment,
                json.dumps(
                    {"partitions": counts, "fallback": member == first and 0 in counts.values()}
                ).encode(),
            )
            for member, assignment in assigned.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Remember the counts this member's assignment was made from (before the listener)."""
        self.counted, self.fallback = None, False
        try:
            stamp = json.loads(assignment.user_data or b"null")
        except ValueError:
            return
        if not isinstance(stamp, dict) or not isinstance(stamp.get("partitions"), dict):
            return
        counts = stamp["partitions"]
        if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values()):
            self.counted = {str(t): n for t, n in counts.items()}
            self.fallback = stamp.get("fallback") is True


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells ``on_change`` which partitions of ``topic`` this member holds, and of how many.

    Revoked partitions are given up at once, before the group hands them to another member,
    so two members never both act as a partition's owner. The count is the one the group's
    assignment was made from (:class:`CountingAssignor`), else the member's own metadata.
    The fallback owner of a topic without partitions is told it holds partition 0 of 1.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        on_change: Callable[[set[int], int], None],
        assignor: CountingAssignor,
    ) -> None:
        self._consumer, self._topic, self._on_change = consumer, topic, on_change
        self._assignor = assignor
        self._held: set[int] = set()
        self._total = 0

    def _count(self) -> int:
        counted = self._assignor.counted
        if counted is not None and self._topic in counted:
            return counted[self._topic]
        return len(self._consumer.partitions_for_topic(self._topic) or ())

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._held -= {tp.partition for tp in revoked if tp.topic == self._topic}
        if self._assignor.fallback:
            self._held = set()  # the next assignment names the fallback owner again
        # the next assignment brings its own counts, unless an older member made it
        self._assignor.counted, self._assignor.fallback = None, False
        self._on_change(set(self._held), self._total)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._held = {tp.partition for tp in assigned if tp.topic == self._topic}
        self._total = self._count()
        if self._total == 0 and self._assignor.fallback:
            self._held, self._total = {0}, 1
            log.warning(
                "topic %s has no partitions: this member expires every workload's pods "
                "until the group is assigned partitions again",
                self._topic,
            )
        self._on_change(set(self._held), self._total)


def consumer(
    settings: Settings,
    topics: Iterable[str],
    group: str,
    *,
    on_assignment: Callable[[set[int], int], None] | None = None,
) -> AIOKafkaConsumer:
    """A group consumer with manual commits, starting from the earliest offset for new groups.

    ``on_assignment`` hears the partitions of the first topic this member holds after each
    rebalance (and the topic's partition count).
    """
    topics = list(topics)
    session_ms = int(settings.session_timeout_s * 1000)
    assignor = CountingAssignor()
    created = AIOKafkaConsumer(
        *([] if on_assignment else topics),
        **connection_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(500, session_ms // 5),
        rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
        # Bounded long-poll: Apache Kafka answers as soon as data arrives anyway; brokers that
        # do not wake a parked fetch (tansu) would otherwise add up to the full wait per hop.
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        # how soon the group leader sees a changed partition count, and has the group rebalance
        metadata_max_age_ms=int(settings.metadata_max_age_s * 1000),
        partition_assignment_strategy=(assignor,),
    )
    if on_assignment is not None:
        listener = _Assignment(created, topics[0], on_assignment, assignor)
        created.subscribe(topics, listener=listener)
    return created


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


class UnknownTopic(UnknownTopicOrPartitionError):  # type: ignore[misc]
    """A topic to read that the brokers do not have."""


async def read_range(
    settings: Settings,
    topic: str,
    *,
    since_ms: int,
    until_ms: int,
    max_records: int = 4096,
) -> AsyncIterator[tuple[list[ConsumerRecord], list[BadBatch]]]:
    """The records of ``topic`` appended in ``[since_ms, until_ms)``, batch by batch.

    Joins no group and commits nothing (``streamproc simulate``): partitions are assigned by
    hand, each starts at the first offset at or after ``since_ms`` (ListOffsets by time) and
    ends at its end offset as found at the start, so records appended meanwhile are not read.
    Undecodable batches come back as :class:`BadBatch` rather than stopping the read.
    """
    reader = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=8 << 20,
    )
    async with started(reader):
        await reader.topics()  # fills the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        if not partitions:
            raise UnknownTopic(f"topic {topic!r} does not exist")
        ends = await _end_offsets(reader, partitions)
        starts = await reader.offsets_for_times(dict.fromkeys(partitions, since_ms))
        left = {
            tp: ends[tp] for tp in partitions if starts.get(tp) and starts[tp].offset < ends[tp]
        }
        reader.assign(list(left))
        for tp in left:
            reader.seek(tp, starts[tp].offset)
        wrapped = Reader(reader, settings, "simulate")
        while left:
            batch, bad = await wrapped.getmany(timeout_ms=1000, max_records=max_records)
            records = []
            for tp, found in batch.items():
                end = left.get(tp)
                if end is None:
                    continue
                taken = [r for r in found if r.offset < end and r.timestamp < until_ms]
                records.extend(taken)
                if len(taken) < len(found) or found[-1].offset + 1 >= end:
                    del left[tp]  # past the end offset or past ``until``
                    reader.pause(tp)
            for skipped in bad:
                tp = TopicPartition(skipped.topic, skipped.partition)
                if tp in left and skipped.next_offset >= left[tp]:
                    del left[tp]
                    reader.pause(tp)
            if records or bad:
                yield records, bad


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


async def partition_counts(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    """How many partitions each existing topic of ``names`` has (missing ones are left out)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    return {
        str(t["topic"]): len(t["partitions"])
        for t in described
        if not t.get("error_code") and t.get("partitions")
    }


async def wait_for_broker(
    settings: Settings, stop: asyncio.Event, *, report_every_s: float = 5.0
) -> bool:
    """Wait until the brokers answer, or ``stop`` is set; True when they answered.

    A stage may start before Kafka does (a rollout, a broker restart, a typo in the address):
    it retries with backoff instead of failing, says so in one line every ``report_every_s``
    and in ``streamproc_kafka_up``, and a stop request ends the wait at once.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    next_report = began
    delay = 0.2
    while not stop.is_set():
        probe = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=5000)
        try:
            await _until_stopped(probe.start(), stop, timeout_s=10.0)
        except (KafkaError, OSError, TimeoutError) as exc:
            metrics.kafka_up.set(0)
            if isinstance(exc, KafkaError) and refused(exc):
                raise  # credentials or a certificate: waiting will not change the answer
            if loop.time() >= next_report:
                log.warning(
                    "Kafka not reachable at %s for %.0fs (%s); retrying. Check "
                    "--bootstrap-servers / STREAMPROC_BOOTSTRAP_SERVERS and that the brokers run",
                    settings.bootstrap_servers,
                    loop.time() - began,
                    describe(exc),
                )
                next_report = loop.time() + report_every_s
        else:
            metrics.kafka_up.set(1)
            return True
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
        await stopping.pause(stop, delay)
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


def refused(exc: KafkaError) -> bool:
    """Whether Kafka refused who we are (credentials, certificate), rather than being away."""
    cause = f"{type(exc).__name__} {connect_errors.last}"
    return any(word in cause for word in ("Authentication", "Sasl", "CERTIFICATE_VERIFY_FAILED"))


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
        return f"Kafka refused access ({what}); grant this principal the ACLs in docs/deploying.md"
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
            await stopping.pause(stop, interval_s)
    finally:
        if started:
            await admin.close()


def report_batch(
    stage: str, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]
) -> None:
    """After each fetch: the stage's lag, and how many input partitions this replica holds."""
    metrics.consumer_lag.labels(stage=stage).set(batch_lag(consumer, batch))
    metrics.assigned_partitions.labels(stage=stage).set(len(consumer.assignment()))


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


def dead_letter_headers(
    stage: str, reason: reasons.DeadLetter, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Why a record was refused and where it came from, as Kafka headers on the original bytes.

    Every stage's dead letters carry the same headers, built here.
    """
    return [
        ("streamproc.stage", stage.encode()),
        ("streamproc.reason", reason.encode()),
        ("streamproc.detail", detail.encode("utf-8", "replace")[:1000]),
        ("streamproc.source.topic", topic.encode()),
        ("streamproc.source.partition", str(partition).encode()),
        ("streamproc.source.offset", str(offset).encode()),
    ]


@dataclass(frozen=True, slots=True)
class BadBatch:
    """A record batch that cannot be decoded: skipped, reported and dead-lettered."""

    topic: str
    partition: int
    #: the first offset of the batch a consumer would have read, and the one after it
    offset: int
    next_offset: int
    #: ``unsupported-codec``, ``corrupt-batch`` (CRC mismatch) or ``undecodable-batch``
    reason: reasons.DeadLetter
    detail: str
    #: the batch as the broker holds it, for whoever investigates (empty when too large)
    raw: bytes

    def headers(self, stage: str) -> list[tuple[str, bytes]]:
        """Dead-letter headers, with where the skipped range ends."""
        return [
            *dead_letter_headers(
                stage, self.reason, self.detail, self.topic, self.partition, self.offset
            ),
            ("streamproc.source.next-offset", str(self.next_offset).encode()),
        ]


#: what a batch that cannot be decoded raises from getmany: aiokafka's own errors, and the
#: codec libraries' (zlib, gzip, cramjam), which are not KafkaErrors.
_DECODE_ERRORS = (UnsupportedCodecError, CorruptRecordException)
_MAX_DEAD_LETTER_BYTES = 1 << 20


def _reason(exc: BaseException) -> reasons.DeadLetter:
    if isinstance(exc, UnsupportedCodecError):
        return "unsupported-codec"
    if isinstance(exc, CorruptRecordException):
        return "corrupt-batch"
    return "undecodable-batch"


async def dead_letter_batches(
    producer: AIOKafkaProducer, topic: str, bad: Iterable[BadBatch], stage: str
) -> None:
    """Publish skipped batches to the dead-letter topic and wait until the broker has them."""
    futures = []
    for batch in bad:
        metrics.dead_letters.labels(stage=stage, reason=batch.reason).inc()
        futures.append(await producer.send(topic, value=batch.raw, headers=batch.headers(stage)))
    await asyncio.gather(*futures)


async def dead_letter_record(
    producer: AIOKafkaProducer,
    topic: str,
    record: ConsumerRecord[bytes, bytes],
    stage: str,
    reason: reasons.DeadLetter,
    detail: str,
) -> None:
    """Publish one refused record, as it was, with the reason headers; wait for the broker."""
    metrics.dead_letters.labels(stage=stage, reason=reason).inc()
    await producer.send_and_wait(
        topic,
        value=record.value,
        key=record.key,
        headers=dead_letter_headers(
            stage, reason, detail, record.topic, record.partition, record.offset
        ),
    )


class Reader:
    """A stage's ``getmany``: a record batch that cannot be decoded is skipped, not a loop.

    aiokafka decodes a fetched batch lazily while ``getmany`` hands out records, and raises on
    one it cannot decompress (a corrupt or unknown codec payload). It then fails on every call
    at the same position, and the records it had already taken from the same fetch, from that
    partition and others, are lost from that call. A stage that crashed on it would crash
    again on restart: every observation would stop.

    Policy: on such an error every assigned partition goes back to the offset after the last
    record this reader returned (or the committed one), so nothing read before is lost. The
    failing batch is then found by reading the partitions' raw batches (headers need no
    decoding), the good records before it are returned, and the consumer moves to the offset
    after it. The caller dead-letters each :class:`BadBatch` (topic, partition, offsets, the
    raw bytes) and commits past it; an ERROR is logged once per partition and
    ``streamproc_batches_skipped_total{stage,reason}`` counts every one.
    """

    def __init__(self, consumer: AIOKafkaConsumer, settings: Settings, stage: str) -> None:
        self.consumer = consumer
        self._settings = settings
        self._stage = stage
        self._next: dict[TopicPartition, int] = {}
        self._reported: set[TopicPartition] = set()

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> tuple[dict[TopicPartition, list[ConsumerRecord]], list[BadBatch]]:
        """Records by partition, and the undecodable batches skipped to get past them."""
        try:
            batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except _DECODE_ERRORS as exc:
            return await self._recover(exc)
        except KafkaError:
            raise
        except Exception as exc:
            # the codec libraries' own errors (zlib.error, gzip's BadGzipFile, cramjam's) share
            # no base class; recovery re-raises unless the raw batches show one to blame
            return await self._recover(exc)
        self.handled(batch)
        return batch, []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (a batch the stage could not finish)."""
        self.consumer.seek(tp, offset)
        self._next[tp] = offset

    def handled(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Remember the next offset of each partition a batch came from."""
        for tp, records in batch.items():
            if records:
                self._next[tp] = records[-1].offset + 1

    async def _recover(
        self, exc: BaseException
    ) -> tuple[dict[TopicPartition, list[ConsumerRecord]], list[BadBatch]]:
        starts = await self._rewind()
        found: dict[TopicPartition, list[ConsumerRecord]] = {}
        bad: list[BadBatch] = []
        async with _RawFetcher(self._settings) as raw:
            for tp, start in starts.items():
                located = await raw.first_bad(tp, start)
                if located is None:
                    continue
                batch, good = located
                if good:
                    found[tp] = await self._take(tp, good)
                self.consumer.seek(tp, batch.next_offset)
                self._next[tp] = batch.next_offset
                bad.append(batch)
                metrics.batches_skipped.labels(stage=self._stage, reason=batch.reason).inc()
                level = logging.WARNING if tp in self._reported else logging.ERROR
                self._reported.add(tp)
                log.log(
                    level,
                    "%s: skipped an undecodable record batch in %s[%d], offsets %d-%d (%s: %s); "
                    "dead-lettered with its raw bytes",
                    self._stage,
                    tp.topic,
                    tp.partition,
                    batch.offset,
                    batch.next_offset - 1,
                    batch.reason,
                    batch.detail,
                )
        if not bad:
            raise exc  # not a batch we can point at: the caller's error handling decides
        return found, bad

    async def _rewind(self) -> dict[TopicPartition, int]:
        """Every assigned partition back to the offset after the last record handed out."""
        starts: dict[TopicPartition, int] = {}
        for tp in self.consumer.assignment():
            start = self._next.get(tp)
            if start is None:
                start = await self.consumer.committed(tp)
            if start is None:  # a new group starts at the earliest offset
                start = (await self.consumer.beginning_offsets([tp]))[tp]
            self.consumer.seek(tp, start)
            starts[tp] = start
        return starts

    async def _take(self, tp: TopicPartition, count: int) -> list[ConsumerRecord]:
        """The ``count`` good records before a bad batch (aiokafka stops before decoding it)."""
        taken: list[ConsumerRecord] = []
        for _ in range(count + 10):  # bounded: each call returns at least one record
            got = await self.consumer.getmany(tp, timeout_ms=1000, max_records=count - len(taken))
            taken += got.get(tp, [])
            if len(taken) >= count:
                break
        return taken


def _decodable_count(batch: Any, start: int) -> int:
    """Records a consumer would get from ``batch`` (from ``start``); raises if it cannot."""
    if not batch.validate_crc():
        raise CorruptRecordException("CRC mismatch")
    return 0 if batch.is_control_batch else sum(r.offset >= start for r in batch)


class _RawFetcher:
    """Reads raw record batches with a client of its own, for :class:`Reader`'s recovery."""

    def __init__(self, settings: Settings) -> None:
        self._client = AIOKafkaClient(**connection_options(settings))

    async def __aenter__(self) -> Self:
        await self._client.bootstrap()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.close()

    async def _fetch(self, tp: TopicPartition, offset: int) -> bytes:
        await self._client.force_metadata_update()
        node = self._client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            return b""
        request = FetchRequest(
            # Apache Kafka answers at once when data is there; tansu answers an empty
            # response to a fetch that may not wait at all
            max_wait_time=500,
            min_bytes=1,
            max_bytes=8 << 20,
            isolation_level=0,
            topics=[(tp.topic, [(tp.partition, offset, 8 << 20)])],
        )
        response: Any = await self._client.send(node, request)
        for _topic, partitions in response.topics:
            for _partition, error_code, _high, *data in partitions:
                return bytes(data[-1] or b"") if error_code == 0 else b""
        return b""

    async def first_bad(self, tp: TopicPartition, start: int) -> tuple[BadBatch, int] | None:
        """The first batch from ``start`` that cannot be decoded, with the good records before.

        None when every batch decodes.
        """
        offset, good = start, 0
        for _ in range(64):  # bounded: a bad batch is within the fetch that failed
            data = await self._fetch(tp, offset)
            records = MemoryRecords(data) if data else None
            position, moved = 0, False
            while records is not None and records.has_next():
                batch: Any = records.next_batch()
                if batch is None or not hasattr(batch, "next_offset"):
                    break  # a partial batch at the end, or a pre-v2 message set
                # a batch is its 12-byte offset+length prefix and ``length`` bytes more
                size = 12 + int.from_bytes(data[position + 8 : position + 12], "big")
                raw, position = data[position : position + size], position + size
                try:
                    count = _decodable_count(batch, start)
                except Exception as exc:  # the codec libraries raise many kinds
                    return BadBatch(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=max(batch.base_offset, start),
                        next_offset=batch.next_offset,
                        reason=_reason(exc),
                        detail=f"{type(exc).__name__}: {exc}"[:300],
                        raw=raw if len(raw) <= _MAX_DEAD_LETTER_BYTES else b"",
                    ), good
                good += count
                offset, moved = batch.next_offset, True
            if not moved:
                return None
        return None
        return None


@dataclass(frozen=True, slots=True)
class TopicSurvey:
    """One topic as ``streamproc doctor`` sees it."""

    name: str
    #: partition -> records written since the survey's ``since`` time
    recent: dict[int, int]
    #: partition -> end offset (the next offset to be written)
    ends: dict[int, int]

    @property
    def partitions(self) -> int:
        """How many partitions it has."""
        return len(self.ends)


@dataclass(frozen=True, slots=True)
class Survey:
    """What the brokers hold for streamproc: its topics, and how far behind its groups are."""

    #: the topics that exist, by name (a missing one is absent)
    topics: dict[str, TopicSurvey]
    #: group -> records not yet consumed over its topics; None: the group never committed
    lag: dict[str, int | None]
    #: each topic ``survey(readers=...)`` picked -> whether its reading group ever committed
    #: offsets on it
    read: dict[str, bool] = field(default_factory=dict)
    #: each topic ``survey(sample=...)`` named -> the values of its latest records
    latest: dict[str, list[bytes]] = field(default_factory=dict)


async def survey(
    settings: Settings,
    topics: Iterable[str],
    groups: dict[str, list[str]],
    *,
    since_ms: int,
    readers: Callable[[str], str | None] | None = None,
    sample: Iterable[str] = (),
) -> Survey:
    """Read, never write: which topics exist, recent records per partition, groups' lag.

    Topics are listed (a Metadata request for all topics, which creates none even where
    auto-creation is on), offsets read without joining any group, and committed offsets
    fetched for explicit partitions. ``readers`` picks more of the existing topics by name,
    each with the group that should read it (``Survey.read``: whether it ever did). Of each
    topic in ``sample``, the latest ``SAMPLE_PER_PARTITION`` records of every partition are
    read (``Survey.latest``). Raises KafkaError when the brokers cannot be reached.
    """
    admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=5000)
    reader = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    try:
        await asyncio.wait_for(admin.start(), timeout=15)
        existing = set(await admin.list_topics())
        picked = {t: g for t in sorted(existing) if readers and (g := readers(t))}
        wanted = [t for t in dict.fromkeys([*topics, *picked]) if t in existing]
        await asyncio.wait_for(reader.start(), timeout=15)
        await reader.topics()  # fills the metadata partitions_for_topic reads
        partitions = [
            TopicPartition(topic, p)
            for topic in wanted
            for p in sorted(reader.partitions_for_topic(topic) or ())
        ]
        ends = await _end_offsets(reader, partitions)
        starts = (
            await reader.offsets_for_times(dict.fromkeys(partitions, since_ms))
            if partitions
            else {}
        )
        found = {}
        for topic in wanted:
            own = [tp for tp in partitions if tp.topic == topic]
            recent = {}
            for tp in own:
                start = starts.get(tp)
                recent[tp.partition] = max(0, ends[tp] - start.offset) if start else 0
            found[topic] = TopicSurvey(topic, recent, {tp.partition: ends[tp] for tp in own})
        lag: dict[str, int | None] = {}
        for group, read in groups.items():
            own = [tp for tp in partitions if tp.topic in read]
            committed = (
                await admin.list_consumer_group_offsets(group, partitions=own) if own else {}
            )
            offsets = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
            lag[group] = sum(max(0, ends[tp] - offsets[tp]) for tp in offsets) if offsets else None
        reading: dict[str, bool] = {}
        for topic, group in picked.items():
            own = [tp for tp in partitions if tp.topic == topic]
            committed = (
                await admin.list_consumer_group_offsets(group, partitions=own) if own else {}
            )
            reading[topic] = any(meta.offset >= 0 for meta in committed.values())
        sampled = [tp for tp in partitions if tp.topic in set(sample)]
        return Survey(found, lag, reading, await _latest(reader, sampled, ends))
    finally:
        for client in (reader, admin):
            with contextlib.suppress(Exception):
                await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())


#: records per partition ``survey(sample=...)`` reads from the end
SAMPLE_PER_PARTITION = 50


async def _latest(
    reader: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[TopicPartition, int]
) -> dict[str, list[bytes]]:
    """The values of the last records before ``ends`` of each partition (bounded rounds).

    A sample, not a guarantee: what a batch that cannot be decoded hides is left out.
    """
    latest: dict[str, list[bytes]] = {tp.topic: [] for tp in partitions}
    if not partitions:
        return latest
    reader.pause(*(tp for tp in reader.assignment() if tp not in partitions))
    for tp in partitions:
        reader.seek(tp, max(0, ends[tp] - SAMPLE_PER_PARTITION))
    for _ in range(5):
        try:
            batch = await reader.getmany(*partitions, timeout_ms=500)
        except KafkaError:
            raise
        except Exception:  # a corrupt batch: the codec libraries raise many kinds
            return latest
        for tp, records in batch.items():
            latest[tp.topic] += [r.value for r in records if r.value and r.offset < ends[tp]]
        positions = [await reader.position(tp) for tp in partitions]
        if all(at >= ends[tp] for at, tp in zip(positions, partitions, strict=True)):
            break
    return latest


async def _end_offsets(
    reader: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """End offsets, also where ListOffsets(LATEST) answers short (tansu counts batches).

    A fetch's high watermark is right on every broker, so one bounded fetch round from the
    listed end corrects it: on Apache Kafka that fetch is empty; where the listed end was
    short it returns records, which are only looked at, never committed.
    """
    if not partitions:
        return {}
    ends = dict(await reader.end_offsets(partitions))
    reader.assign(partitions)
    for tp in partitions:
        reader.seek(tp, ends[tp])
    for _ in range(3):
        await reader.getmany(timeout_ms=500, max_records=1)
        if all(reader.highwater(tp) is not None for tp in partitions):
            break
    for tp in partitions:
        ends[tp] = max(ends[tp], reader.highwater(tp) or 0)
    return ends
