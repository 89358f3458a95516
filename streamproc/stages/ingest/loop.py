"""The ingest stage's Kafka loop and its domain step: a batch of raw records becomes tallies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from streamproc import reasons
from streamproc.clients import kafka, metrics
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.model import events, fleets
from streamproc.model.events import Detection, ParseError
from streamproc.model.matching import Matcher
from streamproc.model.tallies import Tally
from streamproc.model.topologies import Topology
from streamproc.model.workloads import WorkloadRef, in_cluster
from streamproc.settings import Settings
from streamproc.stages.ingest.batches import STAGE, BatchResult, Incoming, Parsed
from streamproc.stages.ingest.gating import CommitPoint, TallyGate
from streamproc.stages.ingest.routing import Route, add_to_tallies, summarise
from streamproc.stages.ingest.timing import PartitionEnds, in_step, retime

log = logging.getLogger("streamproc.ingest")


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
        clock: Callable[[], float] | None = time.time,
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
        #: the arrival clock record times are judged by (the API server's time where known);
        #: None believes every record time (``streamproc simulate`` reads long after arrival)
        self.clock = clock
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

    async def process(  # noqa: C901 - the hot loop stays whole: a call per record costs more
        self,
        records: Iterable[Incoming],
        ends: PartitionEnds | None = None,
        *,
        context: tuple[Sequence[bytes], Sequence[bytes]] = ((), ()),
    ) -> BatchResult:
        """Turn one batch of raw records into tallies and dead letters (no Kafka I/O).

        ``context``: with payload time, the lines just before and after the batch in its file,
        for telling a lone outlier from a jump at the batch's edges (``in_step``).

        Per detection this costs one parse, one dict look-up of its *route* (what a detection
        with this rule, priority, source, tags, namespace, pod and owners does: skipped, or
        counted for which topologies and which workload; decided once per batch) and one tally
        update per matched topology. ``ends`` are the partitions' ends as seen before the batch
        was read: records past them are fresh.
        """
        result = BatchResult()
        arrival = int(self.clock() * 1000) if self.clock else 0
        tolerance = int(self.settings.tolerance_s * 1000)
        # the common case, a record time near its arrival, costs two comparisons
        lowest, highest = arrival - tolerance, arrival + tolerance
        if self.payload_time or self.clock is None:
            lowest, highest = -(2**63), 2**63  # every time is believed
        routes: dict[tuple[object, ...], Route] = {}
        waiting: dict[tuple[object, ...], list[tuple[Detection, int]]] = {}
        tallies = result.tallies
        payload_time = self.payload_time
        latest = 0
        for record, detection, timestamp in (
            self._on_payload_time(records, result, context)
            if payload_time
            else self._parsed(records, result)
        ):
            if not lowest <= timestamp <= highest:  # the rare case
                timestamp = retime(record, timestamp, arrival, tolerance, ends, result)  # noqa: PLW2901 - the time it is windowed at
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
            add_to_tallies(tallies, route, detection, timestamp)
        if waiting:
            resolved = await self._resolve(
                {(routes[k].cluster, k[4], k[5]) for k in waiting}  # type: ignore[misc]
            )
            for key, detections in waiting.items():
                route = routes[key]
                route.workload = resolved[(route.cluster, key[4], key[5])]  # type: ignore[index]
                route.workload_key = in_cluster(route.cluster, route.workload.key)
                for detection, timestamp in detections:
                    add_to_tallies(tallies, route, detection, timestamp)
        result.latest_ms = latest
        summarise(routes, result)
        return result

    def _on_payload_time(
        self,
        records: Iterable[Incoming],
        result: BatchResult,
        context: tuple[Sequence[bytes], Sequence[bytes]],
    ) -> list[Parsed]:
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

    def _parsed(self, records: Iterable[Incoming], result: BatchResult) -> Iterator[Parsed]:
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

    def _route(self, detection: Detection, topic: str) -> Route:
        named = detection.cluster
        cluster, placement = self.fleet.place(named)
        refused = fleets.REFUSED.get(placement)
        if refused is not None:
            route = Route("refused", detection)
            route.refused, route.detail = refused, self.fleet.refusal(named)
        else:
            route = self._matched(detection._replace(cluster=cluster), topic)
        route.named, route.placement = named, placement
        return route

    def _matched(self, detection: Detection, topic: str) -> Route:
        if detection.namespace is None or detection.pod is None:
            return Route("host", detection)
        matcher = self.matchers[topic]
        matched = matcher.match(detection)
        if not matched:
            route = Route("unmatched", detection)
            route.excluded = tuple(t.name for t in matcher.excluded(detection))
            return route
        route = Route("match", detection)
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
        for why, n in result.retimed.items():
            metrics.record_times_retimed.labels(stage=STAGE, reason=why).inc(n)

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

        def clients() -> tuple[kafka.Producer, kafka.Consumer]:
            # A batch's tallies are all sent before the first is awaited, so they share one
            # request anyway: lingering would only delay it.
            return (
                kafka.producer(self.settings, linger_ms=0),
                kafka.consumer(self.settings, self.source_topics, self.settings.groups.ingest),
            )

        async with kafka.started_when_reachable(
            self.settings, stop, clients, "ingest was connecting"
        ) as started:
            if started is None:
                return  # asked to stop while Kafka was away
            producer, consumer = started
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
        ends = PartitionEnds()
        try:
            while not stop.is_set():
                ends.note(consumer)
                batch, bad = await reader.getmany(
                    timeout_ms=int(self.settings.flush_interval_s * 1000) or 1,
                    max_records=self.settings.batch_max_records,
                )
                handled = not batch or await self._handle(reader, producer, batch, commits, ends)
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
        ends: PartitionEnds | None = None,
    ) -> bool:
        """Publish one batch's tallies and dead letters; False when it must be read again."""
        records = [r for rs in batch.values() for r in rs]
        metrics.records_consumed.labels(stage=STAGE).inc(len(records))
        try:
            result = await self.process(records, ends)
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
