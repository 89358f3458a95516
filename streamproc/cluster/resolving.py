"""Workloads against the cluster: pod -> workload (ingest) and workload -> pods (annotate).

Rules live in ``workloads``; this adds the API reads and two bounded TTL caches, so that a flood of
detections from one pod costs one lookup, not one per detection. When the API cannot answer,
resolution falls back to the pod name's shape and remembers that only briefly.

With a ``ClusterCache`` (list+watch of pods, ReplicaSets and Jobs) resolution costs no request:
a pod the synced cache knows is resolved from its ownerReferences and its controller's, a DaemonSet
pod included; a pod it does not know (made up, or created a moment ago and not yet watched) is
counted (``streamproc_resolver_unknown_pods_total``) and resolved by its name's shape, remembered
only briefly so that the next detection finds it in the cache. Only a controller the cache has not
seen yet costs a GET. Without the cache (no list/watch permission, or before its first list) the
GETs below are used.

Lookups of pods not in the cache have their own budget (``lookups_per_s``): anyone who can write
to the input topic can invent pod names, and a flood of 50,000 made-up pods would otherwise
become 50,000 GETs, queued behind the API rate limit with every real detection waiting behind
them. Over budget, a pod is resolved by its name's shape at once.
"""

from __future__ import annotations

import contextlib

from aiolimiter import AsyncLimiter
from cachetools import TTLCache

from streamproc.clients import kube, metrics
from streamproc.cluster.cache import ClusterCache
from streamproc.model import workloads
from streamproc.model.events import Detection
from streamproc.model.workloads import WorkloadRef

_FALLBACK_TTL_S = 10.0
#: how many seconds of the lookup rate may be spent at once.
LOOKUP_BURST_S = 10.0


class WorkloadResolver:
    """Pod <-> workload, cached; ``kube`` None means name shape only (no cluster access)."""

    def __init__(
        self,
        client: kube.Kube | None,
        *,
        cache_size: int,
        ttl_s: float,
        lookups_per_s: float | None = None,
        cache: ClusterCache | None = None,
    ) -> None:
        self._kube = client
        #: the cluster as last listed and watched, when this process keeps one
        self.cache = cache
        # A burst of LOOKUP_BURST_S seconds' worth: a restarted ingest meets every live pod of
        # its backlog at once, and a real pod guessed by its name (a DaemonSet's pod reads like
        # a bare one) would have its observation go to a workload that does not exist.
        self._budget = (
            AsyncLimiter(max(1.0, lookups_per_s * LOOKUP_BURST_S), LOOKUP_BURST_S)
            if lookups_per_s
            else None
        )
        self._pods: TTLCache[tuple[str, str], WorkloadRef] = TTLCache(cache_size, ttl_s)
        self._fallbacks: TTLCache[tuple[str, str], WorkloadRef] = TTLCache(
            cache_size, _FALLBACK_TTL_S
        )
        self._controllers: TTLCache[tuple[str, str, str], tuple[str, str] | None] = TTLCache(
            cache_size, ttl_s
        )

    def known(self, detection: Detection) -> WorkloadRef | None:
        """Resolve without I/O if possible: owner fields, then the caches."""
        namespace, pod = detection.namespace, detection.pod
        if namespace is None or pod is None:
            return None
        if detection.owners:
            found = workloads.from_owner_fields(namespace, pod, detection.owners)
            if found is not None:
                return found
        key = (namespace, pod)
        cached = self.known_pod(namespace, pod)
        if cached is not None:
            return cached
        return self._pods.get(key) or self._fallbacks.get(key)

    def known_pod(self, namespace: str, pod: str) -> WorkloadRef | None:
        """The workload of a pod the cluster cache knows, controller included; else None.

        Never a request: None also when the cache is not synced or lacks the pod's controller.
        """
        if self.cache is None or not self.cache.pods_synced:
            return None
        info = self.cache.pod(namespace, pod)
        if info is None:
            return None
        grand = None
        if info.owner is not None and workloads.parent_kind(info.owner[0]) is not None:
            known, grand = self.cache.controller(namespace, *info.owner)
            if not known:
                return None  # a controller not seen yet: ``resolve`` reads it
        return workloads.from_owner_chain(namespace, pod, info.owner, grand)

    async def resolve(self, namespace: str, pod: str) -> WorkloadRef:
        """Resolve through the cache or the API (ownerReferences), else by name shape."""
        key = (namespace, pod)
        cached = self.known_pod(namespace, pod) or self._pods.get(key) or self._fallbacks.get(key)
        if cached is not None:
            return cached
        # Remembered for the whole TTL unless the API failed (then retried sooner). Without the
        # API, or over the lookup budget (a flood's pods come back again and again), or for a
        # pod that does not exist (made up, or gone), the name's shape is all there is.
        lasting = True
        try:
            if self.cache is not None and self.cache.pods_synced:
                ref, lasting = await self._resolve_cached(namespace, pod)
            elif self._kube is None or not await self._within_budget():
                ref = workloads.from_name_shape(namespace, pod)
            else:
                ref = await self.workload_of(await self._kube.get_pod(namespace, pod))
        except kube.NotFound:
            ref = workloads.from_name_shape(namespace, pod)
        except kube.KubeError:
            ref, lasting = workloads.from_name_shape(namespace, pod), False
        (self._pods if lasting else self._fallbacks)[key] = ref
        metrics.workload_resolutions.labels(method=ref.resolved_by).inc()
        return ref

    async def _resolve_cached(self, namespace: str, pod: str) -> tuple[WorkloadRef, bool]:
        """With a synced cache: (workload, lasting); never a request for the pod itself."""
        assert self.cache is not None
        info = self.cache.pod(namespace, pod)
        if info is not None:  # known, its controller not seen yet: one GET, remembered
            return await self._workload(namespace, pod, info.owner), True
        # not in the cluster as last watched (made up, or too new): the name's shape, briefly
        metrics.resolver_unknown_pods.inc()
        return workloads.from_name_shape(namespace, pod), False

    async def _within_budget(self) -> bool:
        """Take one lookup from the budget if there is one left now; never waits for one."""
        if self._budget is None:
            return True
        if not self._budget.has_capacity():
            metrics.resolver_over_budget.inc()
            return False
        await self._budget.acquire()  # has capacity: returns at once
        return True

    async def workload_of(self, pod: kube.Json) -> WorkloadRef:
        """The workload of a pod object read from the API."""
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        return await self._workload(namespace, name, kube.controller_of(pod))

    async def _workload(
        self, namespace: str, name: str, owner: tuple[str, str] | None
    ) -> WorkloadRef:
        grand = None
        if owner is not None and workloads.parent_kind(owner[0]) is not None:
            grand = await self._controller(namespace, *owner)
        return workloads.from_owner_chain(namespace, name, owner, grand)

    async def _controller(
        self, namespace: str, kind: str, name: str, *, guessed: bool = False
    ) -> tuple[str, str] | None:
        """The controller owning a ReplicaSet or Job, remembered for the cache's TTL.

        A ``guessed`` name that does not exist is not remembered: a wrong guess leaves no trace.
        """
        key = (namespace, kind, name)
        if key in self._controllers:
            return self._controllers[key]
        if self.cache is not None and self.cache.controllers_synced:
            known, found = self.cache.controller(namespace, kind, name)
            if known or guessed:  # a guess the cache does not know is wrong: no GET for it
                return found
        if self._kube is None:
            return None
        try:
            found = kube.controller_of(await self._kube.get_controller_owner(namespace, kind, name))
        except kube.NotFound:
            if guessed:
                return None
            found = None
        self._controllers[key] = found
        return found

    async def prefetch_replicaset(self, namespace: str, pod: str) -> None:
        """Look up the ReplicaSet a Deployment's pod name points at (``<rs>-<suffix>``), early.

        The annotator does this beside its pod list, so that walking the listed pods' owners
        finds the ReplicaSet already known instead of costing a second round trip for every new
        workload. Only an answer found is remembered: a wrong guess costs one GET and leaves no
        trace, and what decides is still the pods' own ownerReferences.
        """
        replicaset = pod.rpartition("-")[0]
        if replicaset:
            with contextlib.suppress(kube.KubeError):  # an early read; the real one follows
                await self._controller(namespace, "ReplicaSet", replicaset, guessed=True)

    async def pods_of(
        self, workload: WorkloadRef, listing: list[kube.Json] | None = None
    ) -> list[kube.Json]:
        """The workload's current pods, found by listing its namespace and walking owners.

        ``listing`` is the namespace's pod list when the caller already has it (one list per
        namespace per batch instead of one per action).
        """
        if self._kube is None:
            return []
        if workload.kind == "Pod":
            try:
                return [await self._kube.get_pod(workload.namespace, workload.name)]
            except kube.NotFound:
                return []
        found = []
        if listing is None:
            listing = await self._kube.list_pods(workload.namespace)
        prefix = f"{workload.name}-"
        for pod in listing:
            # A controller's name is the workload's (StatefulSet, DaemonSet, Job) or derives
            # from it ("<deployment>-<hash>", "<cronjob>-<time>"): any other owner cannot lead
            # to this workload, so it costs no owner lookup (a namespace of many ReplicaSets,
            # or a flood of made-up workloads, would otherwise cost one GET per ReplicaSet).
            owner = kube.controller_of(pod)
            if owner is None or not (owner[1] == workload.name or owner[1].startswith(prefix)):
                continue
            ref = await self.workload_of(pod)
            if (ref.kind, ref.name) == (workload.kind, workload.name):
                found.append(pod)
        return found
