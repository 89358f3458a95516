"""A simulation: recorded detections through the code that decides live, on the detections' time.

Each batch goes through the ingest stage's own ``Ingestor.process`` (parsing, validation, matching,
identity, tallies), each tally through :func:`qualifying.judge` (threshold, deduplication,
escalation: what the windows stage asks), each action through the live ``Annotator`` (caps, node
budget, open or extend, captures) and each expiry through the live ``Expirer``, against a
:class:`~streamproc.simulating.cluster.SimulatedCluster`. Only the clock and the stores differ:
"now" is the detections' time, tables are dicts, the cluster is in memory.

An action is applied at the time its window qualified, as well as a batch tells: not before the
first detection of the tally that crossed the threshold, not after the batch's latest detection
nor the window's end. Actions due at the same moment are handled as one batch, as the annotator
takes what one ``getmany`` returns. Windows are kept while a late tally could still find them
(three window lengths, as the windows stage's tables), so memory follows the live windows, not
the input.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from streamproc.cluster.resolving import WorkloadResolver
from streamproc.model import escalation, marks, qualifying
from streamproc.model.actions import Action
from streamproc.model.topologies import Topology
from streamproc.settings import Settings
from streamproc.simulating.cluster import Follower, SimulatedCluster
from streamproc.simulating.report import Collector, Report
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from streamproc.stages.annotate.node_budget import NodeBudget
from streamproc.stages.ingest import BatchResult, Incoming, Ingestor

#: how often (simulated) the escalation histories are pruned, as the windows stage's timer
_PRUNE_EVERY_MS = 60_000


class _Clock:
    """Simulated "now", in seconds, moved forward by the detections' time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, to: float) -> None:
        self.now = max(self.now, to)


class _Site:
    """One cluster's annotator and expirer (a fleet's detections name their cluster)."""

    def __init__(
        self,
        settings: Settings,
        topologies: Sequence[Topology],
        cluster: SimulatedCluster,
        clock: _Clock,
        collector: Collector,
    ) -> None:
        self.cluster = cluster
        self.expirer = Expirer(
            cluster,
            resync_s=3600.0,
            auditor=collector,
            clock=clock,
            policy=marks.Policy.of(topologies),
        )
        self.follower = Follower(clock)
        resolver = WorkloadResolver(
            cluster, cache_size=settings.resolver_cache_size, ttl_s=settings.resolver_cache_ttl_s
        )
        self.annotator = Annotator(
            settings,
            topologies,
            cluster,
            resolver,
            self.expirer,
            collector,
            self.follower,
            NodeBudget(self.expirer, settings.node_budget),
            clock=clock,
        )


class Simulation:
    """Feed batches of records with :meth:`feed`, then :meth:`finish` for the report."""

    def __init__(
        self,
        settings: Settings,
        topologies: Sequence[Topology],
        cluster: SimulatedCluster,
        *,
        payload_time: bool,
        seed_pods: bool,
        name: str = "",
    ) -> None:
        # a topology in dry run would do nothing live; simulated, it shows what it would do
        self.topologies = [
            t.model_copy(update={"spec": t.spec.model_copy(update={"dry_run": False})})
            for t in topologies
        ]
        self.settings = dataclasses.replace(settings, dry_run=False)
        self._by_name = {t.name: t for t in self.topologies}
        self._clock = _Clock()
        self.report = Report(name, self.topologies, payload_time=payload_time)
        self._collector = Collector(self.report)
        self._local = settings.cluster
        self._sites = {
            self._local: _Site(
                self.settings, self.topologies, cluster, self._clock, self._collector
            )
        }
        self._seed = seed_pods
        resolver = WorkloadResolver(
            None if seed_pods else cluster,
            cache_size=settings.resolver_cache_size,
            ttl_s=settings.resolver_cache_ttl_s,
        )
        # no arrival clock: a simulation reads long after the records arrived
        self.ingestor = Ingestor(
            self.settings, self.topologies, resolver, payload_time=payload_time, clock=None
        )
        #: topology -> (workload key, window start ms) -> [count, acted]
        self._windows: dict[str, dict[tuple[str, int], list[int]]] = {
            t.name: {} for t in self.topologies
        }
        self._histories: dict[str, dict[str, escalation.History]] = {
            t.name: {} for t in self.topologies if t.spec.action.escalation is not None
        }
        self._latest_ms = 0
        self._next_prune_ms = 0
        self._next_window_prune_ms = 0
        self._shortest_ms = int(
            min((t.spec.window.size for t in self.topologies), default=1) * 1000
        )

    def _site(self, cluster: str) -> _Site:
        site = self._sites.get(cluster)
        if site is None:  # another cluster of a fleet: its pods are known from detections only
            site = _Site(
                self.settings, self.topologies, SimulatedCluster(), self._clock, self._collector
            )
            self._sites[cluster] = site
        return site

    async def feed(
        self,
        records: Sequence[Incoming],
        context: tuple[Sequence[bytes], Sequence[bytes]] = ((), ()),
    ) -> None:
        """One batch, as the ingest stage would take it from a ``getmany``.

        ``context``: for files, the lines just before and after the batch (``inputs.Batch``).
        """
        await self.absorb(await self.ingestor.process(records, context=context))

    async def absorb(self, result: BatchResult) -> None:
        """What the ingest code made of one batch (here, or in a worker process), in order."""
        self.report.add_batch(result, self._sites[self._local].cluster.sources)
        if self._seed or len(self._sites) > 1:
            for cluster, namespace, pod, workload in result.identities:
                if self._seed or cluster != self._local:
                    self._site(cluster).cluster.seen(namespace, pod, workload)
        self._latest_ms = max(self._latest_ms, result.latest_ms)
        decided = []
        # ties broken by name: a batch's tallies come in an order its resolver's cache decides,
        # and a worker process's cache has seen other batches than this process's
        for tally in sorted(
            result.tallies.values(),
            key=lambda t: (t.window_start, t.first_append_ms, t.topology, t.workload_key),
        ):
            topology = self._by_name[tally.topology]
            windows = self._windows[topology.name]
            key = (tally.workload_key, tally.window_start)
            state = windows.get(key, [])
            histories = self._histories.get(topology.name)
            verdict = qualifying.judge(
                topology,
                tally,
                state,
                None if histories is None else histories.get(tally.workload_key, []),
            )
            if not state:
                self.report.topology(topology.name).windows += 1
            if histories is not None and verdict.history is not None:
                histories[tally.workload_key] = verdict.history
            if not (state and state[1]):
                windows[key] = verdict.state
            self.report.topology(topology.name).deduplicated += verdict.deduplicated
            if verdict.action is not None:
                end_ms = verdict.action.window_end * 1000
                at_ms = max(tally.first_append_ms, min(end_ms - 1, result.latest_ms))
                decided.append((at_ms, verdict.action))
        await self._act(decided)
        self._forget(self._latest_ms)
        self.report.most_live_windows = max(self.report.most_live_windows, self.live_windows)

    async def _act(self, decided: list[tuple[int, Action]]) -> None:
        """Expire what is due, then apply, moment by moment (one batch per moment and cluster)."""
        decided.sort(key=lambda d: d[0])
        for (at_ms, cluster), due in itertools.groupby(decided, lambda d: (d[0], d[1].cluster)):
            actions = [action for _, action in due]
            for action in actions:
                self.report.decided(action)
            site = self._site(cluster)
            self._clock.advance(at_ms / 1000)
            await site.expirer.expire_due()
            await site.annotator.handle(actions)

    def _forget(self, now_ms: int) -> None:
        """Drop windows no late tally can reach, and histories past ``forgetAfter``."""
        if now_ms < self._next_window_prune_ms:
            return
        self._next_window_prune_ms = now_ms + self._shortest_ms
        for topology in self.topologies:
            keep_ms = int(topology.spec.window.size * 3000)
            windows = self._windows[topology.name]
            stale = [key for key in windows if key[1] + keep_ms < now_ms]
            for key in stale:
                del windows[key]
        if now_ms < self._next_prune_ms:
            return
        self._next_prune_ms = now_ms + _PRUNE_EVERY_MS
        for name, histories in self._histories.items():
            ladder = self._by_name[name].spec.action.escalation
            assert ladder is not None
            for workload in [
                k
                for k, h in histories.items()
                if escalation.forgotten(h, now_ms, ladder.forget_after)
            ]:
                del histories[workload]

    async def finish(self) -> Report:
        """Let every observation run out (its expiry is an API write too); the report."""
        self._clock.advance(float("inf"))
        for site in self._sites.values():
            await site.expirer.expire_due()
            self.report.add_writes(site.cluster.writes)
            self.report.add_intervals(site.follower.intervals)
        self.report.latest_ms = self._latest_ms
        return self.report

    @property
    def live_windows(self) -> int:
        """Windows held now (the benchmark checks memory follows this, not the input)."""
        return sum(len(w) for w in self._windows.values())
