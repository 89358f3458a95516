"""Following workloads under observation: pods they create meanwhile get the observation too.

A rollout, a rescheduled pod or a scale-up creates pods the annotator never saw. The follower
watches pods in all namespaces (resuming from the last resourceVersion, using bookmarks, and
listing again after a 410) and, while a workload's observation lasts, writes the same
observation on every new pod of that workload; the expirer then ends it with the others. The
set of followed workloads is rebuilt from the pods' own marks when the follower starts, so it
survives restarts like the expiry does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamproc import auditing, conventions, kube, metrics, patches
from streamproc.node_budget import NodeBudget, Scheduler
from streamproc.ownership import Ownership, key_of
from streamproc.resolving import WorkloadResolver
from streamproc.topologies import Topology

log = logging.getLogger("streamproc.follow")
_WATCH_S = 60
_RETRY_S = 2.0


@dataclass
class _Followed:
    until: float
    topology: str
    rule: str
    action_id: str


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
    ) -> None:
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
    ) -> None:
        """Follow a workload until ``until`` (a later time replaces an earlier one)."""
        key = (namespace, kind, name)
        known = self._followed.get(key)
        if known is None or known.until < until:
            self._followed[key] = _Followed(until, topology, rule, action_id)

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
        """List, then watch, until ``stop``; list again after a 410 or a broken stream."""
        version: str | None = None
        while not stop.is_set():
            if self._relist.is_set():
                self._relist.clear()
                self._followed.clear()
                version = None
            watch = asyncio.create_task(self._list_and_watch(version))
            stopper = asyncio.create_task(stop.wait())
            relist = asyncio.create_task(self._relist.wait())
            done, _ = await asyncio.wait(
                {watch, stopper, relist}, return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            relist.cancel()
            if watch not in done:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
                if stop.is_set():
                    return
                continue
            try:
                version = watch.result()
            except kube.Gone:
                version = None
            except kube.KubeError as exc:
                metrics.stage_errors.labels(stage="follow", error=type(exc).__name__).inc()
                log.warning("pod watch interrupted (%s); resuming", exc)
                await _sleep_or_stop(stop, _RETRY_S)

    async def _list_and_watch(self, version: str | None) -> str | None:
        """One watch request (listing first when there is no version); the last version seen."""
        if version is None:
            pods, version = await self._kube.list_pods_versioned()
            for pod in pods:
                await self._remember(pod)
            for pod in pods:
                await self._consider(pod)
            self.resource_version = version
        async for kind, obj in self._kube.watch_pods(version, timeout_s=_WATCH_S):
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED"):
                self._note(obj)
                await self._consider(obj)
            self.resource_version = version
        return version

    def _note(self, pod: kube.Json) -> None:
        """Count a marked pod's workload as observed, whichever replica owns it."""
        meta = pod.get("metadata") or {}
        if (meta.get("labels") or {}).get(conventions.OBSERVED_LABEL) != "true":
            return
        until = patches.expires_at(pod)
        action_id = str((meta.get("annotations") or {}).get(conventions.ACTION_ID) or "")
        parts = key_of(action_id).split("/")  # topology/namespace/Kind/name
        if until is None or len(parts) != 4:
            return
        key = (parts[1], parts[2], parts[3])
        known = self._everywhere.get(key)
        if known is None or known[0] < until:
            self._everywhere[key] = (until, parts[0])
        if len(self._everywhere) > self._prune_at:  # ended observations go, now and then
            now = self.clock()
            self._everywhere = {k: v for k, v in self._everywhere.items() if v[0] > now}
            self._prune_at = 2 * len(self._everywhere) + 1000

    async def _remember(self, pod: kube.Json) -> None:
        """Rebuild what is followed from a pod that carries streamproc's marks."""
        meta = pod.get("metadata") or {}
        if (meta.get("labels") or {}).get(conventions.OBSERVED_LABEL) != "true":
            return
        self._note(pod)
        until = patches.expires_at(pod)
        if until is None or until <= self.clock() or not self.ownership.owns(pod):
            return
        annotations = meta.get("annotations") or {}
        ref = await self._resolver.workload_of(pod)
        self.follow(
            ref.namespace,
            ref.kind,
            ref.name,
            until=until,
            topology=annotations.get(conventions.TOPOLOGY, ""),
            rule=annotations.get(conventions.RULE, ""),
            action_id=annotations.get(conventions.ACTION_ID, ""),
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
            annotations=topology.spec.action.annotate,
            until=followed.until,
            topology=followed.topology,
            rule=followed.rule,
            action_id=followed.action_id,
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
        metrics.patches.labels(op="follow", result="ok").inc()
        self._kube.post_event(
            pod,
            "ObservationStarted",
            f"new pod of {ref.kind}/{ref.name}, observed until "
            f"{conventions.format_time(followed.until)} (topology {followed.topology})",
        )
        self.followed_pods += 1
        self._scheduler.schedule(target, followed.until, followed.topology, node)
        self._auditor.record(
            result="followed",
            topology=followed.topology,
            rule=followed.rule,
            namespace=ref.namespace,
            kind=ref.kind,
            name=ref.name,
            pods=[target.name],
            annotations=dict(topology.spec.action.annotate),
            expires_at=conventions.format_time(followed.until),
        )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
