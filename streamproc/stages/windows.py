"""Stage 2, windows: the Faust app that turns tallies into exactly one action per workload window.

Each topology has a tumbling windowed table keyed by ``topology/namespace/Kind/name`` whose value
is ``[count, acted]``; its changelog topic makes the state survive restarts and rebalances. When a
window's count first reaches the topology's threshold the stage emits one action and marks the
window acted; later detections in that window are counted as deduplicated. Faust flushes the
action to the broker before it commits the tally's offset (at-least-once); should a crash land
between the two, the replayed action carries the same deterministic id, and the annotator
recognises it on the pods and writes nothing (``conventions.ACTION_ID``). That guard, not the
broker's transactions, is what keeps "one patch per pod per window" true, so it holds on brokers
without exactly-once support too.

Faust windows by each tally's Kafka record time, and its window arithmetic never returns for a
time past window size x 2**31 s (year 9999 stalled the stage for good): a tally whose times are
negative, past that, or too far ahead of this stage's clock is dead-lettered ``invalid-timestamp``
before Faust sees it (``clocks.tally_time_refused``).

This module is the only importer of faust. Faust pays a per-event cost that is fine for tallies
(one per workload per ingest flush) and would not be for raw detections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_kafka

from streamproc import clocks, reasons
from streamproc.clients import kafka, metrics
from streamproc.model import escalation, fleets, qualifying
from streamproc.model.tallies import Tally, TallyError
from streamproc.model.topologies import Topology
from streamproc.settings import KafkaSecurity, Settings

log = logging.getLogger("streamproc.windows")
STAGE = "windows"
#: why the windows stage dead-letters a tally (the metric label and ``streamproc.reason``)


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """Faust's consumer with the stages' fetch wait (``Settings.fetch_max_wait_ms``).

    Faust hard-codes ``fetch_max_wait_ms=1500``. Apache Kafka answers a waiting fetch as soon as
    data arrives, so the value costs nothing there; brokers that do not wake a parked fetch (the
    embedded tansu; docs/measurements.md) would add up to 1.5 s to every action.
    A short wait bounds that for every broker, at the price of a few idle fetches a second.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        app: _App = self.app  # type: ignore[assignment]
        consumer._fetch_max_wait_ms = app.fetch_max_wait_ms  # noqa: SLF001 - read at start
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class _App(faust.App):
    #: set by build_app from the settings, before the consumer starts
    fetch_max_wait_ms: int

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


def faust_credentials(security: KafkaSecurity) -> faust.types.auth.CredentialsT | None:
    """The same TLS and SASL settings the aiokafka stages use, in Faust's terms."""
    context = kafka.ssl_context(security)
    if security.sasl:
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password,
            ssl_context=context,
            mechanism=security.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_broker_url(bootstrap_servers: str) -> str:
    """Faust wants ``kafka://h1:p1;kafka://h2:p2`` where Kafka clients take ``h1:p1,h2:p2``."""
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


class StageCrashed(RuntimeError):
    """The Faust app stopped on an error of its own (an agent or a timer raised)."""


async def until_crashed(app: Any, stop: asyncio.Event) -> None:
    """Return once ``stop`` is set; raise StageCrashed if the app crashes or stops first.

    A crashed Faust app leaves the process running but processing nothing. Ending the process
    instead lets its supervisor (Kubernetes) restart it, and the tallies it had not committed
    are read again.
    """
    stopping = asyncio.ensure_future(stop.wait())
    ended = asyncio.ensure_future(app.wait_until_stopped())
    try:
        await asyncio.wait({stopping, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        ended.cancel()
    if stop.is_set():
        return
    reason = app.crash_reason
    what = f"failed ({type(reason).__name__}: {reason})" if reason else "stopped on its own"
    raise StageCrashed(
        f"the windows stage {what}; exiting so that it is restarted and reads the tallies it "
        "had not committed again"
    )


def _forget_every_s(topologies: Sequence[Topology]) -> float:
    """How often histories past ``forgetAfter`` are dropped: a tenth of the shortest, 1-60 s.

    A week's ``forgetAfter`` needs no sweep more often than a minute; a short one (the lab's
    ``--speed``, a benchmark) is honoured within a tenth of itself.
    """
    ladders = [t.spec.action.escalation for t in topologies]
    shortest = min((ladder.forget_after for ladder in ladders if ladder), default=600.0)
    return max(1.0, min(60.0, shortest / 10))


def build_app(  # noqa: C901, PLR0915 - the agent and timer are closures over the app
    settings: Settings, topologies: Sequence[Topology], datadir: str
) -> faust.App:
    """The windows stage as a Faust app (not started); ``datadir`` is Faust's scratch folder."""
    app = _App(
        settings.groups.windows,  # a Faust app's id is its consumer group
        broker=faust_broker_url(settings.bootstrap_servers),
        broker_credentials=faust_credentials(settings.kafka_security),
        store="memory://",
        datadir=datadir,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=0.5,
        producer_enable_idempotence=settings.enable_idempotence,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        stream_wait_empty=False,
        web_enabled=False,
        table_cleanup_interval=max(1.0, min(30.0, *(t.spec.window.size for t in topologies))),
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    tallies = app.topic(
        settings.topics.tallies,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    #: the actions topic of each cluster of the fleet (each cluster's annotators read only
    #: theirs), or the one topic of a single cluster: never one for a name a record brings
    fleet = fleets.Fleet.of(settings)
    actions_of = {
        cluster: app.topic(
            settings.actions_topic_of(cluster),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )
        for cluster in fleet.clusters
    }
    sightings = fleets.Sightings()

    dead_letters = app.topic(
        settings.topics.dead_letters, key_serializer="raw", value_serializer="raw"
    )
    by_name = {t.name: t for t in topologies}
    ahead_s = clocks.ahead_bound_s(settings.tolerance_s)
    tables = {
        t.name: app.Table(
            f"windows-{t.name}",
            default=list,
            partitions=settings.partitions,
        ).tumbling(
            timedelta(seconds=t.spec.window.size),
            # keep a closed window long enough that late tallies still find it acted.
            expires=timedelta(seconds=t.spec.window.size * 3),
        )
        for t in topologies
    }
    #: per topology with an escalation ladder: workload key -> ``escalation.History``
    histories = {
        t.name: app.Table(f"history-{t.name}", default=list, partitions=settings.partitions)
        for t in topologies
        if t.spec.action.escalation is not None
    }

    def judge(topology: Topology, tally: Tally, state: list[int]) -> qualifying.Verdict:
        """The shared decision, with the workload's escalation history read and written back."""
        history = histories.get(topology.name)
        verdict = qualifying.judge(
            topology, tally, state, None if history is None else history[tally.workload_key]
        )
        if verdict.history is not None and history is not None:
            history[tally.workload_key] = verdict.history
        return verdict

    async def dead_letter(event: Any, reason: reasons.DeadLetter, detail: str) -> None:
        metrics.dead_letters.labels(stage=STAGE, reason=reason).inc()
        message = event.message
        await dead_letters.send(
            key=event.key,
            value=event.value,
            headers=kafka.dead_letter_headers(
                STAGE, reason, detail, message.topic, message.partition, message.offset
            ),
        )

    async def admitted(event: Any) -> tuple[Tally, Topology] | None:
        """The event's tally and its topology, or None once it is dead-lettered (and why)."""
        try:
            tally = Tally.decode(event.value)
        except TallyError as exc:
            await dead_letter(event, "invalid-tally", str(exc))
            return None
        topology = by_name.get(tally.topology)
        if topology is None:
            await dead_letter(event, "unknown-topology", tally.topology)
            return None
        if not fleet.serves(tally.cluster):  # a tally's cluster is as untrusted as the rest
            detail = fleet.refusal(tally.cluster)
            if sightings.first(tally.cluster):
                log.warning("tallies dead-lettered (unknown-cluster): %s", detail)
            await dead_letter(event, "unknown-cluster", detail)
            return None
        # before Faust sees the times: one forged year 9999 stalled this stage for good
        refused = clocks.tally_time_refused(
            event.message.timestamp,
            tally.window_start,
            topology.spec.window.size,
            time.time(),
            ahead_s,
        )
        if refused is not None:
            await dead_letter(event, "invalid-timestamp", refused)
            return None
        return tally, topology

    @app.agent(tallies, name="windows")
    async def windows(stream: Any) -> None:
        async for event in stream.events():
            metrics.records_consumed.labels(stage=STAGE).inc()
            found = await admitted(event)
            if found is None:
                continue
            tally, topology = found
            if tally.forget:  # ``release --forget``: the workload starts the ladder again
                if topology.name in histories:
                    histories[topology.name].pop(tally.workload_key, None)
                log.info("escalation history of %s forgotten", tally.workload_key)
                continue
            window = tables[topology.name][tally.workload_key]
            state = window.current()
            if not state:
                metrics.windows_opened.labels(topology=topology.name).inc()
            verdict = judge(topology, tally, state)
            if (action := verdict.action) is not None:
                # Not awaited one by one: Faust flushes its producer before it commits the
                # tally's offset, so the action is durable before its input is acknowledged.
                topic = actions_of[tally.cluster]
                await topic.send(key=event.key, value=action.encode())
                metrics.actions_emitted.labels(topology=topology.name).inc()
                log.info(
                    "action %s (%d detections, level %d)", action.id, action.count, action.level
                )
            if verdict.deduplicated:
                metrics.detections_deduplicated.labels(topology=topology.name).inc(
                    verdict.deduplicated
                )
            if not (state and state[1]):
                # a window already acted on keeps its state: only the deduplication count moved,
                # and each table write is also a changelog record (half the cost of a tally)
                tables[topology.name][tally.workload_key] = verdict.state

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def report_lag() -> None:
        # From the fetch high watermark and the last offset read, as the other stages do.
        consumer: Any = app.consumer
        lag = 0
        held = [tp for tp in consumer.assignment() if tp.topic == settings.topics.tallies]
        metrics.assigned_partitions.labels(stage=STAGE).set(len(held))
        for tp in held:
            high = consumer.highwater(tp)
            read = consumer._read_offset.get(tp)  # noqa: SLF001 - Faust keeps it nowhere public
            if high is not None and read is not None:
                lag += max(0, high - read - 1)
        metrics.consumer_lag.labels(stage=STAGE).set(lag)

    @app.timer(interval=_forget_every_s(topologies))  # type: ignore[untyped-decorator]
    async def forget_old_offences() -> None:
        # bounded history: a workload whose observation ended and whose offences are older
        # than forgetAfter is dropped (a changelog tombstone, so also after a restart).
        # Faust names a change's changelog partition after the event being processed, and a
        # timer has none (``del table[key]`` here raises TypeError): the partition is the
        # workload's on the tallies topic (its key, hashed as ingest's producer does), and
        # only the replica holding it active drops it (a standby's copy follows the tombstone).
        now_ms = int(time.time() * 1000)
        held = {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == settings.topics.tallies
        }
        for name, table in histories.items():
            ladder = by_name[name].spec.action.escalation
            assert ladder is not None
            for key, history in list(table.data.items()):
                if not escalation.forgotten(history, now_ms, ladder.forget_after):
                    continue
                partition = kafka.partition_of(key.encode(), settings.partitions)
                if partition in held:
                    table.send_changelog(partition, key, None, value_serializer="raw")
                    del table.data[key]
            metrics.escalation_histories.labels(topology=name).set(len(table.data))

    del windows, report_lag, forget_old_offences
    return app
