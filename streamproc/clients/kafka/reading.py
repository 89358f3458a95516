"""Reads for reports and ``simulate``: a whole topic, or a time range, joining no group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError

from streamproc.clients.kafka.connecting import connection_options, started
from streamproc.clients.kafka.recovery import Reader
from streamproc.clients.kafka.survey import end_offsets

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streamproc.clients.kafka.dead_letters import BadBatch
    from streamproc.settings import Settings


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
        ends = await end_offsets(reader, partitions)
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
