"""The connection the stages use: rate-limited, retried, raw JSON in and out.

Responses are read raw and decoded with orjson: the generated models are slow and drop fields.
Transient failures (5xx, 429, timeouts, refused connections) are retried over an exponential
backoff with jitter, honouring ``Retry-After``; the rest surface as NotFound, Conflict or
Forbidden for the caller to decide. Every answer's ``Date`` header also tells how far this
host's clock is from the API server's (``clocks.Skew``): the stages keep the API server's time
(``Kube.now``), so replicas agree on the pods' expiry times. The doctor's reads live in
``inspecting``.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Self

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from streamproc import clocks
from streamproc.clients import metrics, throttling
from streamproc.clients.kube import config
from streamproc.clients.kube.config import Limits
from streamproc.clients.kube.errors import Gone, KubeError, Unavailable, translate
from streamproc.clients.kube.objects import Json, MetadataPatch, ObjectRef
from streamproc.settings import DEFAULTS

MERGE_PATCH = "application/merge-patch+json"
#: Events waiting for their budget at most; past it a new one is dropped and counted, as
#: client-go's event broadcaster drops past its queue of 1,000 ("too many queued events";
#: kubernetes/client-go ``tools/record/event.go``, ``maxQueuedEvents``, at 0d54cf5): an Event is
#: never worth memory or a request of the observations themselves
EVENT_BACKLOG = 1000
#: at shutdown, how long Events still waiting for their budget may take before they are dropped
_EVENT_DRAIN_S = 2.0


_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.2)


def _wait(state: RetryCallState) -> float:
    backoff = _BACKOFF(state)
    exc = state.outcome.exception() if state.outcome else None
    hinted = exc.retry_after if isinstance(exc, Unavailable) else 0.0
    return max(backoff, hinted)


def _count_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    metrics.api_retries.labels(reason=str(getattr(exc, "status", None) or "connection")).inc()


class Kube:
    """A connection to one cluster."""

    def __init__(
        self, api: client.ApiClient, *, timeout_s: float, attempts: int, limits: Limits
    ) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._batch = client.BatchV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._version = client.VersionApi(api)
        self._timeout = timeout_s
        self._attempts = attempts
        # Token bucket: ``burst`` requests at once, ``qps`` sustained; shared by every caller of
        # this connection, retries included, with apply and expiry taking turns (``throttling``).
        # Events have a bucket of their own, so they never delay an observation's requests.
        self._limits = limits
        self._limiter = throttling.FairLimiter(limits.qps, limits.burst)
        self._event_limiter = throttling.FairLimiter(limits.event_qps, limits.event_burst)
        self._in_flight = throttling.FairSlots(limits.concurrency)
        self._events: set[asyncio.Future[None]] = set()
        self._post_events = limits.events
        self._connector_session: aiohttp.ClientSession | None = None
        #: when (``time.monotonic``) the API server last answered a request other than with a
        #: 5xx or 429: a failure while it answers others is confined to one object
        self.answered_at = 0.0
        #: this host's clock against the API server's, from the answers' ``Date`` headers
        self.skew = clocks.Skew()

    def now(self) -> float:
        """The API server's time: this host's clock corrected by the skew measured so far."""
        return self.skew.now()

    def _clock_sample(self, headers: Mapping[str, str] | None, sent: float) -> None:
        """Read one answer's ``Date`` into the skew estimate and its gauge."""
        if headers is not None and self.skew.add(headers.get("Date"), sent, time.time()):
            metrics.clock_skew.labels(server=self.server).set(self.skew.seconds)

    def share_limits(self, share: float) -> None:
        """Take ``share`` of the configured request rate and burst; never below 5 %.

        Annotate replicas split the one budget an operator set by the partitions each owns.
        """
        share = min(1.0, max(share, 0.05))
        self._limiter.retune(self._limits.qps * share, round(self._limits.burst * share))
        self._event_limiter.retune(
            self._limits.event_qps * share, round(self._limits.event_burst * share)
        )

    @property
    def granted(self) -> dict[str, int]:
        """Requests let through so far, per lane of the API budget, and ``events`` (their own)."""
        return {**self._limiter.granted, "events": self._event_limiter.granted["events"]}

    @classmethod
    async def connect(
        cls,
        kubeconfig: str | None = None,
        *,
        timeout_s: float = DEFAULTS.api_timeout_s,
        attempts: int = 5,
        limits: Limits | None = None,
        context: str | None = None,
    ) -> Self:
        """Load credentials: a given file, KUBECONFIG, ~/.kube/config, else the pod's account.

        ``context`` picks a kubeconfig context other than the current one (another cluster of a
        fleet). ConfigError says which was tried and what to do.
        """
        configuration = await config.load_configuration(kubeconfig, context)
        config.proxy_from_environment(configuration)
        api = client.ApiClient(configuration)
        kube = cls(api, timeout_s=timeout_s, attempts=attempts, limits=limits or Limits())
        kube._quiet_session(api)
        return kube

    def _quiet_session(self, api: client.ApiClient) -> None:
        """Swap the client's HTTP session for one that does not consult the environment.

        kubernetes_asyncio opens its session with ``trust_env=True``, and aiohttp then hands every
        request to a thread twice: to read ``~/.netrc`` and to look up proxy variables (in a pod,
        next to thousands of service variables). Measured in the annotator, that was a third of
        its CPU. The proxy is looked up once instead (``config.proxy_from_environment``); the
        connector, with its TLS settings and pool, is the client's own.
        """
        original = api.rest_client.pool_manager
        api.rest_client.pool_manager = aiohttp.ClientSession(
            connector=original.connector,
            connector_owner=False,
            trust_env=False,
            read_bufsize=2**21,  # as the client's: watch events can be large
        )
        self._connector_session = original  # owns the connector; closed last

    async def close(self) -> None:
        """Wait (briefly) for events still being posted, then release the HTTP session."""
        if self._events:
            _, waiting = await asyncio.wait(set(self._events), timeout=_EVENT_DRAIN_S)
            for task in waiting:
                task.cancel()
            if waiting:
                metrics.stage_errors.labels(stage="events", error="Shutdown").inc(len(waiting))
            await asyncio.gather(*waiting, return_exceptions=True)
        await self._api.close()
        if self._connector_session is not None:
            await self._connector_session.close()

    def post_event(self, pod: Json, reason: str, message: str) -> None:
        """Record a Kubernetes Event on a pod, in the background (best effort, counted).

        ``kubectl describe pod`` shows it, as operators expect from a controller. An event that
        cannot be written never holds back or fails the observation itself: Events are sent
        from their own budget (``--event-qps``), and past ``EVENT_BACKLOG`` waiting ones a new
        one is dropped and counted (``streamproc_stage_errors_total{stage="events"}``).
        """
        if not self._post_events:
            return
        if len(self._events) >= EVENT_BACKLOG:
            metrics.stage_errors.labels(stage="events", error="BacklogFull").inc()
            return
        meta = pod.get("metadata") or {}
        kind = str(pod.get("kind") or "Pod")
        name = str(meta.get("name", ""))
        # events about a cluster-scoped object (a Namespace) live in "default", as kubectl's do
        namespace = str(meta.get("namespace") or "default")
        now = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": kind,
                "name": name,
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Normal",
            "source": {"component": "streamproc"},
            "reportingComponent": "streamproc.io/annotator",
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

        async def post() -> None:
            try:
                await self._call(
                    "create",
                    f"event on pod {namespace}/{name}",
                    lambda: self._core.create_namespaced_event(
                        namespace, body, _preload_content=False, _request_timeout=self._timeout
                    ),
                    events=True,
                )
            except KubeError as exc:
                metrics.stage_errors.labels(stage="events", error=type(exc).__name__).inc()

        task = asyncio.ensure_future(post())
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _throttle(self) -> None:
        """Wait for the rate limit, in the caller's lane (counted when it makes a request wait)."""
        if not self._limiter.has_capacity():
            metrics.rate_limit_waits.inc()
        await self._limiter.acquire(throttling.current_lane())

    async def _call(
        self,
        verb: str,
        what: str,
        request: Callable[[], Awaitable[Any]],
        *,
        events: bool = False,
    ) -> Json:
        async def once() -> Json:
            if events:
                # an Event's token first: Events waiting for their budget never hold a slot
                await self._event_limiter.acquire("events")
                async with self._in_flight.slot("events"):
                    return await send()
            # A slot first, then the token: a token taken while queueing for a slot would let
            # the queue leave at the server's pace rather than the limit's. Both are handed to
            # the lanes in turn.
            async with self._in_flight.slot(throttling.current_lane()):
                await self._throttle()
                return await send()

        async def send() -> Json:
            started = time.perf_counter()
            sent = time.time()
            code = "error"
            try:
                response = await request()
                self._clock_sample(response.headers, sent)
                code = str(response.status)
                if response.status < 500 and response.status != 429:
                    self.answered_at = time.monotonic()
                body = await response.read()
                if response.status >= 400:
                    message = body.decode("utf-8", "replace")[:300]
                    raise translate(response.status, message, response.headers, what)
                return orjson.loads(body)  # type: ignore[no-any-return]
            except ApiException as exc:
                code = str(exc.status)
                raise translate(exc.status or 0, str(exc.reason), exc.headers, what) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from None
            finally:
                metrics.api_request_duration.labels(verb=verb, code=code).observe(
                    time.perf_counter() - started
                )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self._attempts),
            wait=_wait,
            before_sleep=_count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await once()
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_pods(
        self, namespace: str | None, label_selector: str | None = None
    ) -> list[Json]:
        """Pods in a namespace (or all namespaces when None), optionally label-filtered."""
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": self._timeout}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if namespace is None:
            doc = await self._call(
                "list", "pods", lambda: self._core.list_pod_for_all_namespaces(**kwargs)
            )
        else:
            doc = await self._call(
                "list",
                f"pods in {namespace}",
                lambda: self._core.list_namespaced_pod(namespace, **kwargs),
            )
        return list(doc.get("items") or [])

    def _lister(self, resource: str) -> Callable[..., Awaitable[Any]]:
        """The all-namespaces list call of a watchable resource."""
        calls: dict[str, Callable[..., Awaitable[Any]]] = {
            "pods": self._core.list_pod_for_all_namespaces,
            "replicasets": self._apps.list_replica_set_for_all_namespaces,
            "jobs": self._batch.list_job_for_all_namespaces,
        }
        return calls[resource]

    async def list_pages(
        self, resource: str = "pods", *, page_size: int = 500, label_selector: str | None = None
    ) -> AsyncIterator[tuple[list[Json], str]]:
        """Pages of all pods, replicasets or jobs, each with the list's resourceVersion.

        Paged as client-go's informers list (``limit``/``continue``): a large cluster's list is
        never held whole, so listing costs one page of memory, not every object. The watch
        starts from the version once the last page is read.
        """
        call = self._lister(resource)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "_preload_content": False,
                "_request_timeout": self._timeout,
                "limit": page_size,
            }
            if token:
                kwargs["_continue"] = token
            if label_selector:
                kwargs["label_selector"] = label_selector
            doc = await self._call("list", resource, functools.partial(call, **kwargs))
            meta = doc.get("metadata") or {}
            yield list(doc.get("items") or []), str(meta.get("resourceVersion"))
            token = meta.get("continue")
            if not token:
                return

    async def watch(
        self, resource: str, resource_version: str, *, timeout_s: int = 60
    ) -> AsyncIterator[tuple[str, Json]]:
        """Events of ``resource`` in all namespaces after ``resource_version``, bookmarks included.

        Ends after ``timeout_s`` (the server closes the stream); raises Gone when the version is
        too old, Unavailable when the stream breaks.
        """
        what = f"watch {resource}"
        await self._throttle()
        sent = time.time()
        try:
            # with _preload_content=False the call returns the raw aiohttp response
            response: Any = await self._lister(resource)(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_s,
                _preload_content=False,
                _request_timeout=timeout_s + self._timeout,
            )
            self._clock_sample(response.headers, sent)
            if response.status >= 400:
                body = (await response.read()).decode("utf-8", "replace")[:300]
                raise translate(response.status, body, response.headers, what)
            async with response:
                async for line in lines_of(response.content.iter_any()):
                    event = orjson.loads(line)
                    kind, obj = event.get("type", ""), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(f"{what}: resourceVersion too old", status=410)
                        raise Unavailable(f"{what}: {obj.get('message', obj)}")
                    yield kind, obj
        except ApiException as exc:
            raise translate(exc.status or 0, str(exc.reason), exc.headers, what) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from None

    async def create_capture(self, namespace: str, body: Json) -> Json:
        """Create a Retina Capture (``retina.sh/v1alpha1``); Conflict if it already exists."""
        group, version = "retina.sh", "v1alpha1"
        return await self._call(
            "create",
            f"capture {namespace}/{body['metadata']['name']}",
            lambda: self._custom.create_namespaced_custom_object(
                group,
                version,
                namespace,
                "captures",
                body,
                _preload_content=False,
                _request_timeout=self._timeout,
            ),
        )

    # ---- cluster-scoped custom objects (ACNS's ContainerNetworkMetric) ---------------------------
    def _cluster_objects(
        self, verb: str, gvr: tuple[str, str, str], *args: Any, **kwargs: Any
    ) -> Any:
        """One CustomObjectsApi cluster-scoped call, raw (``verb``: list/create/replace/delete)."""
        call = getattr(self._custom, f"{verb}_cluster_custom_object")
        return call(*gvr, *args, _preload_content=False, _request_timeout=self._timeout, **kwargs)

    async def list_cluster_objects(self, gvr: tuple[str, str, str]) -> list[Json]:
        """Every object of a cluster-scoped custom resource (group, version, plural)."""
        doc = await self._call("list", gvr[2], lambda: self._cluster_objects("list", gvr))
        return list(doc.get("items") or [])

    async def create_cluster_object(self, gvr: tuple[str, str, str], body: Json) -> Json:
        """Create one; Conflict when it exists already (409 AlreadyExists)."""
        what = f"{gvr[2]}/{body['metadata']['name']}"
        return await self._call("create", what, lambda: self._cluster_objects("create", gvr, body))

    async def replace_cluster_object(self, gvr: tuple[str, str, str], body: Json) -> Json:
        """PUT the whole object; Conflict when its ``metadata.resourceVersion`` is stale."""
        name = body["metadata"]["name"]
        return await self._call(
            "update", f"{gvr[2]}/{name}", lambda: self._cluster_objects("replace", gvr, name, body)
        )

    async def delete_cluster_object(
        self, gvr: tuple[str, str, str], name: str, *, resource_version: str
    ) -> Json:
        """Delete one, only if it is still at ``resource_version`` (else Conflict)."""
        options = {"preconditions": {"resourceVersion": resource_version}}
        return await self._call(
            "delete",
            f"{gvr[2]}/{name}",
            lambda: self._cluster_objects("delete", gvr, name, body=options),
        )

    async def get_pod(self, namespace: str, name: str) -> Json:
        """One pod."""
        return await self._call(
            "get",
            f"pod {namespace}/{name}",
            lambda: self._core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self._timeout
            ),
        )

    async def get_controller_owner(self, namespace: str, kind: str, name: str) -> Json:
        """A ReplicaSet or Job, read to find its own controller (Deployment or CronJob)."""
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": self._timeout}
        call: Callable[..., Awaitable[Any]]
        if kind == "ReplicaSet":
            call = self._apps.read_namespaced_replica_set
        elif kind == "Job":
            call = self._batch.read_namespaced_job
        else:
            raise ValueError(f"no controller lookup for kind {kind}")
        return await self._call(
            "get", f"{kind} {namespace}/{name}", lambda: call(name, namespace, **kwargs)
        )

    async def patch_metadata(
        self,
        ref: ObjectRef,
        *,
        annotations: Mapping[str, str | None],
        labels: Mapping[str, str | None],
        resource_version: str | None = None,
    ) -> Json:
        """JSON merge patch (RFC 7386) of metadata: only given keys change, None deletes.

        With ``resource_version`` the API server refuses (409) if the object changed since it
        was read, so a removal never races an extension written by another replica.
        """
        metadata: Json = {"annotations": dict(annotations), "labels": dict(labels)}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        body = {"metadata": metadata}
        kwargs: dict[str, Any] = {
            "_content_type": MERGE_PATCH,
            "_preload_content": False,
            "_request_timeout": self._timeout,
        }
        if ref.kind == "Namespace":
            return await self._call(
                "patch", str(ref), lambda: self._core.patch_namespace(ref.name, body, **kwargs)
            )
        return await self._call(
            "patch",
            str(ref),
            lambda: self._core.patch_namespaced_pod(ref.name, ref.namespace, body, **kwargs),
        )

    async def write_patch(self, ref: ObjectRef, patch: MetadataPatch) -> Json:
        """Write a computed patch, guarded by the resourceVersion it was computed from."""
        return await self.patch_metadata(
            ref,
            annotations=patch.annotations,
            labels=patch.labels,
            resource_version=patch.resource_version,
        )

    async def get_observable(self, ref: ObjectRef) -> Json:
        """The pod or Namespace object as it is now."""
        if ref.kind == "Pod":
            return await self.get_pod(ref.namespace, ref.name)
        return await self._call(
            "get",
            str(ref),
            lambda: self._core.read_namespace(
                ref.name, _preload_content=False, _request_timeout=self._timeout
            ),
        )

    async def list_observed_namespaces(self, label_selector: str) -> list[Json]:
        """Namespace objects carrying a label (those observed with ``scope: namespace``)."""
        doc = await self._call(
            "list",
            "namespaces",
            lambda: self._core.list_namespace(
                label_selector=label_selector,
                _preload_content=False,
                _request_timeout=self._timeout,
            ),
        )
        return list(doc.get("items") or [])

    # ---- the API server itself: the readiness check and ``streamproc doctor`` -------------------
    @property
    def server(self) -> str:
        """The API server's address, as the kubeconfig names it."""
        return str(self._api.configuration.host)

    async def server_version(self) -> Json:
        """``/version``: the cheapest request that proves the API server answers."""
        return await self._call(
            "get",
            "version",
            lambda: self._version.get_code(_preload_content=False, _request_timeout=self._timeout),
        )


async def lines_of(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The non-blank lines of a watch stream, however the network cut it into chunks.

    Linear in the stream's size: each byte is searched once and each line joined once (a
    buffer grown with ``+=`` and split from the front is quadratic in a long event's size).
    """
    pending: list[bytes] = []
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending.append(chunk[start:end])
            line = b"".join(pending)
            pending.clear()
            if line.strip():
                yield line
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    line = b"".join(pending)
    if line.strip():
        yield line
