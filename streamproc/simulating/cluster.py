"""The cluster a simulation annotates: pods in memory, read from a snapshot, the API or detections.

The live annotator and expirer run unchanged against :class:`SimulatedCluster`, a ``kube.Kube``
whose writes stay in memory and are counted (the estimated API writes). Pods come from, in order:

- a snapshot, ``kubectl get pods -A -o json`` (ReplicaSets and Jobs may be in the same list:
  ``kubectl get pods,replicasets,jobs -A -o json``);
- read-only API calls through a kubeconfig (``get`` and ``list``; nothing is ever written);
- the detections themselves: a pod named in a detection and known nowhere else is made up with
  the workload its detection was resolved to, on no node.

Whatever streamproc had written on a pod read from a snapshot or the API (its bookkeeping, its
label) is taken off first (``patches.release``): a simulation starts from nothing observed.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

from streamproc.clients import kube
from streamproc.model import conventions, patches
from streamproc.model.workloads import WorkloadRef

Json = dict[str, Any]
#: where a pod the simulation knows came from
Source = Literal["snapshot", "api", "detections"]


#: how far each way of finding a workload is trusted (``workloads``' order)
_TRUST = {"owner-fields": 2, "api": 1, "name-shape": 0}


class SnapshotError(ValueError):
    """A ``--pods`` file that is not a Kubernetes List of pods."""


class SimulatedCluster(kube.Kube):
    """Pods and their controllers in memory; writes are applied here and counted, never sent."""

    def __init__(self, upstream: kube.Kube | None = None) -> None:
        # no super().__init__(): there is no HTTP client; every method the annotator, the
        # resolver and the expirer call is overridden below
        self._upstream = upstream
        #: namespace -> pod name -> pod (the annotator lists one namespace at a time)
        self._pods: dict[str, dict[str, Json]] = {}
        self._controllers: dict[tuple[str, str, str], Json] = {}
        self._namespaces: dict[str, Json] = {}
        self._captures: set[tuple[str, str]] = set()
        #: pods made up from detections, and how their workload was found
        self._made_up: dict[tuple[str, str], str] = {}
        self._listed: set[str] = set()
        self._revision = 0
        #: where each pod came from (the report counts identities by it)
        self.sources: dict[tuple[str, str], Source] = {}
        #: writes the live code would have sent: observe, release, event, capture
        self.writes: Counter[str] = Counter()

    # -- filling -------------------------------------------------------------------------------

    def load_snapshot(self, doc: object, origin: str) -> int:
        """Add the pods (and ReplicaSets, Jobs) of a ``kubectl get ... -o json`` List."""
        items = doc.get("items") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise SnapshotError(f"{origin}: not a Kubernetes List (kubectl get pods -A -o json)")
        pods = 0
        for index, item in enumerate(items):
            meta = item.get("metadata") if isinstance(item, dict) else None
            if not isinstance(meta, dict) or not meta.get("name") or not meta.get("namespace"):
                raise SnapshotError(f"{origin}: items[{index}] has no metadata.name/namespace")
            kind = item.get("kind", "Pod")
            if kind == "Pod":
                self._add_pod(item, "snapshot")
                pods += 1
            elif kind in ("ReplicaSet", "Job"):
                self._controllers[(str(meta["namespace"]), kind, str(meta["name"]))] = item
        return pods

    def seen(self, namespace: str, pod: str, workload: WorkloadRef) -> None:
        """A pod known only from detections: made up with the workload it was resolved to.

        Seen again with a more trusted identity (owner fields over the name's shape), the pod
        is made up again with that one, as the real pod's ownerReferences would say.
        """
        known = self._made_up.get((namespace, pod))
        if pod in self._pods.get(namespace, {}) and (
            known is None or _TRUST[known] >= _TRUST[workload.resolved_by]
        ):
            return
        self._made_up[(namespace, pod)] = workload.resolved_by
        owner = _owner_of(pod, workload)
        self._pods.setdefault(namespace, {})[pod] = {
            "kind": "Pod",
            "metadata": {
                "namespace": namespace,
                "name": pod,
                "resourceVersion": self._next_version(),
                "ownerReferences": [_reference(*owner)] if owner else [],
            },
            "spec": {},
        }
        self.sources[(namespace, pod)] = "detections"
        if owner is not None and owner[0] in ("ReplicaSet", "Job"):
            parent = (
                ("Deployment", workload.name)
                if owner[0] == "ReplicaSet"
                else ("CronJob", workload.name)
            )
            if workload.kind in ("Deployment", "CronJob"):
                self._controllers.setdefault(
                    (namespace, owner[0], owner[1]),
                    {"metadata": {"name": owner[1], "ownerReferences": [_reference(*parent)]}},
                )

    def knows(self, namespace: str, pod: str) -> bool:
        """Whether the pod came from the snapshot, the API or detections already."""
        return pod in self._pods.get(namespace, {})

    def _add_pod(self, pod: Json, source: Source) -> Json:
        meta = pod["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        clean = _unobserved(pod)
        clean["metadata"]["resourceVersion"] = self._next_version()
        self._pods.setdefault(key[0], {}).setdefault(key[1], clean)
        self.sources.setdefault(key, source)
        return self._pods[key[0]][key[1]]

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    # -- what the live code calls --------------------------------------------------------------

    async def close(self) -> None:
        """Nothing to release: the upstream client is the caller's."""

    async def list_pods(
        self, namespace: str | None, label_selector: str | None = None
    ) -> list[Json]:
        """The namespace's pods: listed once from the API (if any), then as changed here."""
        if self._upstream is not None and namespace is not None and namespace not in self._listed:
            self._listed.add(namespace)
            for pod in await self._upstream.list_pods(namespace):
                pod.setdefault("kind", "Pod")
                self._add_pod(pod, "api")
        if namespace is None:
            pods = [p for named in self._pods.values() for p in named.values()]
        else:
            pods = list(self._pods.get(namespace, {}).values())
        if label_selector:
            key, _, value = label_selector.partition("=")
            pods = [p for p in pods if (p["metadata"].get("labels") or {}).get(key) == value]
        return pods

    async def get_pod(self, namespace: str, name: str) -> Json:
        """A pod known here, else read once from the API; NotFound otherwise."""
        found = self._pods.get(namespace, {}).get(name)
        if found is not None:
            return found
        if self._upstream is None or namespace in self._listed:
            raise kube.NotFound(f"pod {namespace}/{name} not found", status=404)
        pod = await self._upstream.get_pod(namespace, name)
        pod.setdefault("kind", "Pod")
        return self._add_pod(pod, "api")

    async def get_controller_owner(self, namespace: str, kind: str, name: str) -> Json:
        """A ReplicaSet or Job: from the snapshot, the API, else inferred from its pods."""
        key = (namespace, kind, name)
        found = self._controllers.get(key)
        if found is None and self._upstream is not None:
            try:
                found = await self._upstream.get_controller_owner(namespace, kind, name)
            except kube.NotFound:
                found = None
        if found is None:
            found = self._inferred_controller(namespace, kind, name)
        if found is None:
            raise kube.NotFound(f"{kind} {namespace}/{name} not found", status=404)
        self._controllers[key] = found
        return found

    def _inferred_controller(self, namespace: str, kind: str, name: str) -> Json | None:
        """A controller missing from a pods-only snapshot, named by Kubernetes' own rules.

        The Deployment controller names a ReplicaSet ``<deployment>-<pod-template-hash>`` and
        labels its pods with that hash (kubernetes/kubernetes ``pkg/controller/deployment/
        sync.go``); the CronJob controller names a Job ``<cronjob>-<minutes since epoch>``
        (``pkg/controller/cronjob/utils.go``, ``getJobName``).
        """
        for pod in self._pods.get(namespace, {}).values():
            meta = pod["metadata"]
            if kube.controller_of(pod) != (kind, name):
                continue
            parent: tuple[str, str] | None = None
            if kind == "ReplicaSet":
                template_hash = (meta.get("labels") or {}).get("pod-template-hash", "")
                if template_hash and name.endswith(f"-{template_hash}"):
                    parent = ("Deployment", name[: -len(template_hash) - 1])
            elif kind == "Job":
                stem, _, minutes = name.rpartition("-")
                if stem and minutes.isdigit() and 8 <= len(minutes) <= 10:
                    parent = ("CronJob", stem)
            references = [_reference(*parent)] if parent else []
            return {"metadata": {"name": name, "ownerReferences": references}}
        return None

    async def get_observable(self, ref: kube.ObjectRef) -> Json:
        """The pod, or a Namespace object (``scope: namespace``)."""
        if ref.kind == "Pod":
            return await self.get_pod(ref.namespace, ref.name)
        return self._namespaces.setdefault(
            ref.name,
            {"kind": "Namespace", "metadata": {"name": ref.name, "resourceVersion": "1"}},
        )

    async def list_observed_namespaces(self, label_selector: str) -> list[Json]:
        """Namespace objects carrying the label."""
        key, _, value = label_selector.partition("=")
        return [
            n
            for n in self._namespaces.values()
            if (n["metadata"].get("labels") or {}).get(key) == value
        ]

    async def write_patch(self, ref: kube.ObjectRef, patch: kube.MetadataPatch) -> Json:
        """Apply a merge patch here, refusing a stale ``resourceVersion`` as the API would."""
        current = await self.get_observable(ref)
        meta = current["metadata"]
        version = patch.resource_version
        if version is not None and version != meta.get("resourceVersion"):
            raise kube.Conflict(f"{ref} changed since it was read", status=409)
        updated = copy.copy(current)
        updated["metadata"] = new_meta = dict(meta)
        for field, changes in (("annotations", patch.annotations), ("labels", patch.labels)):
            values = dict(new_meta.get(field) or {})
            for key, value in changes.items():
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = value
            new_meta[field] = values
        new_meta["resourceVersion"] = self._next_version()
        observed = (patch.labels or {}).get(conventions.OBSERVED_LABEL) == "true"
        self.writes["observe" if observed else "release"] += 1
        if ref.kind == "Pod":
            self._pods[ref.namespace][ref.name] = updated
        else:
            self._namespaces[ref.name] = updated
        return updated

    def post_event(self, pod: Json, reason: str, message: str) -> None:
        """Counted: each Event is one more request."""
        del pod, reason, message
        self.writes["event"] += 1

    async def create_capture(self, namespace: str, body: Json) -> Json:
        """Counted; a second capture of the same window is a Conflict, as on the API."""
        key = (namespace, str(body["metadata"]["name"]))
        if key in self._captures:
            raise kube.Conflict(f"capture {key} exists", status=409)
        self._captures.add(key)
        self.writes["capture"] += 1
        return body


def _unobserved(pod: Mapping[str, Any]) -> Json:
    """A copy of the pod without what streamproc had written on it."""
    clean: Json = copy.deepcopy(dict(pod))
    patch = patches.release(clean)
    meta = clean["metadata"]
    for field, changes in (("annotations", patch.annotations), ("labels", patch.labels)):
        values = meta.get(field) or {}
        for key in changes:
            values.pop(key, None)
    return clean


def _reference(kind: str, name: str) -> Json:
    return {"kind": kind, "name": name, "controller": True}


def _owner_of(pod: str, workload: WorkloadRef) -> tuple[str, str] | None:
    """The controller a made-up pod of ``workload`` would have (``<deployment>-<hash>`` ...)."""
    if workload.kind == "Deployment":
        stem = pod.rpartition("-")[0]
        return "ReplicaSet", stem if stem.startswith(f"{workload.name}-") else f"{workload.name}-0"
    if workload.kind == "CronJob":
        stem = pod.rpartition("-")[0]
        return "Job", stem if stem.startswith(f"{workload.name}-") else f"{workload.name}-0"
    if workload.kind == "Pod":
        return None
    return workload.kind, workload.name


class Follower:
    """The annotator's view of observed workloads (``applying.Follows``), on simulated time.

    It also keeps each workload's observations as intervals, for the report and the plot.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._until: dict[str, dict[tuple[str, str, str], float]] = {}
        #: (topology, namespace, kind, name) -> [[start, until, level], ...]
        self.intervals: dict[tuple[str, str, str, str], list[list[Any]]] = {}

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
        """Remember the workload as observed until ``until``."""
        del rule, action_id
        now = self._clock()
        key = (namespace, kind, name)
        active = self._until.setdefault(topology, {})
        spans = self.intervals.setdefault((topology, *key), [])
        if active.get(key, 0.0) > now and spans:
            spans[-1][1] = max(spans[-1][1], until)
        else:
            spans.append([now, until, level])
        active[key] = max(active.get(key, 0.0), until)

    def observing(self, topology: str) -> set[tuple[str, str, str]]:
        """Workloads of ``topology`` under an unexpired observation now."""
        now = self._clock()
        active = self._until.get(topology, {})
        ended = [key for key, until in active.items() if until <= now]
        for key in ended:
            del active[key]
        return set(active)
