"""The doctor's read-only survey of the brokers: topics, recent records, groups' lag.

Joins no group and writes nothing. :func:`end_offsets` is shared with :mod:`.reading`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streamproc.clients.kafka.connecting import connection_options

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from streamproc.settings import Settings


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
        ends = await end_offsets(reader, partitions)
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


async def end_offsets(
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
