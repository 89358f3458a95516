"""Connecting to the brokers: TLS and SASL options in one place, the clients built from them.

Also the group's partition assignor and listener (who owns which workloads), and the
partitioner the producers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import TYPE_CHECKING, Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.partitioner import DefaultPartitioner

from streamproc.clients.kafka.explaining import describe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

    from streamproc.settings import KafkaSecurity, Settings

log = logging.getLogger("streamproc.kafka")


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


#: a client :func:`started` and :func:`stop_clients` start and stop
Client: TypeAlias = AIOKafkaProducer | AIOKafkaConsumer


@contextlib.asynccontextmanager
async def started(*clients: Client) -> AsyncIterator[None]:
    """Start clients for a block; stop every one after, also those whose start failed.

    A start that fails (the broker went away meanwhile) leaves connections and tasks behind
    unless the client is stopped all the same.
    """
    try:
        for client in clients:
            await client.start()
        yield
    finally:
        await stop_clients(clients)


async def stop_clients(clients: Sequence[Client]) -> None:
    """Stop every client at once, whatever the others do.

    At once: a consumer still joining its group, or leaving it with the broker gone, can take
    seconds to stop, and a stop that is given up on then (the process's grace ran out) must not
    leave the producers beside it unstopped. aiokafka cancels its own background tasks and awaits
    them while stopping (its fetcher, fixed by ``upstream_fixes``; the group coordinator's
    heartbeat and commit refresh likewise), so a client's stop may end in a CancelledError of its
    own: logged, the others stopped all the same. A cancellation of this task propagates.
    """

    async def stop(client: Client) -> None:
        try:
            await client.stop()
        except Exception as exc:
            log.warning("stopping a Kafka client: %s", describe(exc))

    ended = await asyncio.gather(*(stop(c) for c in clients), return_exceptions=True)
    if any(isinstance(outcome, asyncio.CancelledError) for outcome in ended):
        log.warning("stopping a Kafka client: it was cancelled from within")
