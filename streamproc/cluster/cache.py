"""A local copy of the cluster's pods and of the owners that lead to workloads, kept by list+watch.

What client-go's shared informers give a controller: one list of each resource, then a watch
that keeps the copy current (resuming from the last resourceVersion, bookmarks included, listing
again after a 410). Ingest's resolver and the annotate stage's follower and expirer read it
instead of asking the API server per pod, so a cluster of 10,000 pods costs three lists at start,
not 10,000 GETs, and a detection costs no request at all.

Only what those readers use is kept, as small tuples with interned strings: a pod's name,
namespace, controller, node and labels, plus streamproc's own annotations and the
resourceVersion on the pods it marked (so the expirer can end an observation with one
request); a ReplicaSet's or Job's controller. The full object of each watch event is handed to
subscribers as it arrives and then dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import NamedTuple

from streamproc import stopping
from streamproc.clients import kube, metrics
from streamproc.model import conventions
from streamproc.model import marks as model_marks

log = logging.getLogger("streamproc.cache")
_WATCH_S = 60
_RETRY_S = 2.0
#: a resource the process may not list (RBAC from before the cache) is asked again this rarely
_FORBIDDEN_RETRY_S = 60.0
_NO_MARKS: Mapping[str, str] = MappingProxyType({})
#: the longest mark kept (streamproc writes at most a few hundred characters per mark)
_MAX_MARK = 1024
#: what an oversized mark is kept as: not printable, so refused as malformed by every check
_OVERSIZED = "\x00oversized"
#: the resources kept: pods, and the controllers between a pod and its workload
RESOURCES = ("pods", "replicasets", "jobs")
_CONTROLLER_KIND = {"replicasets": "ReplicaSet", "jobs": "Job"}

#: what a subscriber is told: ("ADDED" | "MODIFIED" | "DELETED", pod) for each pod event, and
#: ("LISTED", {}) after each full list of pods (at start, and after a 410)
Subscriber = Callable[[str, kube.Json], None]


def _kept(value: object) -> str:
    """A mark as kept: one longer than streamproc writes is a placeholder ``marking.read`` refuses.

    Tenants can edit marks; a cache of 10,000 pods should not hold 256 KiB of one per pod.
    """
    text = str(value)
    return text if len(text) <= _MAX_MARK else _OVERSIZED


def _interned(value: object) -> str:
    return sys.intern(str(value or ""))


class PodInfo(NamedTuple):
    """The part of a pod that resolving, following and expiring read."""

    namespace: str
    name: str
    #: the controller (kind, name) from ownerReferences, None for a bare pod
    owner: tuple[str, str] | None
    node: str
    labels: Mapping[str, str]
    #: streamproc's bookkeeping annotations, on pods it marked (empty on the others)
    marks: Mapping[str, str]
    #: the resourceVersion the marks were seen at, on pods it marked ("" on the others)
    version: str = ""
    #: metadata.uid, on pods it marked ("" on the others): what a seal is bound to
    uid: str = ""

    @classmethod
    def of(cls, pod: kube.Json) -> PodInfo:
        """The kept part of a pod as the API returns it."""
        meta = pod.get("metadata") or {}
        labels = {_interned(k): _interned(v) for k, v in (meta.get("labels") or {}).items()}
        marks: Mapping[str, str] = _NO_MARKS
        version = uid = ""
        if labels.get(conventions.OBSERVED_LABEL) == "true":
            annotations = meta.get("annotations") or {}
            # the bookkeeping, and the keys it says streamproc added (``retina.sh``): a release
            # computed from this copy must see whether a person changed or removed them
            owned = str(annotations.get(conventions.OWNED_KEYS) or "")
            named = owned.split(",", model_marks.MAX_OWNED)[: model_marks.MAX_OWNED]
            keys = (*conventions.BOOKKEEPING_KEYS, *named)
            marks = {k: _kept(annotations[k]) for k in keys if k in annotations}
            version = str(meta.get("resourceVersion") or "")
            uid = str(meta.get("uid") or "")
        owner = kube.controller_of(pod)
        return cls(
            _interned(meta.get("namespace")),
            _interned(meta.get("name")),
            (_interned(owner[0]), _interned(owner[1])) if owner else None,
            _interned((pod.get("spec") or {}).get("nodeName")),
            labels,
            marks,
            version,
            uid,
        )

    @property
    def marked(self) -> bool:
        """Whether streamproc observes this pod."""
        return self.labels.get(conventions.OBSERVED_LABEL) == "true"

    def object(self) -> kube.Json:
        """The pod as a (partial) API object, for code that reads pods as the API returns them.

        A marked pod's carries the resourceVersion it was seen at: a write computed from it is
        refused (409) if the pod changed since.
        """
        meta: kube.Json = {
            "namespace": self.namespace,
            "name": self.name,
            "labels": dict(self.labels),
            "annotations": dict(self.marks),
        }
        if self.version:
            meta["resourceVersion"] = self.version
        if self.uid:
            meta["uid"] = self.uid
        if self.owner is not None:
            meta["ownerReferences"] = [
                {"kind": self.owner[0], "name": self.owner[1], "controller": True}
            ]
        return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": self.node}}


class ClusterCache:
    """Pods, ReplicaSets and Jobs as last seen; ``run`` keeps them current until stopped."""

    def __init__(self, client: kube.Kube, *, resources: Iterable[str] = RESOURCES) -> None:
        self._kube = client
        self._resources = tuple(resources)
        self._pods: dict[tuple[str, str], PodInfo] = {}
        self._marked: dict[tuple[str, str], PodInfo] = {}
        self._controllers: dict[tuple[str, str, str], tuple[str, str] | None] = {}
        self._listed: set[str] = set()
        #: resources this process may not list: read one GET at a time instead
        self._forbidden: set[str] = set()
        self._subscribers: list[Subscriber] = []
        self._synced = asyncio.Event()
        #: the resourceVersion of the last list or event handled, per resource
        self.resource_versions: dict[str, str] = {}

    # -- reading -------------------------------------------------------------------------

    @property
    def pods_synced(self) -> bool:
        """Whether pods have been listed once (from then on the copy is current)."""
        return "pods" in self._listed

    @property
    def controllers_synced(self) -> bool:
        """Whether ReplicaSets and Jobs have been listed once."""
        return {"replicasets", "jobs"} <= self._listed

    async def synced(self) -> None:
        """Wait until every resource has been listed once (or refused to this process)."""
        await self._synced.wait()

    def pod(self, namespace: str, name: str) -> PodInfo | None:
        """A pod as last seen; None if the cluster has no such pod (or not yet)."""
        return self._pods.get((namespace, name))

    def __len__(self) -> int:
        return len(self._pods)

    def pods(self) -> Iterator[PodInfo]:
        """Every pod."""
        return iter(list(self._pods.values()))

    def marked(self) -> list[PodInfo]:
        """The pods streamproc observes (its label is on them)."""
        return list(self._marked.values())

    def controller(
        self, namespace: str, kind: str, name: str
    ) -> tuple[bool, tuple[str, str] | None]:
        """(known, controller) of a ReplicaSet or Job: known False when the copy has no such one."""
        key = (namespace, kind, name)
        if key not in self._controllers:
            return False, None
        return True, self._controllers[key]

    def subscribe(self, subscriber: Subscriber) -> None:
        """Tell ``subscriber`` of every pod event from now on (it must not block)."""
        self._subscribers.append(subscriber)

    # -- keeping current -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """List and watch every resource until ``stop``."""
        tasks = [
            asyncio.create_task(self._keep(resource, stop), name=f"cache-{resource}")
            for resource in self._resources
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, resource: str, stop: asyncio.Event) -> None:
        version: str | None = None
        while not stop.is_set():
            watch = asyncio.create_task(self._list_and_watch(resource, version))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({watch, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if watch not in done:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
                return
            try:
                version = watch.result()
            except kube.Gone:
                version = None  # too old: list again
            except kube.Forbidden as exc:
                self._forbidden.add(resource)
                self._check_synced()
                log.warning(
                    "cannot list and watch %s (%s); reading them one GET at a time. "
                    "Fix: grant list and watch on %s (k8s/rbac.yaml)",
                    resource,
                    exc,
                    resource,
                )
                await stopping.pause(stop, _FORBIDDEN_RETRY_S)
            except kube.KubeError as exc:
                metrics.stage_errors.labels(stage="cache", error=type(exc).__name__).inc()
                log.warning("%s watch interrupted (%s); resuming", resource, exc)
                await stopping.pause(stop, _RETRY_S)

    async def _list_and_watch(self, resource: str, version: str | None) -> str | None:
        """One watch request (listing first when there is no version); the last version seen."""
        if version is None:
            version = await self._list(resource)
        async for kind, obj in self._kube.watch(resource, version, timeout_s=_WATCH_S):
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(resource, kind, obj)
            self.resource_versions[resource] = version
        return version

    async def _list(self, resource: str) -> str:
        """Replace the copy of ``resource`` with a new list, each page reduced as it comes."""
        pods: dict[tuple[str, str], PodInfo] = {}
        controllers: dict[tuple[str, str, str], tuple[str, str] | None] = {}
        kind = _CONTROLLER_KIND.get(resource, "")
        version = ""
        async for items, page_version in self._kube.list_pages(resource):
            version = page_version
            if resource == "pods":
                pods.update(((i.namespace, i.name), i) for i in map(PodInfo.of, items))
            else:
                controllers.update((_controller_key(kind, o), _controller_of(o)) for o in items)
        if resource == "pods":
            self._pods = pods
            self._marked = {k: i for k, i in pods.items() if i.marked}
            metrics.cached_pods.set(len(pods))
        else:
            others = {k: v for k, v in self._controllers.items() if k[1] != kind}
            self._controllers = others | controllers
        self.resource_versions[resource] = version
        self._listed.add(resource)
        self._forbidden.discard(resource)
        # subscribers hear of a list of pods once the owners are there to resolve them with
        if not self._check_synced() and resource == "pods" and self._synced.is_set():
            self._tell("LISTED", {})
        return version

    def _check_synced(self) -> bool:
        """Mark the cache synced when every resource is listed (or forbidden); True if now."""
        if self._synced.is_set() or not self._listed | self._forbidden >= set(self._resources):
            return False
        self._synced.set()
        if "pods" in self._listed:
            self._tell("LISTED", {})
        return True

    def _apply(self, resource: str, kind: str, obj: kube.Json) -> None:
        if resource != "pods":
            key = _controller_key(_CONTROLLER_KIND[resource], obj)
            if kind == "DELETED":
                self._controllers.pop(key, None)
            else:
                self._controllers[key] = _controller_of(obj)
            return
        info = PodInfo.of(obj)
        if kind == "DELETED":
            self._pods.pop((info.namespace, info.name), None)
            self._marked.pop((info.namespace, info.name), None)
        else:
            self._put_pod(info)
        metrics.cached_pods.set(len(self._pods))
        self._tell(kind, obj)

    def _put_pod(self, info: PodInfo) -> None:
        key = (info.namespace, info.name)
        self._pods[key] = info
        if info.marked:
            self._marked[key] = info
        else:
            self._marked.pop(key, None)

    def _tell(self, kind: str, obj: kube.Json) -> None:
        for subscriber in self._subscribers:
            subscriber(kind, obj)


def _controller_key(kind: str, obj: kube.Json) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (_interned(meta.get("namespace")), kind, _interned(meta.get("name")))


def _controller_of(obj: kube.Json) -> tuple[str, str] | None:
    owner = kube.controller_of(obj)
    return (_interned(owner[0]), _interned(owner[1])) if owner else None
