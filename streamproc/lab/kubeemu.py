"""An emulated Kubernetes API server over real HTTP, for tests and the lab.

No real API server can run on a developer laptop without a container runtime, and mocking the
client in-process would test the mock. This serves the subset of the API that streamproc and
``kubectl get/describe/annotate`` use, on loopback, so the real ``kubernetes_asyncio`` client
(or kubectl) reaches it through an ordinary kubeconfig:

- discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}/{version}``, ``/version``), with
  short names and the ``all`` category, and aggregated (apidiscovery.k8s.io/v2) when asked;
- pods, namespaces, events, configmaps, deployments, replicasets, statefulsets, daemonsets, jobs,
  cronjobs, and Retina's captures and metricsconfigurations: list (``labelSelector``,
  ``fieldSelector`` on the fields the API server allows, 400 for others), get, create, put,
  delete;
- ``kubectl get``'s Tables (``Accept: ...;as=Table;v=v1;g=meta.k8s.io``) for pods, deployments,
  replicasets, statefulsets, daemonsets, events, namespaces and configmaps, in lists, gets and
  watches (``tables.py``);
- RBAC as a set of denied (group, resource, verb): such requests get 403, and
  SelfSubjectAccessReviews answer from the same set; a CRD can be uninstalled (its resources
  leave discovery and answer 404), to play clusters that lack Retina's;
- patch: JSON merge patch (RFC 7386, null deletes), strategic merge (as merge for maps) and JSON
  patch (RFC 6902);
- ``resourceVersion`` on every object, 409 when a write names a stale one, 404 for missing
  objects;
- paged lists (``limit``, ``continue``; every page carries the first page's resourceVersion)
- watch with label filtering, resume from a ``resourceVersion``, ``410 Gone`` when too old,
  bookmarks and ``timeoutSeconds``;
- faults injected per request that fail *before* any state changes (status, ``Retry-After``,
  delay), and a request log with timestamps for assertions on rate and order;
- a ``Date`` header on every answer, from a clock ``clock_offset_s`` away from this host's, to
  play an API server whose clock differs from its clients'.

It runs in its own thread and event loop, so synchronous tests and subprocesses can use it alike.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import email.utils
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml
from aiohttp import web

from streamproc.lab import tables

Json = dict[str, Any]

# (group, version, plural) -> (kind, namespaced)
RESOURCES: dict[tuple[str, str, str], tuple[str, bool]] = {
    ("", "v1", "pods"): ("Pod", True),
    ("", "v1", "namespaces"): ("Namespace", False),
    ("", "v1", "events"): ("Event", True),
    ("", "v1", "configmaps"): ("ConfigMap", True),
    ("apps", "v1", "deployments"): ("Deployment", True),
    ("apps", "v1", "replicasets"): ("ReplicaSet", True),
    ("apps", "v1", "statefulsets"): ("StatefulSet", True),
    ("apps", "v1", "daemonsets"): ("DaemonSet", True),
    ("batch", "v1", "jobs"): ("Job", True),
    ("batch", "v1", "cronjobs"): ("CronJob", True),
    ("retina.sh", "v1alpha1", "captures"): ("Capture", True),
    ("retina.sh", "v1alpha1", "metricsconfigurations"): ("MetricsConfiguration", False),
}
_PLURAL_OF = {kind: key for key, (kind, _) in RESOURCES.items()}
#: what ``kubectl get ds`` and ``kubectl get all`` resolve through discovery: the short names
#: and categories the real API server (v1.31) and Retina's CRDs (v1.2.6) declare
_SHORT_NAMES: dict[str, tuple[str, ...]] = {
    "pods": ("po",),
    "namespaces": ("ns",),
    "events": ("ev",),
    "configmaps": ("cm",),
    "deployments": ("deploy",),
    "replicasets": ("rs",),
    "statefulsets": ("sts",),
    "daemonsets": ("ds",),
    "cronjobs": ("cj",),
}
_IN_ALL = {"pods", "deployments", "replicasets", "statefulsets", "daemonsets", "jobs", "cronjobs"}
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
#: aggregated discovery (apidiscovery.k8s.io/v2, GA in Kubernetes 1.30): kubectl asks /api and
#: /apis for it first and needs no per-group requests when it gets it
_DISCOVERY_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_HISTORY = 10_000


@dataclass
class Fault:
    """Fail matching requests before any state change: ``times`` of them, then pass."""

    method: str = "*"
    path: str = ".*"
    status: int = 500
    times: int = 1
    retry_after: int | None = None
    delay_s: float = 0.0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return (
            self.times > 0
            and self.method in ("*", method)
            and self._pattern.search(path) is not None
        )


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw it."""

    at: float
    method: str
    path: str
    query: str
    status: int
    #: when the response was ready (``at`` is when the request arrived)
    done: float = 0.0
    #: the body of a PATCH, which says what a write changed (crash tests count duplicates)
    body: bytes = b""


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code, dumps=lambda o: orjson.dumps(o).decode())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _label_requirements(selector: str) -> list[tuple[str, str, set[str]]]:
    """Parse equality- and set-based label selectors into (key, op, values)."""
    reqs: list[tuple[str, str, set[str]]] = []
    for part in re.findall(r"(?:[^,(]|\([^)]*\))+", selector):
        term = part.strip()
        if not term:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            reqs.append((m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)", term):
            reqs.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
        elif m := re.fullmatch(r"!([\w./-]+)", term):
            reqs.append((m[1], "!", set()))
        elif re.fullmatch(r"[\w./-]+", term):
            reqs.append((term, "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return reqs


def _labels_match(labels: dict[str, str], reqs: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in reqs:
        present = key in labels
        if op in ("=", "in") and (not present or labels[key] not in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


def _started(pod: Json, at: str) -> None:
    """The kubelet's part: a running pod and its running containers started when created."""
    status = pod.get("status")
    if not isinstance(status, dict) or status.get("phase") != "Running":
        return
    status.setdefault("startTime", at)
    for container in status.get("containerStatuses") or ():
        running = (
            (container.get("state") or {}).get("running") if isinstance(container, dict) else None
        )
        if isinstance(running, dict):
            running.setdefault("startedAt", at)


def _wants_aggregated(accept: str) -> bool:
    """Whether an Accept header asks for aggregated discovery v2 (kubectl >= 1.30 does)."""
    for entry in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in entry.split(";"))}
        if (params.get("g"), params.get("v"), params.get("as")) == (
            "apidiscovery.k8s.io",
            "v2",
            "APIGroupDiscoveryList",
        ):
            return True
    return False


def _verb(method: str, named: bool, watch: str) -> str:
    """The RBAC verb the API server would authorise a request as."""
    if method == "GET":
        if named:
            return "get"
        return "watch" if watch.lower() in ("true", "1") else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
        method, method.lower()
    )


#: the field labels the API server lets a list select on, beyond metadata.name/namespace
#: (kubernetes pkg/registry/core/{event,pod}/strategy.go ``ToSelectableFields``); ``kubectl
#: describe`` finds an object's Events by ``involvedObject.{name,namespace,uid}`` (and ``kind``)
_SELECTABLE: dict[str, dict[str, tuple[str, ...]]] = {
    "Event": {
        "involvedObject.kind": ("involvedObject", "kind"),
        "involvedObject.namespace": ("involvedObject", "namespace"),
        "involvedObject.name": ("involvedObject", "name"),
        "involvedObject.uid": ("involvedObject", "uid"),
        "involvedObject.apiVersion": ("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": ("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": ("involvedObject", "fieldPath"),
        "reason": ("reason",),
        "reportingComponent": ("reportingComponent",),
        "source": ("source", "component"),
        "type": ("type",),
    },
    "Pod": {
        "spec.nodeName": ("spec", "nodeName"),
        "spec.restartPolicy": ("spec", "restartPolicy"),
        "spec.schedulerName": ("spec", "schedulerName"),
        "spec.serviceAccountName": ("spec", "serviceAccountName"),
        "spec.hostNetwork": ("spec", "hostNetwork"),
        "status.phase": ("status", "phase"),
        "status.podIP": ("status", "podIP"),
        "status.nominatedNodeName": ("status", "nominatedNodeName"),
    },
}


def _field_requirements(kind: str, selector: str) -> list[tuple[tuple[str, ...], bool, str]]:
    """Parse a field selector into (path, equal, value); 400 for a field the kind lacks."""
    fields = {
        "metadata.name": ("metadata", "name"),
        "metadata.namespace": ("metadata", "namespace"),
        **_SELECTABLE.get(kind, {}),
    }
    reqs = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        if m[1] not in fields:
            raise ValueError(f"field label not supported: {m[1]}")
        reqs.append((fields[m[1]], m[2] != "!=", m[3]))
    return reqs


def _field_value(obj: Json, path: tuple[str, ...]) -> str:
    value: Any = obj
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def _fields_match(obj: Json, reqs: list[tuple[tuple[str, ...], bool, str]]) -> bool:
    return all((_field_value(obj, path) == value) == equal for path, equal, value in reqs)


class KubeEmulator:
    """State plus HTTP handlers; ``serve()`` runs it on a loopback port in a thread."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # Stored objects are never mutated in place (a write stores a new object), so lists,
        # gets and the watch history can hand out references and serialise them under the lock.
        self._objects: dict[tuple[str, str, str, str], Json] = {}
        self._index: dict[tuple[str, str], dict[str, dict[str, Json]]] = {}
        self._rv = 1
        self._history: list[tuple[int, str, tuple[str, str, str], Json, Json | None]] = []
        self._watchers: set[asyncio.Queue[None]] = set()
        #: bumped by ``compact``: open watches end with 410 Gone, as after an etcd compaction
        self._compactions = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.faults: list[Fault] = []
        self.requests: list[LoggedRequest] = []
        self.url = ""
        self._serving: tuple[threading.Thread, asyncio.Event] | None = None
        #: (group, resource, verb) the identity may not do: 403, and SSARs say so
        self.denied: set[tuple[str, str, str]] = set()
        #: (group, plural) of custom resources whose CRD is not installed
        self.uninstalled: set[tuple[str, str]] = set()
        #: how far the server's clock, as its ``Date`` headers tell it, is ahead of this host's
        self.clock_offset_s = 0.0

    # ---- state ---------------------------------------------------------------------------
    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, key: tuple[str, str, str, str], obj: Json | None) -> None:
        group, resource, namespace, name = key
        bucket = self._index.setdefault((group, resource), {}).setdefault(namespace, {})
        if obj is None:
            self._objects.pop(key, None)
            bucket.pop(name, None)
        else:
            self._objects[key] = obj
            bucket[name] = obj

    def _record(self, kind: str, gvr: tuple[str, str, str], obj: Json, old: Json | None) -> None:
        self._history.append((self._rv, kind, gvr, obj, old))
        del self._history[:-_HISTORY]
        if self._loop is not None:
            for queue in list(self._watchers):
                self._loop.call_soon_threadsafe(queue.put_nowait, None)

    def compact(self) -> None:
        """Forget the event history, as an etcd compaction does: watches end with 410 Gone.

        Resuming from an older resourceVersion gets 410 too, so clients must list again.
        """
        with self._lock:
            self._history.clear()
            self._compactions += 1
            self._bump()
            if self._loop is not None:
                for queue in list(self._watchers):
                    self._loop.call_soon_threadsafe(queue.put_nowait, None)

    def create(self, obj: Json) -> Json:
        """Store a new object (as the API server would on POST); returns the stored copy."""
        with self._lock:
            kind = obj["kind"]
            gvr = _PLURAL_OF[kind]
            meta = obj.setdefault("metadata", {})
            namespaced = RESOURCES[gvr][1]
            key = (*gvr[:1], gvr[2], meta.get("namespace", "") if namespaced else "", meta["name"])
            if key in self._objects:
                raise KeyError(f"{kind} {meta['name']} already exists")
            meta.setdefault("uid", str(uuidlib.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            if kind == "Pod":
                _started(obj, meta["creationTimestamp"])
            if kind == "Namespace":  # as the API server's namespace strategy on create
                obj.setdefault("status", {}).setdefault("phase", "Active")
            meta["resourceVersion"] = self._bump()
            group, version, _ = gvr
            obj.setdefault("apiVersion", f"{group}/{version}" if group else version)
            stored = copy.deepcopy(obj)
            self._store(key, stored)
            self._record("ADDED", gvr, stored, None)
            return copy.deepcopy(stored)

    def get(self, kind: str, namespace: str, name: str) -> Json | None:
        """A copy of one object, or None."""
        gvr = _PLURAL_OF[kind]
        with self._lock:
            found = self._objects.get((gvr[0], gvr[2], namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def list(self, kind: str, namespace: str | None = None) -> list[Json]:
        """Copies of all objects of a kind (in one namespace when given)."""
        gvr = _PLURAL_OF[kind]
        with self._lock:
            return [
                copy.deepcopy(o)
                for (g, r, ns, _), o in self._objects.items()
                if (g, r) == (gvr[0], gvr[2]) and (namespace is None or ns == namespace)
            ]

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Remove an object; True if it existed."""
        gvr = _PLURAL_OF[kind]
        with self._lock:
            key = (gvr[0], gvr[2], namespace, name)
            old = self._objects.get(key)
            if old is None:
                return False
            self._store(key, None)
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": self._bump()}}
            self._record("DELETED", gvr, gone, old)
            return True

    def _replace(
        self, key: tuple[str, str, str, str], gvr: tuple[str, str, str], new: Json
    ) -> Json:
        old = self._objects[key]
        new = copy.deepcopy(new)
        new["metadata"]["resourceVersion"] = self._bump()
        self._store(key, new)
        self._record("MODIFIED", gvr, new, old)
        return new

    def update(self, kind: str, namespace: str, name: str, patch: Json) -> Json:
        """Merge-patch an object directly (tests use it to play another controller)."""
        gvr = _PLURAL_OF[kind]
        with self._lock:
            key = (gvr[0], gvr[2], namespace, name)
            return self._replace(key, gvr, merge_patch(self._objects[key], patch))

    # ---- HTTP ----------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        for fault in self.faults:
            if fault.matches(request.method, path):
                with self._lock:
                    fault.times -= 1
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if fault.status:
                    response = _status(fault.status, "InjectedFault", f"injected {fault.status}")
                    if fault.retry_after is not None:
                        response.headers["Retry-After"] = str(fault.retry_after)
                    return response
                break
        try:
            return await self._route(request)
        except ValueError as exc:
            return _status(400, "BadRequest", str(exc))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["_emulator", "requests"]:
            with self._lock:
                log = [[r.at, r.method, r.path, r.query, r.status, r.done] for r in self.requests]
            return web.Response(body=orjson.dumps(log), content_type="application/json")
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-emu"})
        if parts in (["api"], ["apis"]) and _wants_aggregated(request.headers.get("Accept", "")):
            return web.Response(
                body=orjson.dumps(self._aggregated(legacy=parts == ["api"])),
                headers={"Content-Type": _DISCOVERY_V2},
            )
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]:
            return await self._access_review(request)
        if parts == ["apis"]:
            return web.json_response(self._group_list())
        if parts[:1] == ["api"]:
            group, version, rest = "", parts[1] if len(parts) > 1 else "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return _status(404, "NotFound", f"no route {request.path}")
        if not rest:
            listing = self._resource_list(group, version)
            if not listing["resources"]:
                return _status(404, "NotFound", f"the server could not find {request.path}")
            return web.json_response(listing)
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], rest[1] if len(rest) > 1 else ""
        gvr = (group, version, plural)
        if gvr not in RESOURCES or len(rest) > 2 or (group, plural) in self.uninstalled:
            return _status(404, "NotFound", f"the server could not find {request.path}")
        verb = _verb(request.method, bool(name), request.query.get("watch", ""))
        if (group, plural, verb) in self.denied:
            return _status(403, "Forbidden", f'cannot {verb} resource "{plural}" (emulated RBAC)')
        kind, namespaced = RESOURCES[gvr]
        if not namespaced and namespace:
            return _status(404, "NotFound", f"{plural} is not namespaced")
        if name:
            return await self._item(request, gvr, kind, namespace, name)
        return await self._collection(request, gvr, kind, namespace)

    async def _access_review(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _status(405, "MethodNotAllowed", request.method)
        review = orjson.loads(await request.read())
        attributes = (review.get("spec") or {}).get("resourceAttributes") or {}
        wanted = (attributes.get("group", ""), attributes.get("resource", ""), attributes["verb"])
        allowed = wanted not in self.denied
        review["status"] = {"allowed": allowed}
        if not allowed:
            review["status"]["reason"] = "denied by the emulator's RBAC"
        return web.json_response(review, status=201)

    def _group_list(self) -> Json:
        groups = sorted({(g, v) for g, v, p in RESOURCES if g and (g, p) not in self.uninstalled})
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                    "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                }
                for g, v in groups
            ],
        }

    def _served(self, group: str, version: str) -> builtins.list[tuple[str, str, bool]]:
        """(plural, kind, namespaced) of the resources served in one group version."""
        return [
            (plural, kind, namespaced)
            for (g, v, plural), (kind, namespaced) in RESOURCES.items()
            if (g, v) == (group, version) and (g, plural) not in self.uninstalled
        ]

    def _resource_list(self, group: str, version: str) -> Json:
        resources = []
        for plural, kind, namespaced in self._served(group, version):
            resource: Json = {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": _VERBS,
            }
            if plural in _SHORT_NAMES:
                resource["shortNames"] = list(_SHORT_NAMES[plural])
            if plural in _IN_ALL:
                resource["categories"] = ["all"]
            resources.append(resource)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _aggregated(self, *, legacy: bool) -> Json:
        """/api (the core group) or /apis as one apidiscovery.k8s.io/v2 APIGroupDiscoveryList."""
        versions = sorted({(g, v) for g, v, _ in RESOURCES if (g == "") == legacy})
        items = []
        for group, version in versions:
            resources = [
                {
                    "resource": plural,
                    "responseKind": {"group": group, "version": version, "kind": kind},
                    "scope": "Namespaced" if namespaced else "Cluster",
                    "singularResource": kind.lower(),
                    "verbs": _VERBS,
                    **(
                        {"shortNames": list(_SHORT_NAMES[plural])} if plural in _SHORT_NAMES else {}
                    ),
                    **({"categories": ["all"]} if plural in _IN_ALL else {}),
                }
                for plural, kind, namespaced in self._served(group, version)
            ]
            if resources:
                items.append(
                    {
                        "metadata": {"name": group},
                        "versions": [
                            {"version": version, "resources": resources, "freshness": "Current"}
                        ],
                    }
                )
        return {
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        }

    def _matching(
        self, gvr: tuple[str, str, str], namespace: str, request: web.Request
    ) -> builtins.list[Json]:
        reqs = _label_requirements(request.query.get("labelSelector", ""))
        fields = _field_requirements(RESOURCES[gvr][0], request.query.get("fieldSelector", ""))
        by_namespace = self._index.get((gvr[0], gvr[2]), {})
        buckets = [by_namespace.get(namespace, {})] if namespace else list(by_namespace.values())
        return [
            obj
            for bucket in buckets
            for obj in bucket.values()
            if _labels_match(obj["metadata"].get("labels") or {}, reqs)
            and _fields_match(obj, fields)
        ]

    @staticmethod
    def _table_for(request: web.Request, kind: str) -> bool:
        """Whether to answer as kubectl asked: a Table, for the kinds it has printers for."""
        if not tables.wants_table(request.headers.get("Accept", "")):
            return False
        if request.query.get("includeObject", "Metadata") not in tables.INCLUDE:
            raise ValueError(f"includeObject must be one of {', '.join(tables.INCLUDE)}")
        return tables.printable(kind)

    async def _collection(
        self, request: web.Request, gvr: tuple[str, str, str], kind: str, namespace: str
    ) -> web.StreamResponse:
        if request.method == "GET":
            if request.query.get("watch", "").lower() in ("true", "1"):
                return await self._watch(request, gvr, namespace)
            group, version, _ = gvr
            # paging as the API server does: ``limit``, then ``continue`` with the token of the
            # page before; every page reports the first page's resourceVersion (a snapshot)
            limit = int(request.query.get("limit") or 0)
            token = request.query.get("continue", "")
            snapshot, _, offset = token.partition(":") if token else ("", "", "0")
            with self._lock:
                items = self._matching(gvr, namespace, request)
                start = int(offset or 0)
                page = items[start : start + limit] if limit else items
                meta = {"resourceVersion": snapshot or str(self._rv)}
                if limit and start + limit < len(items):
                    meta["continue"] = f"{meta['resourceVersion']}:{start + limit}"
                if self._table_for(request, kind):
                    include = request.query.get("includeObject", "Metadata")
                    body = orjson.dumps(tables.table(kind, page, meta, include))
                else:
                    body = orjson.dumps(
                        {
                            "kind": f"{kind}List",
                            "apiVersion": f"{group}/{version}" if group else version,
                            "metadata": meta,
                            "items": page,
                        }
                    )
            return web.Response(body=body, content_type="application/json")
        if request.method == "POST":
            body = orjson.loads(await request.read())
            body["kind"] = kind
            meta = body.setdefault("metadata", {})
            if namespace:
                meta["namespace"] = namespace
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuidlib.uuid4().hex[:5]
            if not meta.get("name"):
                return _status(422, "Invalid", "metadata.name is required")
            if namespace and self.get("Namespace", "", namespace) is None:
                return _status(404, "NotFound", f'namespaces "{namespace}" not found')
            try:
                created = self.create(body)
            except KeyError as exc:
                return _status(409, "AlreadyExists", str(exc))
            return web.json_response(created, status=201)
        return _status(405, "MethodNotAllowed", request.method)

    async def _item(
        self,
        request: web.Request,
        gvr: tuple[str, str, str],
        kind: str,
        namespace: str,
        name: str,
    ) -> web.StreamResponse:
        key = (gvr[0], gvr[2], namespace, name)
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                return _status(404, "NotFound", f'{gvr[2]} "{name}" not found')
            if request.method == "GET" and self._table_for(request, kind):
                include = request.query.get("includeObject", "Metadata")
                meta = {"resourceVersion": current["metadata"]["resourceVersion"]}
                body = orjson.dumps(tables.table(kind, [current], meta, include))
                return web.Response(body=body, content_type="application/json")
            if request.method == "GET":
                return web.Response(body=orjson.dumps(current), content_type="application/json")
            if request.method == "DELETE":
                self.delete(kind, namespace, name)
                return web.json_response(current)
        if request.method not in ("PATCH", "PUT"):
            return _status(405, "MethodNotAllowed", request.method)
        body = orjson.loads(await request.read())
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                return _status(404, "NotFound", f'{gvr[2]} "{name}" not found')
            if request.method == "PUT":
                new = body
            elif content_type == "application/json-patch+json":
                try:
                    new = jsonpatch.apply_patch(current, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    return _status(422, "Invalid", str(exc))
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                new = merge_patch(current, body)
            else:
                return _status(415, "UnsupportedMediaType", f"patch type {content_type!r}")
            wanted = (
                (body.get("metadata") or {}).get("resourceVersion")
                if isinstance(body, dict)
                else None
            )
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                return _status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {gvr[2]} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            new.setdefault("metadata", {})
            for immutable in ("name", "namespace", "uid", "creationTimestamp"):
                if immutable in current["metadata"]:
                    new["metadata"][immutable] = current["metadata"][immutable]
            new["kind"], new["apiVersion"] = current["kind"], current["apiVersion"]
            return web.Response(
                body=orjson.dumps(self._replace(key, gvr, new)), content_type="application/json"
            )

    async def _watch(
        self, request: web.Request, gvr: tuple[str, str, str], namespace: str
    ) -> web.StreamResponse:
        reqs = _label_requirements(request.query.get("labelSelector", ""))
        fields = _field_requirements(RESOURCES[gvr][0], request.query.get("fieldSelector", ""))
        timeout = float(request.query.get("timeoutSeconds", "300"))
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        since = request.query.get("resourceVersion", "")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        queue: asyncio.Queue[None] = asyncio.Queue()
        self._watchers.add(queue)

        def visible(obj: Json | None) -> bool:
            if obj is None:
                return False
            meta = obj["metadata"]
            return (
                (not namespace or meta.get("namespace") == namespace)
                and _labels_match(meta.get("labels") or {}, reqs)
                and _fields_match(obj, fields)
            )

        as_table = self._table_for(request, RESOURCES[gvr][0])
        include = request.query.get("includeObject", "Metadata")
        columns_sent = False

        async def send(kind: str, obj: Json) -> None:
            nonlocal columns_sent
            if as_table and kind in ("ADDED", "MODIFIED", "DELETED"):
                # as the API server's watch encoder: each object a one-row Table, the columns
                # only on the first (``kubectl get -w`` prints the header once)
                meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                obj = tables.table(RESOURCES[gvr][0], [obj], meta, include)
                if columns_sent:
                    obj["columnDefinitions"] = []
                columns_sent = True
            await response.write(orjson.dumps({"type": kind, "object": obj}) + b"\n")

        gone = {
            "kind": "Status",
            "code": 410,
            "reason": "Expired",
            "message": "too old resource version",
        }
        try:
            with self._lock:
                generation = self._compactions
                if since and since != "0":
                    oldest = self._history[0][0] if self._history else self._rv
                    if int(since) < oldest - 1:
                        await send("ERROR", gone)
                        return response
                    cursor = int(since)
                    initial: list[Json] = []
                else:
                    cursor = self._rv
                    initial = self._matching(gvr, namespace, request)
            for obj in initial:
                await send("ADDED", obj)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with self._lock:
                    compacted = self._compactions != generation
                    pending = [h for h in self._history if h[0] > cursor and h[2] == gvr]
                    cursor = self._rv
                if compacted:
                    await send("ERROR", gone)
                    return response
                for _rv, kind, _gvr, obj, old in pending:
                    now_in, was_in = visible(obj), visible(old)
                    if kind == "DELETED" and was_in:
                        await send("DELETED", obj)
                    elif now_in and (kind == "ADDED" or not was_in):
                        await send("ADDED", obj)
                    elif now_in:
                        await send("MODIFIED", obj)
                    elif was_in:
                        await send("DELETED", obj)
                try:
                    await asyncio.wait_for(
                        queue.get(), timeout=min(1.0, max(0.0, deadline - time.monotonic()))
                    )
                except TimeoutError:
                    if bookmarks:
                        kind_name = RESOURCES[gvr][0]
                        await send(
                            "BOOKMARK",
                            {
                                "kind": kind_name,
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(cursor)},
                            },
                        )
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
        return response

    @web.middleware
    async def _log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        arrived = time.time()
        response: web.StreamResponse = await handler(request)
        if request.path.startswith("/_emulator/"):
            return response
        body = await request.read() if request.method == "PATCH" else b""
        with self._lock:
            self.requests.append(
                LoggedRequest(
                    arrived,
                    request.method,
                    request.path,
                    request.query_string,
                    response.status,
                    time.time(),
                    body,
                )
            )
        return response

    async def _date(self, _request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's ``Date``, by the server's clock (RFC 9110 IMF-fixdate)."""
        response.headers["Date"] = email.utils.formatdate(
            time.time() + self.clock_offset_s, usegmt=True
        )

    # ---- serving -------------------------------------------------------------------------
    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[KubeEmulator]:
        """Run on ``host:port`` (0 = a free port) in a thread until the block ends."""
        self._start(host, port)
        try:
            yield self
        finally:
            self._stop()

    @contextmanager
    def unreachable(self) -> Iterator[None]:
        """An API server outage: connections refused for the block, then the same address again.

        State survives, as etcd's does when the API server itself goes away.
        """
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self._stop()
        try:
            yield
        finally:
            self._start(host, int(port))

    def _start(self, host: str, port: int) -> None:
        ready = threading.Event()
        stop = asyncio.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            app = web.Application(middlewares=[self._log], client_max_size=8 << 20)
            app.on_response_prepare.append(self._date)
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            server = site._server  # noqa: SLF001 - aiohttp exposes the bound port nowhere else
            sockets = getattr(server, "sockets", None) or []
            bound = sockets[0].getsockname()[1] if sockets else port
            self.url = f"http://{host}:{bound}"
            self._loop = asyncio.get_running_loop()
            ready.set()
            await stop.wait()
            await runner.cleanup()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)
                ready.set()

        self.url = ""
        thread = threading.Thread(target=run, name="kube-emulator", daemon=True)
        thread.start()
        ready.wait(10)
        if errors or not self.url:
            raise RuntimeError(f"emulator failed to start: {errors}")
        self._serving = (thread, stop)

    def _stop(self) -> None:
        if self._serving is None:
            return
        (thread, stop), self._serving = self._serving, None
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        self._loop = None

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig pointing at this emulator (no auth), usable by kubectl too."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "streamproc-emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "streamproc", "user": {"token": "emulator"}}],
            "contexts": [
                {
                    "name": "streamproc-emulator",
                    "context": {"cluster": "streamproc-emulator", "user": "streamproc"},
                }
            ],
            "current-context": "streamproc-emulator",
        }
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path


def main(argv: builtins.list[str] | None = None) -> None:
    """Serve the emulator as its own process (benchmarks, or kubectl against a sample cluster).

    ``GET /_emulator/requests`` returns the request log as
    ``[arrived, method, path, query, status, answered]``.
    """
    import argparse  # noqa: PLC0415 - only the command line needs it
    import signal  # noqa: PLC0415

    from streamproc.lab.cluster import ClusterBuilder, sample_cluster  # noqa: PLC0415

    parser = argparse.ArgumentParser(description="streamproc's emulated Kubernetes API server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="write a kubeconfig here")
    parser.add_argument(
        "--deployments",
        type=int,
        default=0,
        help="seed N Deployments (2 pods each) instead of the lab's sample cluster",
    )
    parser.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        help="seconds the server's clock (its Date headers) is ahead of this host's",
    )
    args = parser.parse_args(argv)
    builder = sample_cluster() if not args.deployments else ClusterBuilder(seed=3)
    for i in range(args.deployments):
        builder.deployment(f"ns-{i % 25}", f"app-{i}", 2, "nginx:1.27")
    emulator = KubeEmulator()
    emulator.clock_offset_s = args.clock_offset
    for obj in builder.objects:
        emulator.create(obj)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with emulator.serve(port=args.port):
        emulator.write_kubeconfig(args.kubeconfig)
        print(emulator.url, flush=True)  # noqa: T201 - the parent reads the address
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()
