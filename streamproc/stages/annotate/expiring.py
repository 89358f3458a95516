"""Expiry: observations end on time, across restarts, and only what streamproc added goes.

The schedule lives on the pods themselves (``streamproc.io/expires-at``, found through the
``streamproc.io/observed`` label), never only in memory: on start the expirer lists the pods it
manages and schedules each, so a restarted annotator still removes what it applied. It re-lists
every ``expiry_resync_s`` to pick up extensions written by another replica. It removes with a
``resourceVersion`` precondition, computed from the pod as the cluster cache last saw it (one
request per pod) or, without a current copy, as re-read; an extension that lands in between
wins (409, re-read, reschedule) instead of being erased. Observations that end together (windows
are epoch-aligned, so under an incident thousands do) are ended several at once, in the API
budget's ``expire`` lane: at the budget's rate, taking turns with new actions rather than
queueing them behind the burst; their Events have a budget of their own. While the API server
is unreachable, due expiries wait and are applied when it answers again. With several annotate
replicas each expires only the pods of the workloads it owns (``ownership``), so every pod is
released, and its Event and audit record written, once. With ``--prometheus-url`` the Event and
the record wait for the observation's network evidence, read after the release in bounded
background work (``evidencing``): the release itself never waits for Prometheus. While it holds
a pod's observation it exports its start (``streamproc_observed_pod_since_seconds``), which the
evidence dashboard and ``streamproc evidence`` join Retina's series on.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from streamproc.clients import kube, metrics, prometheus
from streamproc.cluster import marking, releasing
from streamproc.cluster.cache import ClusterCache
from streamproc.model import conventions, evidence, marks, outcomes
from streamproc.model.ownership import Ownership
from streamproc.settings import DEFAULTS
from streamproc.stages.annotate import auditing, evidencing

log = logging.getLogger("streamproc.expire")
_RETRY_S = 2.0


def concurrency_of(api_concurrency: int) -> int:
    """Expiries in flight at once: half the API requests in flight (``--api-concurrency``).

    So new actions always find a connection free: the budget's lanes share the rate, this
    shares the connections.
    """
    return max(1, api_concurrency // 2)


class Expirer:
    """A schedule of (expires_at, object), fed by the annotator and by the cluster."""

    def __init__(
        self,
        client: kube.Kube,
        *,
        resync_s: float,
        dry_run: bool = False,
        auditor: auditing.Auditor | None = None,
        clock: Callable[[], float] = time.time,
        ownership: Ownership | None = None,
        cache: ClusterCache | None = None,
        policy: marks.Policy | None = None,
        concurrency: int = concurrency_of(DEFAULTS.api_concurrency),
        changed: Callable[[str], None] | None = None,
        evidence_from: prometheus.Prometheus | None = None,
        evidence_total_s: float = 2 * DEFAULTS.evidence_timeout_s,
        evidence_delay_s: float = DEFAULTS.evidence_delay_s,
    ) -> None:
        #: told the topology of every observation it ends (``Annotator``'s ``changed``)
        self.changed = changed or (lambda _topology: None)
        #: the pods as listed and watched: a resync reads the marked ones there, not the API,
        #: and a release is written from the copy there without reading the pod first
        self._cache = cache
        #: what the loaded topologies write: marks beyond it are refused and ended at once
        self.policy = policy or marks.Policy()
        self._concurrency = max(1, concurrency)
        #: which pods are this replica's to expire (all of them in a single process)
        self.ownership = ownership or Ownership.everything()
        self.ownership.on_change(self._reassigned)
        self._resync_now = False
        #: what "now" is (tests move it forward instead of waiting for a TTL to pass)
        self.clock = clock
        self._kube = client
        self._auditor = auditor or auditing.NullAuditor()
        #: has each expiry's Event and records written, after reading its evidence from
        #: ``evidence_from`` (a Prometheus) when there is one, at once otherwise
        self.evidencer = evidencing.Evidencer(
            evidence_from,
            self._ended,
            self._flush,
            total_s=evidence_total_s,
            delay_s=evidence_delay_s,
        )
        self._resync_s = resync_s
        self._dry_run = dry_run
        self._heap: list[tuple[float, kube.ObjectRef]] = []
        self._due: dict[kube.ObjectRef, tuple[float, str]] = {}
        self._wake = asyncio.Event()
        self._gauge_stale = False
        self.expired = 0
        #: the node of each observed pod, and how many observed pods each node has
        self._nodes: dict[kube.ObjectRef, str] = {}
        self._per_node: Counter[str] = Counter()
        #: the labels of each pod's ``streamproc_observed_pod_since_seconds`` series
        self._since: dict[kube.ObjectRef, tuple[str, ...]] = {}
        #: the earliest start seen of each pod's observation: ``observed-since`` is on the pod,
        #: where its tenant can move it later (or break it) to shrink its own evidence
        self._starts: dict[kube.ObjectRef, float] = {}
        #: the resync round each object was last scheduled or listed in (a resync forgets what
        #: is no longer marked: a release by hand)
        self._round = 0
        self._seen: dict[kube.ObjectRef, int] = {}

    def schedule(
        self,
        key: kube.ObjectRef,
        until: float,
        topology: str,
        node: str = "",
        *,
        since: float | None = None,
        workload: tuple[str, str, str] | None = None,
    ) -> None:
        """Remember when an observation ends (a later time replaces an earlier one).

        ``since`` and ``workload`` (when known) publish the pod's observed-since gauge; the
        earliest ``since`` seen is kept (a later one from the pod's marks does not shrink it).
        """
        self._seen[key] = self._round
        if since is not None and key.kind == "Pod":
            since = min(since, self._starts.get(key, since))
            self._starts[key] = since
            if workload is not None:
                self._publish_since(key, since, topology, workload)
        if node and self._nodes.get(key) != node:
            self._forget_node(key)
            self._nodes[key] = node
            self._per_node[node] += 1
        known = self._due.get(key)
        if known is not None and known[0] >= until:
            return
        self._due[key] = (until, topology)
        heapq.heappush(self._heap, (until, key))
        self._gauge_stale = True  # published by the run loop, once per turn
        self._wake.set()

    def _reassigned(self) -> None:
        """Partitions moved: forget the schedule and rebuild it from the pods now owned."""
        self._resync_now = True
        self._wake.set()

    def wake(self) -> None:
        """Look at the schedule now (after ``clock`` moved, or anything else changed)."""
        self._wake.set()

    def observed_on(self, node: str) -> int:
        """Pods under observation on ``node`` (Retina's filter map holds their IPs)."""
        return self._per_node.get(node, 0)

    def observing(self, ref: kube.ObjectRef) -> bool:
        """Whether the pod (or Namespace object) is under observation now."""
        return ref in self._due

    def _forget_node(self, key: kube.ObjectRef) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self._per_node[node] -= 1
            if self._per_node[node] <= 0:
                del self._per_node[node]

    @property
    def active(self) -> dict[kube.ObjectRef, tuple[float, str]]:
        """Pods (and Namespace objects) under observation now, with expiry and topology."""
        return dict(self._due)

    def _publish_since(
        self, key: kube.ObjectRef, since: float, topology: str, workload: tuple[str, str, str]
    ) -> None:
        labels = (key.namespace, key.name, workload[1], workload[2], topology)
        old = self._since.get(key)
        if old is not None and old != labels:
            with contextlib.suppress(KeyError):
                metrics.observed_pod_since.remove(*old)
        self._since[key] = labels
        metrics.observed_pod_since.labels(*labels).set(since)

    def started(self, key: kube.ObjectRef) -> float | None:
        """The earliest start seen of the pod's observation now (None: none known)."""
        return self._starts.get(key) if key in self._due else None

    def _forget_since(self, key: kube.ObjectRef) -> None:
        self._starts.pop(key, None)
        self._seen.pop(key, None)
        labels = self._since.pop(key, None)
        if labels is not None:
            with contextlib.suppress(KeyError):
                metrics.observed_pod_since.remove(*labels)

    def _publish_gauge(self) -> None:
        if not self._gauge_stale:
            return
        self._gauge_stale = False
        counts: dict[str, int] = {}
        for _, topology in self._due.values():
            counts[topology] = counts.get(topology, 0) + 1
        for topology, n in counts.items():
            metrics.observations_active.labels(topology=topology).set(n)
        for sample in next(iter(metrics.observations_active.collect())).samples:
            topology = sample.labels.get("topology", "")
            if topology and topology not in counts:
                metrics.observations_active.labels(topology=topology).set(0)

    async def resync(self) -> None:
        """Schedule every managed pod from its own annotations; forget what is no longer marked.

        The round is counted before the listing: a pod scheduled while it is under way (the
        listing may predate its marks) is not forgotten.
        """
        self._round += 1
        listing_round = self._round
        selector = f"{conventions.OBSERVED_LABEL}=true"
        if self._cache is not None and self._cache.pods_synced:
            pods = [info.object() for info in self._cache.marked()]
        else:
            pods = await self._kube.list_pods(None, label_selector=selector)
        # list items carry no kind: say which are Namespace objects (``scope: namespace``)
        namespaces = await self._kube.list_observed_namespaces(selector)
        found = [(kube.ObjectRef.of(p), p) for p in pods]
        found += [(kube.ObjectRef.namespace_object(_name(n)), n) for n in namespaces]
        self._round += 1
        listed = {ref for ref, _ in found}
        for ref in [
            r for r in self._due if r not in listed and self._seen.get(r, -1) < listing_round
        ]:
            # no longer marked (released by hand, or the pod is gone) and not scheduled since
            # the last listing: forget it, and its gauge, now rather than at its old due time;
            # under acns-metric-filters its filters go with it (the reconciler is told)
            _, topology = self._due.pop(ref)
            self.changed(topology)
            self._forget_node(ref)
            self._forget_since(ref)
            self._gauge_stale = True
        for ref, obj in found:
            if not self.ownership.owns(obj):
                continue  # another annotate replica's: it expires it
            read = marking.read(obj, now=self.clock(), policy=self.policy)
            if isinstance(read, marks.Marks):
                node = str((obj.get("spec") or {}).get("nodeName") or "")
                self.schedule(
                    ref, read.until, read.topology, node, since=read.since, workload=read.workload
                )
            else:
                # refused marks (or none under the label) are ended now, not kept forever, and
                # take no slot of the node budget meanwhile
                self.schedule(ref, 0.0, "unknown")

    async def run(self, stop: asyncio.Event) -> None:
        """Expire on time until ``stop``; resync at start and periodically."""
        with kube.lane("expire"):
            self.evidencer.open()
            try:
                await self._run(stop)
            finally:
                # evidence still being read gets a moment; then every record is written
                await self.evidencer.close()

    async def _run(self, stop: asyncio.Event) -> None:
        next_resync = 0.0
        while not stop.is_set():
            now = self.clock()
            if self._resync_now:
                self._resync_now = False
                self._forget_all()
                next_resync = now
            if now >= next_resync:
                try:
                    await self.resync()
                    next_resync = now + self._resync_s
                except kube.KubeError as exc:
                    metrics.stage_errors.labels(stage="expire", error=type(exc).__name__).inc()
                    log.warning("expiry resync failed: %s", exc)
                    next_resync = now + _RETRY_S
            await self.expire_due(stop)
            # bounded, and shielded so a slow broker only delays the records, never an expiry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._auditor.flush()), timeout=2.0)
            self._publish_gauge()
            wait = min(next_resync, self._heap[0][0] if self._heap else next_resync) - self.clock()
            self._wake.clear()
            stop_task = asyncio.ensure_future(stop.wait())
            wake_task = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait(
                {stop_task, wake_task}, timeout=max(0.01, wait), return_when=asyncio.FIRST_COMPLETED
            )
            stop_task.cancel()
            wake_task.cancel()

    async def expire_due(self, stop: asyncio.Event | None = None) -> None:
        """End every observation due by ``clock()`` (``streamproc simulate`` calls it too).

        ``concurrency`` at once, in the API budget's ``expire`` lane; what ``stop`` (or
        partitions moving: the schedule is rebuilt) cut short stays scheduled.
        """
        with kube.lane("expire"):
            while not self._cut_short(stop) and (due := self._take_due()):
                pending = deque(due)
                workers = min(self._concurrency, len(due))
                await asyncio.gather(*(self._work(pending, stop) for _ in range(workers)))
                for ref, _ in pending:
                    if (entry := self._due.get(ref)) is not None:
                        heapq.heappush(self._heap, (entry[0], ref))

    def _cut_short(self, stop: asyncio.Event | None) -> bool:
        return (stop is not None and stop.is_set()) or self._resync_now

    async def _work(
        self, pending: deque[tuple[kube.ObjectRef, str]], stop: asyncio.Event | None
    ) -> None:
        """Expire from ``pending`` one after the other until it is empty or cut short."""
        while pending and not self._cut_short(stop):
            await self._expire(*pending.popleft())

    def _take_due(self) -> list[tuple[kube.ObjectRef, str]]:
        """Take what is due now off the heap: (object, topology), each once."""
        now = self.clock()
        due: dict[kube.ObjectRef, str] = {}
        while self._heap and self._heap[0][0] <= now:
            until, ref = heapq.heappop(self._heap)
            known = self._due.get(ref)
            if known is None or known[0] != until:
                continue  # superseded by a later schedule
            due[ref] = known[1]
        return list(due.items())

    def _cached(self, key: kube.ObjectRef) -> kube.Json | None:
        """The pod as the cluster cache last saw it, if that copy has a resourceVersion."""
        if self._cache is None or key.kind != "Pod" or not self._cache.pods_synced:
            return None
        info = self._cache.pod(key.namespace, key.name)
        return info.object() if info is not None and info.version else None

    async def _expire(self, key: kube.ObjectRef, topology: str) -> None:
        scheduled = self._due.get(key)
        try:
            done = await releasing.release(
                self._kube,
                key,
                extended_after=self.clock(),
                dry_run=self._dry_run,
                owned=self.ownership.owns,
                policy=self.policy,
                known=self._cached(key),
            )
        except kube.Conflict:
            self._retry_later(key, topology, "kept changing (409)")
            return
        except kube.KubeError as exc:
            marking.patched("release", "error")
            self._retry_later(key, topology, str(exc))
            return
        if done.outcome == "extended" and done.until is not None:
            self._due.pop(key, None)
            self.schedule(key, done.until, topology)  # extended meanwhile
            return
        ended_at = self.clock()
        # stamped when it ended, not when written (a simulation's clock may run to infinity)
        stamp = {"time": conventions.format_time(ended_at)} if math.isfinite(ended_at) else {}
        if done.outcome in ("elsewhere", "unmarked"):
            pass  # the partitions moved meanwhile (the new owner expires it), or already ended
        elif done.outcome == "gone":
            marking.patched("release", "not-found")
            self.changed(topology)  # deleted: its metric filters go now, not at the resync
        else:
            marking.patched("release", "ok")
            self.expired += 1
            self.changed(topology)
            metrics.observations_expired.labels(topology=topology).inc()
            records: list[tuple[outcomes.Outcome, dict[str, Any]]] = [
                (
                    "expired",
                    {
                        **stamp,
                        "topology": topology,
                        **_about(key),
                        "removed": list(done.removed),
                        "dry_run": self._dry_run,
                        **({"refused": done.refused} if done.refused else {}),
                    },
                )
            ]
            log.info("observation of %s expired", key)
            if done.yielded:
                records.append(self._yielded(key, topology, done.yielded))
                records[-1][1].update(stamp)
            self.evidencer.submit(
                evidencing.Ending(
                    current=done.current if not self._dry_run else {},
                    message=f"removed {', '.join(done.removed)}",
                    records=records,
                    target=_target(key, done, ended_at, self.started(key)),
                )
            )
        if self._due.get(key) is scheduled:  # not scheduled anew meanwhile (a new observation)
            self._due.pop(key, None)
            self._forget_node(key)
            self._forget_since(key)
        self._gauge_stale = True

    def _ended(self, ending: evidencing.Ending, found: evidence.Evidence | None) -> None:
        """An expiry's Event (with the evidence's line) and its audit records, in that order."""
        message = ending.message if found is None else f"{ending.message}; {found.summary()}"
        if not self._dry_run and ending.current:
            self._kube.post_event(ending.current, "ObservationExpired", message)
        for n, (result, fields) in enumerate(ending.records):
            extra = {"evidence": found.as_dict()} if n == 0 and found is not None else {}
            self._auditor.record(result=result, **fields, **extra)

    async def _flush(self) -> None:
        await self._auditor.flush()

    def _yielded(
        self, key: kube.ObjectRef, topology: str, keys: tuple[str, ...]
    ) -> tuple[outcomes.Outcome, dict[str, Any]]:
        """Keys a person changed or removed were left alone at the end: say so, once."""
        log.info("%s: left %s as a person set them", key, ", ".join(keys))
        return "yielded", {"topology": topology, **_about(key), "annotations": list(keys)}

    def _forget_all(self) -> None:
        for key in list(self._since):
            self._forget_since(key)
        self._starts.clear()
        self._seen.clear()
        self._heap.clear()
        self._due.clear()
        self._nodes.clear()
        self._per_node.clear()
        self._gauge_stale = True

    def _retry_later(self, key: kube.ObjectRef, topology: str, why: str) -> None:
        log.warning("expiry of %s failed (%s); will retry", key, why)
        retry_at = self.clock() + _RETRY_S
        heapq.heappush(self._heap, (retry_at, key))
        self._due[key] = (retry_at, topology)


def _name(obj: kube.Json) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _target(
    key: kube.ObjectRef, done: releasing.Release, ended_at: float, remembered: float | None
) -> evidence.Target | None:
    """The pod and range an expiry's evidence is read over (None: a Namespace object).

    From the earliest start known: the one this expirer saw when it scheduled the pod, or the
    marks' if earlier (a tenant who moves ``observed-since`` later, or breaks it, does not
    shrink or erase its own evidence).
    """
    if key.kind != "Pod":
        return None
    ended = done.ended
    starts = [s for s in (remembered, ended.since if ended is not None else None) if s is not None]
    if not starts:
        # marks from before observed-since existed, never seen with a start: the range is
        # unknown (the evidence says so rather than guess)
        return evidence.Target(key.namespace, (key.name,), ended_at, ended_at)
    return evidence.Target(key.namespace, (key.name,), min(starts), ended_at)


def _about(key: kube.ObjectRef) -> dict[str, Any]:
    """The object an expiry's audit records are about, as every record names it."""
    return {
        "namespace": key.namespace,
        "kind": key.kind,
        "name": key.name,
        "pods": [key.name] if key.kind == "Pod" else [],
    }
