"""Committing offsets by hand, after the work a record caused is durable; lag per fetch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from streamproc.clients import metrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

log = logging.getLogger("streamproc.kafka")


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
