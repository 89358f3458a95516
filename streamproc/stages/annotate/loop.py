"""Stage 3, annotate: actions in, pod annotations out, offsets committed only after they landed.

The stage reads actions from Kafka, dead-letters what does not decode, hands each batch to the
:class:`~streamproc.applying.Annotator` and commits the batch's offsets only once every action
in it was applied or deliberately skipped: while the API server is down the batch is retried,
not dropped (at-least-once; patches are idempotent).
"""

from __future__ import annotations

import asyncio
import logging

from streamproc import stopping
from streamproc.clients import kafka, kube, metrics
from streamproc.model.actions import Action, ActionError
from streamproc.model.ownership import Ownership
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator

log = logging.getLogger("streamproc.annotate")
STAGE = "annotate"
#: the longest a batch waits between attempts while the API server is away: also the most an
#: action can lag behind the API server's return. One pod list per 8 s is nothing to a server.
_BACKOFF_MAX_S = 8.0


class AnnotateStage:
    """The actions topic's consumer: decode, apply through the annotator, commit."""

    def __init__(
        self, settings: Settings, annotator: Annotator, ownership: Ownership | None = None
    ) -> None:
        self._settings = settings
        self.annotator = annotator
        #: told the partitions this replica holds after each rebalance
        self.ownership = ownership
        self._consumer: kafka.AIOKafkaConsumer | None = None

    @property
    def joined(self) -> bool:
        """Whether the consumer group gave this stage partitions to read (it is ready)."""
        return self._consumer is not None and bool(self._consumer.assignment())

    async def run(self, stop: asyncio.Event) -> None:
        """Consume actions until ``stop``; commit after each batch is applied."""
        consumer = kafka.consumer(
            self._settings,
            [self._settings.actions_topic],
            self._settings.annotate_group,
            on_assignment=self._assigned if self.ownership else None,
        )
        producer = kafka.producer(self._settings)
        async with kafka.started(producer, consumer):
            self._consumer = consumer
            # the batch's audit records are durable before its actions are acknowledged
            committer = kafka.Committer(consumer, STAGE, before=self.annotator.auditor.flush)
            try:
                await self._consume(
                    kafka.Reader(consumer, self._settings, STAGE), committer, producer, stop
                )
            finally:
                await committer.close()

    async def _consume(
        self,
        reader: kafka.Reader,
        committer: kafka.Committer,
        producer: kafka.AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> None:
        dead_letters = self._settings.topics.dead_letters
        while not stop.is_set():
            batch, bad = await reader.getmany(timeout_ms=200, max_records=2000)
            kafka.report_batch(STAGE, reader.consumer, batch)
            if bad:
                # an undecodable batch cannot be applied: dead-lettered, then passed
                await kafka.dead_letter_batches(producer, dead_letters, bad, STAGE)
            if not batch:
                if bad:
                    committer.commit(
                        {kafka.TopicPartition(b.topic, b.partition): b.next_offset for b in bad}
                    )
                continue
            records = [r for rs in batch.values() for r in rs]
            metrics.records_consumed.labels(stage=STAGE).inc(len(records))
            actions: list[Action] = []
            for record in records:
                try:
                    action = Action.decode(record.value or b"")
                except ActionError as exc:
                    await kafka.dead_letter_record(
                        producer, dead_letters, record, STAGE, "invalid-action", str(exc)
                    )
                    continue
                if action.cluster != self._settings.cluster:
                    # another cluster's action on this cluster's topic: never applied here
                    await kafka.dead_letter_record(
                        producer,
                        dead_letters,
                        record,
                        STAGE,
                        "other-cluster",
                        f"for cluster {action.cluster or '(none)'!r}, this is "
                        f"{self._settings.cluster or '(none)'!r}",
                    )
                    continue
                actions.append(action)
            await self.apply_until_done(actions, stop)
            offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items()}
            offsets |= {kafka.TopicPartition(b.topic, b.partition): b.next_offset for b in bad}
            committer.commit(offsets)

    def _assigned(self, partitions: set[int], total: int) -> None:
        assert self.ownership is not None
        log.info("annotate owns partitions %s of %d", sorted(partitions) or "none", total)
        self.ownership.assign(partitions, total)
        # this replica's share of the API budget follows its share of the work
        self.annotator.kube.share_limits(self.ownership.share)

    async def apply_until_done(self, actions: list[Action], stop: asyncio.Event) -> None:
        """Apply a batch, retrying while the API server is away (backoff up to 8 s) or ``stop``."""
        delay = 1.0
        while True:
            try:
                await self.annotator.handle(actions)
            except kube.Unavailable as exc:
                metrics.stage_errors.labels(stage=STAGE, error=type(exc).__name__).inc()
                log.warning(
                    "API unavailable (%s); batch kept uncommitted, retrying in %.0fs", exc, delay
                )
                await stopping.pause(stop, delay)
                if stop.is_set():
                    raise
                delay = min(delay * 2, _BACKOFF_MAX_S)
            else:
                return
