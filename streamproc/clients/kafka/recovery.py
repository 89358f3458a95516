"""The undecodable-batch policy: skip a batch aiokafka cannot decode, never crash-loop on it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Self

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from streamproc.clients import metrics
from streamproc.clients.kafka.connecting import connection_options
from streamproc.clients.kafka.dead_letters import BadBatch

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

    from streamproc import reasons
    from streamproc.settings import Settings

log = logging.getLogger("streamproc.kafka")


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
