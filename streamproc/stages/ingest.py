"""Stage 1, ingest: raw detections in, compact per-workload tallies out.

A Faust agent costs far more per event than a plain aiokafka consumer with orjson (figures in
docs/measurements.md), so every raw detection stops here: it is parsed, validated (or dead-lettered
with its reason), matched against the topologies, tied to its workload, and counted into a tally
per topology x workload x window. One ``getmany`` batch is one unit of work: its tallies and dead
letters are produced and acknowledged by the broker before the batch's offsets are committed, so
a crash repeats a batch rather than losing one (at-least-once). The stage keeps no state between
batches and scales out by partition.

Windows are aligned on the Kafka record timestamp (the moment the detection was appended), not on
the ``time`` field inside the event: that is what the broker vouches for, and a hostile or
skewed producer clock inside a payload cannot stretch an observation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from streamproc import reasons
from streamproc.clients import kafka, metrics
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.model import events, fleets
from streamproc.model.events import Detection, ParseError
from streamproc.model.matching import Matcher
from streamproc.model.tallies import UUID_SAMPLE, Tally, start_tally
from streamproc.model.topologies import Topology
from streamproc.model.workloads import WorkloadRef, in_cluster
from streamproc.settings import Settings

log = logging.getLogger("streamproc.ingest")
STAGE = "ingest"
_Slot = tuple[str, str, int]


class Incoming(Protocol):
    """What ingest reads of a record: an aiokafka ``ConsumerRecord``, or a line of a file."""

    @property
    def topic(self) -> str:
        """The topic (for a file: the one every topology reads)."""

    @property
    def partition(self) -> int:
        """The partition (for files: the file's index)."""

    @property
    def offset(self) -> int:
        """The offset (for a file: the line's number)."""

    @property
    def timestamp(self) -> int:
        """The Kafka record time, ms."""

    @property
    def key(self) -> bytes | None:
        """The record key."""

    @property
    def value(self) -> bytes | None:
        """The raw detection."""


class BatchResult:
    """What one batch produced, kept apart from I/O so it can be tested and measured alone."""

    __slots__ = (
        "consumed",
        "dead",
        "excluded",
        "excluded_detections",
        "fields",
        "host_events",
        "identities",
        "latest_ms",
        "matched",
        "out_of_step",
        "rules",
        "tallies",
        "unmatched",
    )

    def __init__(self) -> None:
        self.tallies: dict[_Slot, Tally] = {}
        self.dead: list[tuple[Incoming, reasons.DeadLetter, str]] = []
        self.consumed: Counter[tuple[int, str]] = Counter()
        self.matched: Counter[str] = Counter()
        #: counted detections by (topology, rule)
        self.rules: Counter[tuple[str, str]] = Counter()
        self.host_events = 0
        self.unmatched = 0
        #: detections a topology would have counted but for its excluded namespaces
        self.excluded: Counter[str] = Counter()
        self.excluded_detections = 0
        #: the latest detection time in the batch (record or payload time, as windowed)
        self.latest_ms = 0
        #: counted detections by pod and the workload found for it: (cluster, namespace, pod,
        #: workload) -> detections (``streamproc simulate`` reports how identities were found)
        self.identities: Counter[tuple[str, str, str, WorkloadRef]] = Counter()
        #: detections whose cluster field was not routed as written, by (the name it gave,
        #: ignored or refused): what the stage reports once per name
        self.fields: Counter[tuple[str, fleets.Placement]] = Counter()
        #: with payload time, the records whose ``time`` was out of step with their neighbours'
        #: and was replaced by the running clock (``in_step``)
        self.out_of_step: list[Incoming] = []


#: a payload time this far from both its neighbours' (which agree with each other) is out of step
OUT_OF_STEP_MS = 3_600_000

_Parsed = tuple[Incoming, Detection, int]


def in_step(
    parsed: list[_Parsed],
    out_of_step: list[Incoming],
    context: tuple[Sequence[int], Sequence[int]] = ((), ()),
) -> list[_Parsed]:
    """Payload times, with each lone outlier replaced by the running clock; outliers listed.

    Only ``streamproc simulate`` windows on the payload's ``time`` (files have no record time),
    and any valid RFC 3339 time passes Falcosidekick: epoch 0, or the year 2999. One such time
    would move the simulated clock decades away and change the decisions on the payloads around
    it, while live, windowed on the record time, would not notice. So a time more than
    ``OUT_OF_STEP_MS`` from each of its two neighbours on either side in the file, while two of
    them agree with each other, is taken for what live would have seen: the running clock (the
    time of the last in-step payload before it, else of the first after it). Two or more
    adjacent payloads at a new time are a jump in the input and kept (a file may hold days
    apart). ``context`` holds the times of the payloads just before and after the batch in the
    file, so its first and last payloads have neighbours on both sides too; each batch decides
    from its own lines and that context alone, so worker processes decide as one process does.
    """
    before, after = context
    times = [*before, *(timestamp for _, _, timestamp in parsed), *after]
    count = len(times)
    first, end = len(before), len(before) + len(parsed)
    step = OUT_OF_STEP_MS
    lone = [False] * count
    for i, here in enumerate(times):
        if (i and abs(here - times[i - 1]) <= step) or (
            i + 1 < count and abs(here - times[i + 1]) <= step
        ):
            continue  # the common case: next to a payload of its own time
        around = [times[j] for j in (i - 2, i - 1, i + 1, i + 2) if 0 <= j < count]
        lone[i] = all(abs(here - t) > step for t in around) and any(
            abs(a - b) <= step for k, a in enumerate(around) for b in around[k + 1 :]
        )
    if not any(lone[first:end]) or all(lone):
        return parsed  # all lone: times that agree nowhere leave no clock to trust
    fixed = list(parsed)
    previous: int | None = None
    for i in range(end):
        if not lone[i]:
            previous = times[i]
        elif i >= first:
            # the last in-step time before it, else (none yet) the first after it
            clock = previous
            if clock is None:
                clock = next(t for t, out in zip(times[i:], lone[i:], strict=True) if not out)
            record, detection, _ = parsed[i - first]
            out_of_step.append(record)
            fixed[i - first] = (record, detection, clock)
    return fixed


class Ingestor:
    """Parse, validate, match, resolve and pre-aggregate; publish tallies; commit."""

    def __init__(
        self,
        settings: Settings,
        topologies: Sequence[Topology],
        resolver: WorkloadResolver,
        *,
        clusters: Mapping[str, WorkloadResolver] | None = None,
        payload_time: bool = False,
    ) -> None:
        self.settings = settings
        #: whose each detection is: declared clusters only, or one cluster whatever it says
        self.fleet = fleets.Fleet.of(settings)
        self._sightings = fleets.Sightings()
        for topology in topologies:
            if unserved := sorted(set(topology.spec.match.clusters) - self.fleet.members):
                log.warning(
                    "topology %s matches clusters %s, which this deployment does not route "
                    "(its clusters: %s): it never matches them; name them in --clusters",
                    topology.name,
                    ", ".join(unserved),
                    ", ".join(sorted(self.fleet.members)) or "one, unnamed",
                )
        #: windows from the detection's own ``time`` rather than the Kafka record's: only for
        #: files, which have no record time (``streamproc simulate``); see the module's docstring
        self.payload_time = payload_time
        #: each cluster's resolver: this one's (``--cluster``), those of ``--cluster-contexts``,
        #: and for any other cluster one without API access (owner fields, name shape)
        self.resolvers: dict[str, WorkloadResolver] = {
            settings.cluster: resolver,
            **(clusters or {}),
        }
        self._elsewhere = WorkloadResolver(
            None, cache_size=settings.resolver_cache_size, ttl_s=settings.resolver_cache_ttl_s
        )
        by_topic: dict[str, list[Topology]] = {}
        for topology in topologies:
            by_topic.setdefault(topology.spec.source.topic, []).append(topology)
        self.matchers = {topic: Matcher(ts) for topic, ts in by_topic.items()}
        self.gate = TallyGate(topologies, settings.tally_hold_s)

    @property
    def source_topics(self) -> list[str]:
        """Topics the stage reads."""
        return sorted(self.matchers)

    async def process(
        self,
        records: Iterable[Incoming],
        *,
        context: tuple[Sequence[bytes], Sequence[bytes]] = ((), ()),
    ) -> BatchResult:
        """Turn one batch of raw records into tallies and dead letters (no Kafka I/O).

        ``context``: with payload time, the lines just before and after the batch in its file,
        for telling a lone outlier from a jump at the batch's edges (``in_step``).

        Per detection this costs one parse, one dict look-up of its *route* (what a detection
        with this rule, priority, source, tags, namespace, pod and owners does: skipped, or
        counted for which topologies and which workload; decided once per batch) and one tally
        update per matched topology.
        """
        result = BatchResult()
        routes: dict[tuple[object, ...], _Route] = {}
        waiting: dict[tuple[object, ...], list[tuple[Detection, int]]] = {}
        tallies = result.tallies
        payload_time = self.payload_time
        latest = 0
        for record, detection, timestamp in (
            self._on_payload_time(records, result, context)
            if payload_time
            else self._parsed(records, result)
        ):
            if timestamp > latest:  # noqa: PLR1730 - in the hot loop a compare beats a call
                latest = timestamp
            key: tuple[object, ...] = detection[:8]  # rule ... owners, cluster
            route = routes.get(key)
            if route is None:
                route = routes[key] = self._route(detection, record.topic)
            route.count += 1
            if not route.targets:
                if route.refused is not None:
                    result.dead.append((record, route.refused, route.detail))
                continue
            if route.workload is None:
                waiting.setdefault(key, []).append((detection, timestamp))
                continue
            _add(tallies, route, detection, timestamp)
        if waiting:
            resolved = await self._resolve(
                {(routes[k].cluster, k[4], k[5]) for k in waiting}  # type: ignore[misc]
            )
            for key, detections in waiting.items():
                route = routes[key]
                route.workload = resolved[(route.cluster, key[4], key[5])]  # type: ignore[index]
                route.workload_key = in_cluster(route.cluster, route.workload.key)
                for detection, timestamp in detections:
                    _add(tallies, route, detection, timestamp)
        result.latest_ms = latest
        _summarise(routes, result)
        return result

    def _on_payload_time(
        self,
        records: Iterable[Incoming],
        result: BatchResult,
        context: tuple[Sequence[bytes], Sequence[bytes]],
    ) -> list[_Parsed]:
        """The batch parsed, windowed on each payload's ``time`` kept in step (``in_step``)."""
        epoch_ms = events.epoch_ms
        parsed = []
        for record, detection, _ in self._parsed(records, result):
            try:
                parsed.append((record, detection, epoch_ms(detection.time)))
            except ParseError as exc:
                result.dead.append((record, exc.reason, exc.detail))
        before, after = context
        return in_step(parsed, result.out_of_step, (self._times(before), self._times(after)))

    def _times(self, lines: Sequence[bytes]) -> list[int]:
        """The payload times of context lines; a line that does not parse has none."""
        found = []
        for line in lines:
            try:
                detection = events.parse(line, cluster_field=self.settings.cluster_field)
                found.append(events.epoch_ms(detection.time))
            except ParseError:
                continue
        return found

    def _parsed(self, records: Iterable[Incoming], result: BatchResult) -> Iterator[_Parsed]:
        """Each record that parses, with its record time; the others become dead letters."""
        parse = events.parse
        cluster_field = self.settings.cluster_field
        for record in records:
            try:
                detection = parse(record.value or b"", cluster_field=cluster_field)
            except ParseError as exc:
                result.dead.append((record, exc.reason, exc.detail))
                continue
            yield record, detection, record.timestamp

    def _route(self, detection: Detection, topic: str) -> _Route:
        named = detection.cluster
        cluster, placement = self.fleet.place(named)
        refused = fleets.REFUSED.get(placement)
        if refused is not None:
            route = _Route("refused", detection)
            route.refused, route.detail = refused, self.fleet.refusal(named)
        else:
            route = self._matched(detection._replace(cluster=cluster), topic)
        route.named, route.placement = named, placement
        return route

    def _matched(self, detection: Detection, topic: str) -> _Route:
        if detection.namespace is None or detection.pod is None:
            return _Route("host", detection)
        matcher = self.matchers[topic]
        matched = matcher.match(detection)
        if not matched:
            route = _Route("unmatched", detection)
            route.excluded = tuple(t.name for t in matcher.excluded(detection))
            return route
        route = _Route("match", detection)
        route.targets = tuple((t.name, int(t.spec.window.size * 1000)) for t in matched)
        route.workload = self._resolver_of(detection.cluster).known(detection)
        if route.workload is not None:
            route.workload_key = in_cluster(route.cluster, route.workload.key)
        return route

    def _resolver_of(self, cluster: str) -> WorkloadResolver:
        return self.resolvers.get(cluster) or self._elsewhere

    async def _resolve(
        self, pods: set[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], WorkloadRef]:
        # The API client bounds requests in flight and per second; nothing to add here.
        async def one(
            cluster: str, namespace: str, pod: str
        ) -> tuple[tuple[str, str, str], WorkloadRef]:
            ref = await self._resolver_of(cluster).resolve(namespace, pod)
            return (cluster, namespace, pod), ref

        return dict(await asyncio.gather(*(one(*pod) for pod in pods)))

    async def publish(
        self,
        producer: kafka.Producer,
        tallies: Sequence[Tally],
        dead: Sequence[tuple[Incoming, reasons.DeadLetter, str]] = (),
    ) -> None:
        """Produce tallies and dead letters and wait until the broker acknowledged all of them."""
        topics = self.settings.topics
        futures = [
            await producer.send(
                topics.tallies,
                value=tally.encode(),
                key=tally.workload_key.encode(),
                timestamp_ms=tally.window_start,
            )
            for tally in tallies
        ]
        futures += [
            await producer.send(
                topics.dead_letters,
                value=record.value,
                key=record.key,
                headers=kafka.dead_letter_headers(
                    STAGE, reason, detail, record.topic, record.partition, record.offset
                ),
            )
            for record, reason, detail in dead
        ]
        if futures:
            await asyncio.gather(*futures)
        if tallies:
            metrics.tallies_published.inc(len(tallies))

    @staticmethod
    def record_metrics(result: BatchResult) -> None:
        """Fold one batch's counts into the process metrics (once per batch, not per event)."""
        for (priority, source), n in result.consumed.items():
            metrics.detections_consumed.labels(
                priority=events.PRIORITIES[len(events.PRIORITIES) - 1 - priority], source=source
            ).inc(n)
        if result.host_events:
            metrics.detections_skipped.labels(reason="no-kubernetes-context").inc(
                result.host_events
            )
        if result.unmatched:
            metrics.detections_skipped.labels(reason="no-topology-matched").inc(result.unmatched)
        if result.excluded_detections:
            metrics.detections_skipped.labels(reason="namespace-excluded").inc(
                result.excluded_detections
            )
        for topology, n in result.matched.items():
            metrics.detections_matched.labels(topology=topology).inc(n)
        for _, reason, _ in result.dead:
            metrics.dead_letters.labels(stage=STAGE, reason=reason).inc()

    def report_fields(self, result: BatchResult) -> None:
        """Count ignored cluster fields; say once per name which were ignored or refused."""
        for (named, placement), n in result.fields.items():
            if placement == "ignored":
                metrics.cluster_field_ignored.inc(n)
            if not self._sightings.first(named):
                continue
            if placement == "ignored":
                log.info(
                    "detections name cluster %r (field %r); this deployment is one cluster and "
                    "treats them as its own (to route by cluster, name the fleet: --clusters)",
                    named,
                    self.settings.cluster_field,
                )
            else:
                log.warning(
                    "detections dead-lettered (%s): %s", placement, self.fleet.refusal(named)
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; survive broker outages by retrying the same batch."""
        consumer = kafka.consumer(self.settings, self.source_topics, self.settings.groups.ingest)
        # A batch's tallies are all sent before the first is awaited, so they share one request
        # anyway: lingering would only delay it.
        producer = kafka.producer(self.settings, linger_ms=0)
        async with kafka.started(producer, consumer):
            log.info("ingest reading %s", ", ".join(self.source_topics))
            await self._consume(consumer, producer, stop)

    async def _consume(
        self,
        consumer: kafka.Consumer,
        producer: kafka.Producer,
        stop: asyncio.Event,
    ) -> None:
        commits = CommitPoint()
        committer = kafka.Committer(consumer, STAGE)
        reader = kafka.Reader(consumer, self.settings, STAGE)
        try:
            while not stop.is_set():
                batch, bad = await reader.getmany(
                    timeout_ms=int(self.settings.flush_interval_s * 1000) or 1,
                    max_records=self.settings.batch_max_records,
                )
                handled = not batch or await self._handle(reader, producer, batch, commits)
                if bad and handled:
                    # only past records that were handled: after a failed batch the reader
                    # went back before them, and reading again finds the bad batch again
                    await self._skip(reader, producer, bad, commits)
                now = time.monotonic()
                if self.gate.due(now):
                    await self._release(producer, now)
                self._commit(committer, commits)
                self.gate.forget_ended(int(time.time() * 1000))
                kafka.report_batch(STAGE, consumer, batch)
            await self._release(producer, None)
            self._commit(committer, commits)
        finally:
            await committer.close()

    async def _handle(
        self,
        reader: kafka.Reader,
        producer: kafka.Producer,
        batch: Mapping[kafka.Partition, list[kafka.Record]],
        commits: CommitPoint,
    ) -> bool:
        """Publish one batch's tallies and dead letters; False when it must be read again."""
        records = [r for rs in batch.values() for r in rs]
        metrics.records_consumed.labels(stage=STAGE).inc(len(records))
        try:
            result = await self.process(records)
            await self.publish(producer, self.gate.admit(result.tallies), result.dead)
        except kafka.KafkaError as exc:
            # Nothing of this batch is committed: rewind and take it again once Kafka is back.
            metrics.stage_errors.labels(stage=STAGE, error=type(exc).__name__).inc()
            log.warning("ingest batch failed (%s); retrying from offset", exc)
            for tp, rs in batch.items():
                reader.seek(tp, rs[0].offset)
            await asyncio.sleep(1.0)
            return False
        commits.handled(self.gate.batches, {tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        self.record_metrics(result)
        self.report_fields(result)
        return True

    async def _skip(
        self,
        reader: kafka.Reader,
        producer: kafka.Producer,
        bad: Sequence[kafka.BadBatch],
        commits: CommitPoint,
    ) -> None:
        """Dead-letter undecodable batches, then let their offsets be committed past them."""
        try:
            await kafka.dead_letter_batches(producer, self.settings.topics.dead_letters, bad, STAGE)
        except kafka.KafkaError as exc:
            metrics.stage_errors.labels(stage=STAGE, error=type(exc).__name__).inc()
            log.warning("dead-lettering a skipped batch failed (%s); will read it again", exc)
            for batch in bad:
                reader.seek(kafka.Partition(batch.topic, batch.partition), batch.offset)
            return
        commits.handled(
            self.gate.batches,
            {kafka.Partition(b.topic, b.partition): b.next_offset for b in bad},
        )

    async def _release(self, producer: kafka.Producer, now: float | None) -> None:
        """Publish the held tallies that are due (all of them when ``now`` is None)."""
        try:
            await self.publish(producer, self.gate.release(now))
        except kafka.KafkaError as exc:
            self.gate.settle(delivered=False)  # held again: their offsets stay uncommitted
            metrics.stage_errors.labels(stage=STAGE, error=type(exc).__name__).inc()
            log.warning("releasing held tallies failed (%s); will retry", exc)
        else:
            self.gate.settle(delivered=True)

    def _commit(self, committer: kafka.Committer, commits: CommitPoint) -> None:
        """Commit what no held count still depends on."""
        offsets = commits.committable(self.gate.oldest_held_batch)
        if offsets:
            committer.commit(offsets)


class TallyGate:
    """Decides which tallies must be published now and which may wait a moment.

    Latency matters only until a window qualifies. While this process's own count for a window
    is still below the topology's threshold, its tallies go out at once: the next one may be the
    one that opens the observation. Once the local count alone reaches the threshold, the window
    has qualified whatever other ingest processes saw, and further tallies only keep the counts
    (deduplication) exact: they are merged and released ``hold_s`` after the first of them was
    held. Under a flood this turns thousands of tallies per second into one per workload per
    interval, which is what keeps the Faust stage far below its per-event limit.

    Each held count leaves on its own schedule, not all at once: 500 workloads' counts released
    together are 500 tallies the Faust stage must work through before it sees a new workload's
    first tally queued behind them (docs/measurements.md). Offsets of a batch whose counts are
    held are committed only once they left (``oldest_held_batch``), so counts stay
    at-least-once.

    A flood over many workloads (50,000 made-up ones, say) would still mean 50,000 held tallies
    every ``hold_s``, more than the Faust stage handles: the interval stretches so that held
    tallies leave at no more than ``HELD_PER_S`` a second, but never beyond the shortest window
    (the windows stage keeps a window for three of its lengths, so a released count always
    finds its window, already marked as acted on).
    """

    #: held tallies per second the Faust stage can absorb beside urgent ones, kept well below
    #: its measured rate (docs/measurements.md)
    HELD_PER_S = 1000

    def __init__(self, topologies: Sequence[Topology], hold_s: float) -> None:
        self._thresholds = {t.name: t.spec.window.threshold for t in topologies}
        self._sizes_ms = {t.name: int(t.spec.window.size * 1000) for t in topologies}
        self._hold_s = hold_s
        self._counts: dict[_Slot, int] = {}
        #: held tallies in the order they were first held, with when and in which batch (an
        #: OrderedDict: the oldest is looked at and taken off the front in O(1))
        self._held: OrderedDict[_Slot, tuple[Tally, float, int]] = OrderedDict()
        self._leaving: OrderedDict[_Slot, tuple[Tally, float, int]] = OrderedDict()
        self._batches = 0
        self._next_prune_ms = 0

    @property
    def holding(self) -> bool:
        """Whether some counted detections are not yet published."""
        return bool(self._held)

    @property
    def batches(self) -> int:
        """How many batches were admitted so far (the number of the latest)."""
        return self._batches

    @property
    def oldest_held_batch(self) -> int | None:
        """The earliest batch with a count still held; offsets before it may be committed."""
        for entries in (self._leaving, self._held):
            for _, _, batch in entries.values():
                return batch
        return None

    def admit(self, tallies: Mapping[_Slot, Tally], now: float | None = None) -> list[Tally]:
        """Record a batch's tallies; return those to publish now."""
        self._batches += 1
        now = time.monotonic() if now is None else now
        urgent = []
        for slot, tally in tallies.items():
            before = self._counts.get(slot, 0)
            self._counts[slot] = before + tally.count
            if before < self._thresholds[slot[0]]:
                urgent.append(tally)  # counts only grow, so nothing is held for this slot yet
            elif slot in self._held:
                merge(self._held[slot][0], tally)
            else:
                self._held[slot] = (tally, now, self._batches)
        return urgent

    def _interval(self) -> float:
        shortest_window_s = min(self._sizes_ms.values(), default=1000) / 1000
        return max(self._hold_s, min(len(self._held) / self.HELD_PER_S, shortest_window_s))

    def due(self, now: float) -> bool:
        """Whether some held tallies should leave now (the interval grows with their number)."""
        for _, since, _ in self._held.values():
            return now >= since + self._interval()
        return False

    def release(self, now: float | None = None) -> list[Tally]:
        """The held tallies whose time has come at ``now``; all of them without ``now``.

        They count as held until ``settle`` says whether publishing them succeeded.
        """
        cutoff = float("inf") if now is None else now - self._interval()
        while self._held:
            slot, entry = next(iter(self._held.items()))
            if entry[1] > cutoff:
                break
            self._leaving[slot] = self._held.pop(slot)
        return [tally for tally, _, _ in self._leaving.values()]

    def settle(self, *, delivered: bool) -> None:
        """After a release: forget what left, or hold it again, oldest first, if it did not."""
        if not delivered:
            self._leaving.update(self._held)
            self._held = self._leaving
        self._leaving = OrderedDict()

    def forget_ended(self, now_ms: int) -> None:
        """Drop counts of windows that ended a window ago (memory stays flat over time)."""
        if now_ms < self._next_prune_ms:
            return
        self._next_prune_ms = now_ms + min(self._sizes_ms.values(), default=1000)
        self._counts = {
            slot: n
            for slot, n in self._counts.items()
            if slot[2] + 2 * self._sizes_ms[slot[0]] > now_ms
        }


class CommitPoint:
    """Offsets of handled batches, handed out for commit once none of their counts is held."""

    def __init__(self) -> None:
        self._batches: deque[tuple[int, dict[kafka.Partition, int]]] = deque()

    def handled(self, batch: int, offsets: dict[kafka.Partition, int]) -> None:
        """A batch's tallies were published or held; its next offsets."""
        self._batches.append((batch, offsets))

    def committable(self, oldest_held: int | None) -> dict[kafka.Partition, int]:
        """Offsets to commit now: up to the batch before the oldest one with a held count."""
        offsets: dict[kafka.Partition, int] = {}
        while self._batches and (oldest_held is None or self._batches[0][0] < oldest_held):
            offsets.update(self._batches.popleft()[1])
        return offsets


def merge(into: Tally, other: Tally) -> Tally:
    """Fold ``other`` (same topology, workload and window) into ``into``."""
    into.count += other.count
    into.first_append_ms = min(into.first_append_ms, other.first_append_ms)
    into.priority = max(into.priority, other.priority)
    room = UUID_SAMPLE - len(into.uuids)
    if room > 0:
        into.uuids.extend(other.uuids[:room])
    return into


class _Route:
    """What every detection with one (rule, priority, source, tags, namespace, pod, owners) does."""

    __slots__ = (
        "cluster",
        "count",
        "detail",
        "excluded",
        "kind",
        "named",
        "placement",
        "priority",
        "refused",
        "source",
        "targets",
        "workload",
        "workload_key",
    )

    def __init__(self, kind: str, detection: Detection) -> None:
        self.kind = kind
        self.cluster = detection.cluster
        self.priority = detection.priority
        self.source = detection.source
        self.count = 0
        #: (topology name, window size in ms) for each matched topology.
        self.targets: tuple[tuple[str, int], ...] = ()
        self.workload: WorkloadRef | None = None
        self.workload_key = ""
        #: topologies that would have matched but for their excluded namespaces
        self.excluded: tuple[str, ...] = ()
        #: the cluster field as written, and what placing it did (``fleets.Fleet.place``)
        self.named = ""
        self.placement: fleets.Placement = "own"
        #: why every detection of this route is dead-lettered, with the dead letter's detail
        self.refused: reasons.DeadLetter | None = None
        self.detail = ""


def _add(tallies: dict[_Slot, Tally], route: _Route, detection: Detection, timestamp: int) -> None:
    """Count one detection into the tally of each topology it matched."""
    workload_key = route.workload_key
    for name, size_ms in route.targets:
        start = timestamp - timestamp % size_ms
        slot = (name, workload_key, start)
        tally = tallies.get(slot)
        if tally is None:
            assert route.workload is not None
            tallies[slot] = start_tally(
                name,
                route.workload,
                start,
                timestamp,
                detection.rule,
                detection.priority,
                detection.pod or "",
                detection.uuid,
                route.cluster,
            )
            continue
        tally.count += 1
        tally.first_append_ms = min(tally.first_append_ms, timestamp)
        tally.priority = max(tally.priority, detection.priority)
        if detection.uuid and len(tally.uuids) < UUID_SAMPLE:
            tally.uuids.append(detection.uuid)


def _summarise(routes: Mapping[tuple[object, ...], _Route], result: BatchResult) -> None:
    """Fold each route's count into the batch's counters (once per route, not per event)."""
    for key, route in routes.items():
        result.consumed[(route.priority, route.source)] += route.count
        if route.placement not in ("own", "member"):
            result.fields[(route.named, route.placement)] += route.count
        if route.kind == "host":
            result.host_events += route.count
        elif route.excluded:
            result.excluded_detections += route.count
            for name in route.excluded:
                result.excluded[name] += route.count
        elif route.kind == "unmatched":
            result.unmatched += route.count
        elif route.workload is not None:
            identity = (route.cluster, key[4], key[5], route.workload)
            result.identities[identity] += route.count  # type: ignore[index]
        for name, _ in route.targets:
            result.matched[name] += route.count
            result.rules[(name, key[0])] += route.count  # type: ignore[index]
