"""Dead letters: refused records and undecodable batches, with the headers that say why.

Every stage's dead letters carry the same headers, built here; reasons are
:data:`streamproc.reasons.DeadLetter`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamproc.clients import metrics

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiokafka import AIOKafkaProducer, ConsumerRecord

    from streamproc import reasons


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
