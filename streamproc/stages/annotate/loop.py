"""Stage 3, annotate: actions in, pod annotations out, offsets committed only after they landed.

The stage reads actions from Kafka, dead-letters what does not decode or what its own topology
refuses (:mod:`streamproc.guarding`), hands each batch to the
:class:`~streamproc.applying.Annotator` and commits offsets only up to the first action that
is not finished (at-least-once; patches are idempotent).

A transient failure (5xx, 429, a timeout) holds back only its own workload: its actions are
parked and retried on their own, with backoff, while other workloads' actions go on landing.
The commit of their partition stays behind the first parked action (nothing is lost if the
process dies meanwhile: the partition is read again from there, and what landed since is a
no-op), so parking is bounded in memory (``_PARKED_MAX``; beyond it the stage reads nothing
new) and in time: an action that keeps failing for ``--retry-for`` while other actions land
is dead-lettered (``retries-exhausted``) and the commit moves past it. While nothing lands
at all (the API server is away), nothing is given up: the actions wait for it, as before, until
their observation would have ended (``expired-before-apply``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from streamproc import stopping
from streamproc.clients import kafka, kube, metrics
from streamproc.model import guarding
from streamproc.model.actions import Action, ActionError
from streamproc.model.ownership import Ownership
from streamproc.settings import Settings
from streamproc.stages.annotate import auditing
from streamproc.stages.annotate.applying import Annotator, workload_key

log = logging.getLogger("streamproc.annotate")
STAGE = "annotate"
#: why the stage dead-letters an action record: it does not decode, it is another cluster's,
#: its topology refuses it, or its writes kept failing while others landed
DeadLetterReason = (
    Literal["invalid-action", "other-cluster", "retries-exhausted"] | guarding.Refusal
)
#: the longest a batch waits between attempts while the API server is away: also the most an
#: action can lag behind the API server's return. One pod list per 8 s is nothing to a server.
_BACKOFF_MAX_S = 8.0
#: actions parked for a retry at most; beyond it the stage stops reading (back-pressure)
_PARKED_MAX = 5000
W = TypeVar("W")


@dataclass
class _Parked(Generic[W]):
    """One workload's actions waiting for a retry, in order, each with where it was read."""

    actions: list[tuple[Action, W]]
    first_failed: float
    error: str
    next_at: float
    delay: float


class Retries(Generic[W]):
    """Apply actions; park those that meet a transient failure and retry them on their own.

    ``W`` is where an action was read (its Kafka record in the stage): the stage commits no
    further than the first parked one of each partition.
    """

    def __init__(
        self,
        annotator: Annotator,
        *,
        retry_for_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._annotator = annotator
        self._retry_for_s = retry_for_s
        self._clock = clock
        self._parked: dict[str, _Parked[W]] = {}
        #: when an attempt last finished an action (applied, skipped, refused, failed for good)
        self._landed_at = float("-inf")

    def __len__(self) -> int:
        """How many actions are parked."""
        return sum(len(p.actions) for p in self._parked.values())

    def wait_s(self) -> float:
        """How long until the next retry is due (0: now; 1 s when nothing is parked)."""
        due = min((p.next_at for p in self._parked.values()), default=self._clock() + 1.0)
        return max(0.0, due - self._clock())

    def positions(self) -> list[W]:
        """Where every parked action was read."""
        return [where for p in self._parked.values() for _, where in p.actions]

    def keep_only(self, keep: Callable[[W], bool]) -> None:
        """Forget parked actions read where ``keep`` says no (a partition moved to another)."""
        for key, parked in list(self._parked.items()):
            parked.actions = [(a, w) for a, w in parked.actions if keep(w)]
            if not parked.actions:
                del self._parked[key]

    async def apply(self, fresh: Sequence[tuple[Action, W]]) -> list[tuple[Action, W, str]]:
        """Apply ``fresh`` and the retries that are due; the actions given up on, and why.

        A fresh action of a workload that has parked ones waits behind them, unattempted.
        """
        now = self._clock()
        attempt: list[tuple[Action, W]] = []
        for action, where in fresh:
            parked = self._parked.get(workload_key(action))
            if parked is not None:
                parked.actions.append((action, where))
            else:
                attempt.append((action, where))
        retried = {k: p for k, p in self._parked.items() if p.next_at <= now}
        for key, parked in retried.items():
            del self._parked[key]
            attempt[:0] = parked.actions
        if not attempt:
            return []
        failed = await self._annotator.attempt([a for a, _ in attempt])
        now = self._clock()
        if len(failed) < len(attempt):
            self._landed_at = now
        for action, where in attempt:
            exc = failed.get(action.id)
            if exc is not None:
                self._park(action, where, exc, retried.get(workload_key(action)), now)
        return self._give_up(now)

    def _park(
        self,
        action: Action,
        where: W,
        exc: kube.Unavailable,
        before: _Parked[W] | None,
        now: float,
    ) -> None:
        key = workload_key(action)
        parked = self._parked.get(key)
        if parked is None:
            delay = min(before.delay * 2, _BACKOFF_MAX_S) if before else 1.0
            first = before.first_failed if before else now
            parked = self._parked[key] = _Parked([], first, str(exc), now + delay, delay)
            log.log(
                logging.DEBUG if before else logging.WARNING,
                "%s: %s; retried on its own in %.0fs, other workloads go on",
                key,
                exc,
                delay,
            )
        parked.actions.append((action, where))

    def _give_up(self, now: float) -> list[tuple[Action, W, str]]:
        """Actions failing for ``retry_for`` while other actions landed and the API answered.

        Both since it began to fail show the failure is the object's own (a webhook refusing
        its writes); while the server answers nothing, or nothing else lands, the actions wait
        (until their observation would have ended: ``expired-before-apply``).
        """
        answered = self._annotator.kube.answered_at
        given_up: list[tuple[Action, W, str]] = []
        for key, parked in list(self._parked.items()):
            failing = now - parked.first_failed
            confined = min(answered, self._landed_at) > parked.first_failed
            if failing < self._retry_for_s or not confined:
                continue
            del self._parked[key]
            why = f"writes failed for {failing:.0f}s while the API server answered: {parked.error}"
            log.error("%s: given up (%s); dead-lettered", key, why)
            for action, where in parked.actions:
                auditing.handled("retries-exhausted")
                given_up.append((action, where, why))
        return given_up


class AnnotateStage:
    """The actions topic's consumer: decode, apply through the annotator, commit."""

    def __init__(
        self, settings: Settings, annotator: Annotator, ownership: Ownership | None = None
    ) -> None:
        self._settings = settings
        self.annotator = annotator
        #: told the partitions this replica holds after each rebalance
        self.ownership = ownership
        self._consumer: kafka.Consumer | None = None
        #: since when the topic's partition count differs from the assignment's, and the
        #: (count, assigned) pair last reported
        self._behind_since: float | None = None
        self._behind_reported: tuple[int, int] | None = None

    @property
    def consumer(self) -> kafka.Consumer | None:
        """The actions topic's consumer while the stage runs."""
        return self._consumer

    @property
    def joined(self) -> bool:
        """Whether the consumer group gave this stage partitions to read (it is ready)."""
        return self._consumer is not None and bool(self._consumer.assignment())

    async def run(self, stop: asyncio.Event) -> None:
        """Consume actions until ``stop``; commit after each batch is applied."""

        def clients() -> tuple[kafka.Producer, kafka.Consumer]:
            return kafka.producer(self._settings), kafka.consumer(
                self._settings,
                [self._settings.actions_topic],
                self._settings.annotate_group,
                on_assignment=self._assigned if self.ownership else None,
            )

        async with kafka.started_when_reachable(
            self._settings, stop, clients, "annotate was connecting"
        ) as started:
            if started is None:
                return  # asked to stop while Kafka was away
            producer, consumer = started
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
        producer: kafka.Producer,
        stop: asyncio.Event,
    ) -> None:
        dead_letters = self._settings.topics.dead_letters
        retries: Retries[kafka.Record] = Retries(
            self.annotator, retry_for_s=self._settings.retry_for_s
        )
        #: per partition, the offset after the last record read (finished, dead-lettered or
        #: parked), and the offsets last handed to the committer
        read_to: dict[kafka.Partition, int] = {}
        sent: dict[kafka.Partition, int] = {}
        while not stop.is_set():
            self._check_assignment(reader.consumer)
            assigned = reader.consumer.assignment()
            retries.keep_only(functools.partial(_read_from, assigned))
            read_to = {tp: offset for tp, offset in read_to.items() if tp in assigned}
            sent = {tp: offset for tp, offset in sent.items() if tp in assigned}
            if len(retries) < _PARKED_MAX:
                batch, bad = await reader.getmany(timeout_ms=200, max_records=2000)
            else:  # back-pressure: nothing new is read while this many wait for a retry
                batch, bad = {}, []
                await stopping.pause(stop, retries.wait_s())
            kafka.report_batch(STAGE, reader.consumer, batch)
            if bad:
                # an undecodable batch cannot be applied: dead-lettered, then passed
                await kafka.dead_letter_batches(producer, dead_letters, bad, STAGE)
            records = [r for rs in batch.values() for r in rs]
            metrics.records_consumed.labels(stage=STAGE).inc(len(records))
            fresh: list[tuple[Action, kafka.Record]] = []
            for record in records:
                action = await self._admit(record, producer)
                if action is not None:
                    fresh.append((action, record))
            read_to |= {tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs}
            for skipped in bad:  # after the good records before it, whichever comes last
                tp = kafka.Partition(skipped.topic, skipped.partition)
                read_to[tp] = max(read_to.get(tp, 0), skipped.next_offset)
            for _action, record, why in await retries.apply(fresh):
                await self._dead_letter(producer, record, "retries-exhausted", why)
            offsets = dict(read_to)
            for record in retries.positions():
                tp = kafka.Partition(record.topic, record.partition)
                offsets[tp] = min(offsets.get(tp, record.offset), record.offset)
            metrics.actions_parked.set(len(retries))
            changed = {tp: o for tp, o in offsets.items() if sent.get(tp) != o}
            if changed:
                committer.commit(changed)
                sent |= changed

    async def _admit(self, record: kafka.Record, producer: kafka.Producer) -> Action | None:
        """The record's action, if it decodes, is this cluster's and its topology allows it."""
        try:
            action = Action.decode(record.value or b"")
        except ActionError as exc:
            await self._dead_letter(producer, record, "invalid-action", str(exc))
            return None
        if action.cluster != self._settings.cluster:
            # another cluster's action on this cluster's topic: never applied here
            await self._dead_letter(
                producer,
                record,
                "other-cluster",
                f"for cluster {action.cluster or '(none)'!r}, this is "
                f"{self._settings.cluster or '(none)'!r}",
            )
            return None
        refused = self.annotator.refuse(action)
        if refused is not None:
            # the annotator is the last line: its own topology's rules, before any write
            await self._dead_letter(producer, record, *refused)
            return None
        return action

    async def _dead_letter(
        self,
        producer: kafka.Producer,
        record: kafka.Record,
        reason: DeadLetterReason,
        detail: str,
    ) -> None:
        await kafka.dead_letter_record(
            producer, self._settings.topics.dead_letters, record, STAGE, reason, detail
        )

    def _check_assignment(self, consumer: kafka.Consumer) -> None:
        """Say once when the topic's partition count and the group's assignment disagree.

        Workloads keep an owner meanwhile (``kafka.CountingAssignor``), but records on
        partitions the assignment does not cover are not read until the group rebalances,
        which the leader starts after a metadata refresh (``--metadata-max-age``).
        """
        if self.ownership is None or not self.ownership.total:
            return
        count = len(consumer.partitions_for_topic(self._settings.actions_topic) or ())
        now = time.monotonic()
        if count == self.ownership.total:
            self._behind_since = None
            return
        if self._behind_since is None:
            self._behind_since = now
        grace = 2 * self._settings.metadata_max_age_s + self._settings.rebalance_timeout_s
        if now - self._behind_since < grace or self._behind_reported == (
            count,
            self.ownership.total,
        ):
            return
        self._behind_reported = (count, self.ownership.total)
        log.warning(
            "%s has %d partitions but the group's assignment covers %d for %.0fs: records on "
            "the others are not read until it rebalances; restart the annotators if it does not",
            self._settings.actions_topic,
            count,
            self.ownership.total,
            now - self._behind_since,
        )

    def _assigned(self, partitions: set[int], total: int) -> None:
        assert self.ownership is not None
        log.info("annotate owns partitions %s of %d", sorted(partitions) or "none", total)
        self.ownership.assign(partitions, total)
        # this replica's share of the API budget follows its share of the work
        self.annotator.kube.share_limits(self.ownership.share)


def _read_from(partitions: set[kafka.Partition], record: kafka.Record) -> bool:
    """Whether ``record`` is from one of ``partitions`` (those this replica still holds)."""
    return kafka.Partition(record.topic, record.partition) in partitions
