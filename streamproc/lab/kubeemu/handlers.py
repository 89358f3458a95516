"""The emulator's HTTP side: routing, RBAC, collections and items, watches, the request log."""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid as uuidlib
from typing import Any

import jsonpatch
import orjson
from aiohttp import web

from streamproc.lab import tables
from streamproc.lab.kubeemu import discovery
from streamproc.lab.kubeemu.faults import Fault, LoggedRequest
from streamproc.lab.kubeemu.resources import RESOURCES, Json, api_status, merge_patch, rbac_verb
from streamproc.lab.kubeemu.selectors import (
    field_requirements,
    fields_match,
    label_requirements,
    labels_match,
)
from streamproc.lab.kubeemu.store import Store


def _precondition_failed(body: bytes, meta: Json) -> str:
    """Which of a DELETE's ``preconditions`` the object fails (empty: none, or no body)."""
    try:
        options = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise ValueError("the body is not DeleteOptions JSON") from None
    wanted = (options.get("preconditions") or {}) if isinstance(options, dict) else {}
    for field, key in (("resourceVersion", "resourceVersion"), ("uid", "uid")):
        if wanted.get(field) and wanted[field] != meta.get(key):
            return f"{field} in precondition: {wanted[field]}, in object meta: {meta.get(key)}"
    return ""


class Handlers(Store):
    """The API server's handlers over the store, with faults, emulated RBAC and CRDs."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: list[Fault] = []
        self.requests: list[LoggedRequest] = []
        #: (group, resource, verb) the identity may not do: 403, and SSARs say so
        self.denied: set[tuple[str, str, str]] = set()
        #: (group, plural) of custom resources whose CRD is not installed
        self.uninstalled: set[tuple[str, str]] = set()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        for fault in self.faults:
            if fault.matches(request.method, path):
                with self._lock:
                    fault.times -= 1
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if fault.status:
                    response = api_status(fault.status, "InjectedFault", f"injected {fault.status}")
                    if fault.retry_after is not None:
                        response.headers["Retry-After"] = str(fault.retry_after)
                    return response
                break
        try:
            return await self._route(request)
        except ValueError as exc:
            return api_status(400, "BadRequest", str(exc))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["_emulator", "requests"]:
            with self._lock:
                log = [[r.at, r.method, r.path, r.query, r.status, r.done] for r in self.requests]
            return web.Response(body=orjson.dumps(log), content_type="application/json")
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-emu"})
        if parts in (["api"], ["apis"]) and discovery.wants_aggregated(
            request.headers.get("Accept", "")
        ):
            return web.Response(
                body=orjson.dumps(
                    discovery.aggregated(legacy=parts == ["api"], uninstalled=self.uninstalled)
                ),
                headers={"Content-Type": discovery.DISCOVERY_V2},
            )
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]:
            return await self._access_review(request)
        if parts == ["apis"]:
            return web.json_response(discovery.group_list(self.uninstalled))
        if parts[:1] == ["api"]:
            group, version, rest = "", parts[1] if len(parts) > 1 else "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return api_status(404, "NotFound", f"no route {request.path}")
        if not rest:
            listing = discovery.resource_list(group, version, self.uninstalled)
            if not listing["resources"]:
                return api_status(404, "NotFound", f"the server could not find {request.path}")
            return web.json_response(listing)
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], rest[1] if len(rest) > 1 else ""
        gvr = (group, version, plural)
        if gvr not in RESOURCES or len(rest) > 2 or (group, plural) in self.uninstalled:
            return api_status(404, "NotFound", f"the server could not find {request.path}")
        verb = rbac_verb(request.method, bool(name), request.query.get("watch", ""))
        if (group, plural, verb) in self.denied:
            return api_status(
                403, "Forbidden", f'cannot {verb} resource "{plural}" (emulated RBAC)'
            )
        kind, namespaced = RESOURCES[gvr]
        if not namespaced and namespace:
            return api_status(404, "NotFound", f"{plural} is not namespaced")
        if name:
            return await self._item(request, gvr, kind, namespace, name)
        return await self._collection(request, gvr, kind, namespace)

    async def _access_review(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return api_status(405, "MethodNotAllowed", request.method)
        review = orjson.loads(await request.read())
        attributes = (review.get("spec") or {}).get("resourceAttributes") or {}
        wanted = (attributes.get("group", ""), attributes.get("resource", ""), attributes["verb"])
        allowed = wanted not in self.denied
        review["status"] = {"allowed": allowed}
        if not allowed:
            review["status"]["reason"] = "denied by the emulator's RBAC"
        return web.json_response(review, status=201)

    def _matching(
        self, gvr: tuple[str, str, str], namespace: str, request: web.Request
    ) -> builtins.list[Json]:
        reqs = label_requirements(request.query.get("labelSelector", ""))
        fields = field_requirements(RESOURCES[gvr][0], request.query.get("fieldSelector", ""))
        by_namespace = self._index.get((gvr[0], gvr[2]), {})
        buckets = [by_namespace.get(namespace, {})] if namespace else list(by_namespace.values())
        return [
            obj
            for bucket in buckets
            for obj in bucket.values()
            if labels_match(obj["metadata"].get("labels") or {}, reqs) and fields_match(obj, fields)
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
                return api_status(422, "Invalid", "metadata.name is required")
            if namespace and self.get("Namespace", "", namespace) is None:
                return api_status(404, "NotFound", f'namespaces "{namespace}" not found')
            try:
                created = self.create(body)
            except KeyError as exc:
                return api_status(409, "AlreadyExists", str(exc))
            return web.json_response(created, status=201)
        return api_status(405, "MethodNotAllowed", request.method)

    async def _item(
        self,
        request: web.Request,
        gvr: tuple[str, str, str],
        kind: str,
        namespace: str,
        name: str,
    ) -> web.StreamResponse:
        key = (gvr[0], gvr[2], namespace, name)
        options = await request.read() if request.method == "DELETE" else b""
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                return api_status(404, "NotFound", f'{gvr[2]} "{name}" not found')
            if request.method == "GET" and self._table_for(request, kind):
                include = request.query.get("includeObject", "Metadata")
                meta = {"resourceVersion": current["metadata"]["resourceVersion"]}
                body = orjson.dumps(tables.table(kind, [current], meta, include))
                return web.Response(body=body, content_type="application/json")
            if request.method == "GET":
                return web.Response(body=orjson.dumps(current), content_type="application/json")
            if request.method == "DELETE":
                # DeleteOptions.preconditions: a stale resourceVersion or uid is a 409 Conflict
                # as the API server answers it ("Precondition failed: ...")
                failed = _precondition_failed(options, current["metadata"])
                if failed:
                    return api_status(409, "Conflict", f"Precondition failed: {failed}")
                self.delete(kind, namespace, name)
                return web.json_response(current)
        if request.method not in ("PATCH", "PUT"):
            return api_status(405, "MethodNotAllowed", request.method)
        body = orjson.loads(await request.read())
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                return api_status(404, "NotFound", f'{gvr[2]} "{name}" not found')
            if request.method == "PUT":
                new = body
            elif content_type == "application/json-patch+json":
                try:
                    new = jsonpatch.apply_patch(current, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    return api_status(422, "Invalid", str(exc))
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                new = merge_patch(current, body)
            else:
                return api_status(415, "UnsupportedMediaType", f"patch type {content_type!r}")
            wanted = (
                (body.get("metadata") or {}).get("resourceVersion")
                if isinstance(body, dict)
                else None
            )
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                return api_status(
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
        reqs = label_requirements(request.query.get("labelSelector", ""))
        fields = field_requirements(RESOURCES[gvr][0], request.query.get("fieldSelector", ""))
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
                and labels_match(meta.get("labels") or {}, reqs)
                and fields_match(obj, fields)
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
