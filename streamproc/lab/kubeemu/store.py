"""The emulator's object store: objects, their resourceVersions and the watch history.

Stored objects are never mutated in place (a write stores a new object), so lists, gets and the
watch history can hand out references and serialise them under the lock.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid as uuidlib

from streamproc.lab.kubeemu.resources import PLURAL_OF, RESOURCES, Json, merge_patch

#: watch events kept for resuming from a resourceVersion; older ones answer 410 Gone
_HISTORY = 10_000


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


class Store:
    """Objects by (group, resource, namespace, name), as etcd holds them for the API server."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], Json] = {}
        self._index: dict[tuple[str, str], dict[str, dict[str, Json]]] = {}
        self._rv = 1
        self._history: list[tuple[int, str, tuple[str, str, str], Json, Json | None]] = []
        self._watchers: set[asyncio.Queue[None]] = set()
        #: bumped by ``compact``: open watches end with 410 Gone, as after an etcd compaction
        self._compactions = 0
        #: the serving loop, woken on every write for the watches it runs
        self._loop: asyncio.AbstractEventLoop | None = None

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
            gvr = PLURAL_OF[kind]
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
        gvr = PLURAL_OF[kind]
        with self._lock:
            found = self._objects.get((gvr[0], gvr[2], namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def list(self, kind: str, namespace: str | None = None) -> list[Json]:
        """Copies of all objects of a kind (in one namespace when given)."""
        gvr = PLURAL_OF[kind]
        with self._lock:
            return [
                copy.deepcopy(o)
                for (g, r, ns, _), o in self._objects.items()
                if (g, r) == (gvr[0], gvr[2]) and (namespace is None or ns == namespace)
            ]

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Remove an object; True if it existed."""
        gvr = PLURAL_OF[kind]
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
        gvr = PLURAL_OF[kind]
        with self._lock:
            key = (gvr[0], gvr[2], namespace, name)
            return self._replace(key, gvr, merge_patch(self._objects[key], patch))
