"""Following workloads under observation: pods they create meanwhile get the observation too.

A rollout, a rescheduled pod or a scale-up creates pods the annotator never saw. The follower
reads the pod events of the process's ``ClusterCache`` (one list and watch of all pods, shared
with the resolver) and, while a workload's observation lasts, writes the same observation on
every new pod of that workload; the expirer then ends it with the others. The set of followed
workloads is rebuilt from the pods' own marks in the cache after every full list, so it survives
restarts like the expiry does, and a start costs no request per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamproc import stopping
from streamproc.clients import kube, metrics
from streamproc.cluster import marking
from streamproc.cluster.cache import ClusterCache
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.model import conventions, marks, patches
from streamproc.model.ownership import Ownership
from streamproc.model.topologies import Topology
from streamproc.stages.annotate import auditing
from streamproc.stages.annotate.node_budget import NodeBudget, Scheduler

log = logging.getLogger("streamproc.follow")
_RETRY_S = 2.0


@dataclass
class _Followed:
    until: float
    topology: str
    rule: str
    action_id: str
    #: the escalation level's annotation ("3/4"), empty without a ladder
    level: str = ""


class Follower:
    """Keeps new pods of observed workloads observed until the observation ends."""

    def __init__(
        self,
        client: kube.Kube,
        resolver: WorkloadResolver,
        topologies: Sequence[Topology],
        scheduler: Scheduler,
        auditor: auditing.Auditor | None = None,
        *,
        budget: NodeBudget | None = None,
        clock: Callable[[], float] = time.time,
        ownership: Ownership | None = None,
        cache: ClusterCache | None = None,
        changed: Callable[[str], None] | None = None,
        policy: marks.Policy | None = None,
    ) -> None:
        #: told the topology of every pod it starts observing (``Annotator``'s ``changed``)
        self._changed = changed or (lambda _topology: None)
        #: the pods as listed and watched; one of its own (run with the follower) if not given
        self.cache = cache or ClusterCache(client)
        self._runs_cache = cache is None
        if resolver.cache is None:  # resolve owners from the same copy, not one GET each
            resolver.cache = self.cache
        self._events: asyncio.Queue[tuple[str, kube.Json]] = asyncio.Queue()
        self.cache.subscribe(lambda kind, pod: self._events.put_nowait((kind, pod)))
        #: which workloads are this replica's to follow (all of them in a single process)
        self.ownership = ownership or Ownership.everything()
        self.ownership.on_change(self._reassigned)
        self._relist = asyncio.Event()
        #: every observed workload in the cluster, whoever owns it: (until, topology), from the
        #: pods' marks as listed and watched (what ``maxObservations`` counts)
        self._everywhere: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._prune_at = 1000
        #: what "now" is (tests move it forward instead of waiting for a TTL to pass)
        self.clock = clock
        self._kube = client
        #: Retina's per-node budget, shared with the annotator (none: no limit)
        self._budget = budget or NodeBudget(scheduler, 0)
        self._resolver = resolver
        self._topologies = {t.name: t for t in topologies}
        #: what the topologies write: the bounds the pods' own marks are read against, and the
        #: key that seals them
        self._policy = policy or marks.Policy.of(topologies)
        self._scheduler = scheduler
        self._auditor = auditor or auditing.NullAuditor()
        self._followed: dict[tuple[str, str, str], _Followed] = {}
        self.followed_pods = 0
        #: the resourceVersion of the last pod list or watch event handled
        self.resource_version = ""

    def follow(
        self,
        namespace: str,
        kind: str,
        name: str,
        *,
        until: float,
        topology: str,
        rule: str,
        action_id: str,
        level: str = "",
    ) -> None:
        """Follow a workload until ``until`` (a later time replaces an earlier one)."""
        key = (namespace, kind, name)
        known = self._followed.get(key)
        if known is None or known.until < until:
            self._followed[key] = _Followed(until, topology, rule, action_id, level)

    def followed(self) -> dict[tuple[str, str, str], tuple[float, str]]:
        """Unexpired observations: (namespace, kind, name) -> (until, topology)."""
        now = self.clock()
        return {k: (f.until, f.topology) for k, f in self._followed.items() if f.until > now}

    def observing(self, topology: str) -> set[tuple[str, str, str]]:
        """Workloads under an unexpired observation of ``topology``, in the whole cluster.

        Those this replica follows, and those the pods' marks show for other replicas (as of
        the last watch event: a few workloads admitted at once by two replicas can overshoot
        ``maxObservations`` by that much).
        """
        now = self.clock()
        mine = {k for k, f in self._followed.items() if f.topology == topology and f.until > now}
        return mine | {k for k, (u, t) in self._everywhere.items() if t == topology and u > now}

    def _reassigned(self) -> None:
        """Partitions moved: list again and follow exactly the workloads now owned."""
        self._relist.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the cache's pod events until ``stop``; rebuild after every full list."""
        cache = asyncio.create_task(self.cache.run(stop)) if self._runs_cache else None
        try:
            while not stop.is_set():
                event = asyncio.create_task(self._events.get())
                stopper = asyncio.create_task(stop.wait())
                relist = asyncio.create_task(self._relist.wait())
                await asyncio.wait({event, stopper, relist}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                relist.cancel()
                if not event.done():
                    event.cancel()
                try:
                    if self._relist.is_set():
                        self._relist.clear()
                        self._followed.clear()
                        await self._rebuild()
                    if event.done() and not event.cancelled():
                        await self._handle(*event.result())
                except kube.KubeError as exc:
                    metrics.stage_errors.labels(stage="follow", error=type(exc).__name__).inc()
                    log.warning("following interrupted (%s); looking again", exc)
                    await stopping.pause(stop, _RETRY_S)
                    self._relist.set()  # a pod may have been missed: go through them all
        finally:
            if cache is not None:
                cache.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cache

    async def _handle(self, kind: str, pod: kube.Json) -> None:
        if kind == "LISTED":
            self._followed.clear()
            await self._rebuild()
        elif kind in ("ADDED", "MODIFIED"):
            self._note(pod)
            await self._consider(pod)
        version = (pod.get("metadata") or {}).get("resourceVersion")
        self.resource_version = str(version or self.cache.resource_versions.get("pods", ""))

    async def _rebuild(self) -> None:
        """What is followed, from the marked pods in the cache; then the pods that lack it."""
        for info in self.cache.marked():
            await self._remember(info.object())
        if not self._followed:
            return
        for info in self.cache.pods():
            if info.marked:
                continue
            ref = await self._resolver.workload_of(info.object())
            if (ref.namespace, ref.kind, ref.name) in self._followed:
                try:  # a new pod of a followed workload: read it whole to patch it
                    await self._consider(await self._kube.get_pod(info.namespace, info.name))
                except kube.NotFound:
                    continue

    def _read(self, pod: kube.Json) -> marks.Marks | None:
        """The pod's marks if they are an observation streamproc could have written, else None."""
        found = marking.read(pod, now=self.clock(), policy=self._policy)
        return found if isinstance(found, marks.Marks) and found.labelled else None

    def _note(self, pod: kube.Json, found: marks.Marks | None = None) -> None:
        """Count a marked pod's workload as observed, whichever replica owns it."""
        found = found or self._read(pod)
        if found is None or found.workload is None:
            return
        known = self._everywhere.get(found.workload)
        if known is None or known[0] < found.until:
            self._everywhere[found.workload] = (found.until, found.topology)
        if len(self._everywhere) > self._prune_at:  # ended observations go, now and then
            now = self.clock()
            self._everywhere = {k: v for k, v in self._everywhere.items() if v[0] > now}
            self._prune_at = 2 * len(self._everywhere) + 1000

    async def _remember(self, pod: kube.Json) -> None:
        """Rebuild what is followed from a pod that carries streamproc's marks."""
        found = self._read(pod)
        if found is None:
            return  # refused marks are followed by nothing (and counted nowhere)
        self._note(pod, found)
        if found.until <= self.clock() or not self.ownership.owns(pod):
            return
        ref = await self._resolver.workload_of(pod)
        self.follow(
            ref.namespace,
            ref.kind,
            ref.name,
            until=found.until,
            topology=found.topology,
            rule=found.rule,
            action_id=found.action_id,
            level=found.level,
        )

    async def _consider(self, pod: kube.Json) -> None:
        if not self._followed:
            return
        meta = pod.get("metadata") or {}
        if (
            meta.get("deletionTimestamp")
            or (meta.get("labels") or {}).get(conventions.OBSERVED_LABEL) == "true"
        ):
            return
        ref = await self._resolver.workload_of(pod)
        key = (ref.namespace, ref.kind, ref.name)
        followed = self._followed.get(key)
        now = self.clock()
        if followed is None:
            return
        if followed.until <= now:
            del self._followed[key]
            return
        topology = self._topologies.get(followed.topology)
        if topology is None:
            return
        patch = patches.observe(
            pod,
            annotations=topology.spec.action.pod_annotations(),
            until=followed.until,
            topology=followed.topology,
            rule=followed.rule,
            action_id=followed.action_id,
            previous=marking.read(pod, now=now, policy=self._policy),
            level=followed.level,
            now=now,
            metric_filters=topology.spec.action.filter_metrics(),
            sealer=self._policy.sealer,
        )
        if patch is None:
            return
        target = kube.ObjectRef.of(pod)
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        admitted, reserved = self._budget.admit(
            [pod], self._auditor, ref, topology=followed.topology, rule=followed.rule
        )
        if not admitted:
            return
        try:
            await self._kube.write_patch(target, patch)
        except (kube.NotFound, kube.Conflict):
            return  # gone, or changed: the next event for it brings the current version
        finally:
            self._budget.release(reserved)
        marking.patched("follow", "ok")
        self._kube.post_event(
            pod,
            "ObservationStarted",
            f"new pod of {ref.kind}/{ref.name}, observed until "
            f"{conventions.format_time(followed.until)} (topology {followed.topology})",
        )
        self.followed_pods += 1
        self._changed(followed.topology)
        self._scheduler.schedule(
            target,
            followed.until,
            followed.topology,
            node,
            since=patch.since,
            workload=(ref.namespace, ref.kind, ref.name),
        )
        self._auditor.record(
            result="followed",
            topology=followed.topology,
            rule=followed.rule,
            namespace=ref.namespace,
            kind=ref.kind,
            name=ref.name,
            pods=[target.name],
            annotations=topology.spec.action.pod_annotations(),
            expires_at=conventions.format_time(followed.until),
        )
