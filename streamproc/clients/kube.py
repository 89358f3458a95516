"""Kubernetes access: the only importer of kubernetes_asyncio, behind one small class.

Stages see plain dicts (the API's JSON) and streamproc's own errors, never the client's types, so
the client can be swapped for the emulator at the HTTP level (tests and the lab point a kubeconfig
at it) and nothing else in the code knows. Responses are read raw and decoded with orjson: the
generated models are slow and drop fields. Transient failures (5xx, 429, timeouts, refused
connections) are retried over an exponential backoff with jitter, honouring ``Retry-After``; the
rest surface as NotFound, Conflict or Forbidden for the caller to decide. Every answer's ``Date``
header also tells how far this host's clock is from the API server's (``clocks.Skew``): the
stages keep the API server's time (``Kube.now``), so replicas agree on the pods' expiry times.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, Self
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import orjson
import yaml
from kubernetes_asyncio import client, config
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
from streamproc.settings import DEFAULTS, Settings

Json = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
#: Events waiting for their budget at most; past it a new one is dropped and counted, as
#: client-go's event broadcaster drops past its queue of 1,000 ("too many queued events";
#: kubernetes/client-go ``tools/record/event.go``, ``maxQueuedEvents``, at 0d54cf5): an Event is
#: never worth memory or a request of the observations themselves
EVENT_BACKLOG = 1000
#: at shutdown, how long Events still waiting for their budget may take before they are dropped
_EVENT_DRAIN_S = 2.0
#: spend the API budget in a lane for the requests made within (``throttling``)
lane = throttling.lane


class ObjectRef(NamedTuple):
    """What carries Retina's observation: a pod, or the Namespace object (``scope: namespace``).

    Retina honours ``retina.sh: observe`` on both (docs/03-Metrics/annotations.md, v1.2.6), so
    every write, read, schedule and release names which one it means.
    """

    kind: Literal["Pod", "Namespace"]
    #: the pod's namespace; for a Namespace object, its own name
    namespace: str
    name: str

    @classmethod
    def pod(cls, namespace: str, name: str) -> ObjectRef:
        """A pod."""
        return cls("Pod", namespace, name)

    @classmethod
    def namespace_object(cls, name: str) -> ObjectRef:
        """The Namespace object called ``name``."""
        return cls("Namespace", name, name)

    @classmethod
    def of(cls, obj: Json) -> ObjectRef:
        """The reference of an object the API server returned (a pod unless it says Namespace)."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        if obj.get("kind") == "Namespace":
            return cls.namespace_object(name)
        return cls.pod(str(meta.get("namespace") or ""), name)

    def __str__(self) -> str:
        if self.kind == "Namespace":
            return f"namespace {self.name}"
        return f"pod {self.namespace}/{self.name}"


class MetadataPatch(Protocol):
    """A merge patch of an object's metadata (``patches.Patch`` is one); None values delete."""

    @property
    def annotations(self) -> Mapping[str, str | None]:
        """Annotations to set or (None) remove."""

    @property
    def labels(self) -> Mapping[str, str | None]:
        """Labels to set or (None) remove."""

    @property
    def resource_version(self) -> str | None:
        """The version it was computed from; the write is refused (409) if it moved on."""


class KubeError(Exception):
    """Any failure talking to the API server."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    """The object does not exist (a pod deleted between list and patch)."""


class Conflict(KubeError):
    """Stale resourceVersion: re-read and re-apply."""


class Forbidden(KubeError):
    """RBAC refuses the request; retrying will not help."""


class Gone(KubeError):
    """A watch's resourceVersion is too old (410): list again, then watch from there."""


class ConfigError(KubeError):
    """No usable credentials: no kubeconfig, a broken one, and not running in a pod."""


class Unavailable(KubeError):
    """The API server is unreachable, overloaded or failing; worth retrying later."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float = 0) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.2)


def _wait(state: RetryCallState) -> float:
    backoff = _BACKOFF(state)
    exc = state.outcome.exception() if state.outcome else None
    hinted = exc.retry_after if isinstance(exc, Unavailable) else 0.0
    return max(backoff, hinted)


def _count_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    metrics.api_retries.labels(reason=str(getattr(exc, "status", None) or "connection")).inc()


def _translate(status: int, reason: str, headers: Mapping[str, str] | None, what: str) -> KubeError:
    if status == 404:
        return NotFound(f"{what}: not found", status=404)
    if status == 409:
        return Conflict(f"{what}: conflict", status=409)
    if status == 403:
        return Forbidden(f"{what}: forbidden ({reason})", status=403)
    if status == 429 or status >= 500:
        retry_after = 0.0
        hint = (headers or {}).get("Retry-After", "")
        if hint.isdigit():
            retry_after = float(hint)
        return Unavailable(f"{what}: HTTP {status}", status=status, retry_after=retry_after)
    return KubeError(f"{what}: HTTP {status} {reason}", status=status)


def _kubeconfig_named(kubeconfig: str | None) -> tuple[str, bool]:
    """The kubeconfig that applies (given, KUBECONFIG or the default) and whether it exists."""
    named = kubeconfig or os.environ.get("KUBECONFIG") or ""
    files = [Path(f).expanduser() for f in named.split(os.pathsep) if f]
    if named and not any(f.is_file() for f in files):
        raise ConfigError(
            f"kubeconfig {named} does not exist; point --kubeconfig or KUBECONFIG at your "
            "cluster's kubeconfig file"
        )
    default = Path("~/.kube/config").expanduser()
    return named or str(default), bool(files) or default.is_file()


async def _configuration(kubeconfig: str | None, context: str | None) -> client.Configuration:
    configuration = client.Configuration()
    where, found = _kubeconfig_named(kubeconfig)
    if context and not found:
        raise ConfigError(
            f"kubeconfig context {context!r} asked for, but there is no kubeconfig ({where}); "
            "point --kubeconfig at the file that holds each cluster's context"
        )
    if found:
        try:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration, context=context
            )
        except (
            config.ConfigException,
            OSError,
            TypeError,
            ValueError,
            AttributeError,
            yaml.YAMLError,
        ) as exc:
            raise ConfigError(
                f"kubeconfig {where} is not usable ({_config_problem(exc)}); check "
                "it with `kubectl --kubeconfig " + where + " config view`"
            ) from None
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        raise ConfigError(
            "no Kubernetes credentials: no kubeconfig (--kubeconfig, KUBECONFIG or "
            "~/.kube/config) and not running in a pod; point --kubeconfig at your cluster's "
            "kubeconfig"
        ) from None
    return configuration


def _config_problem(exc: Exception) -> str:
    """What is wrong with a kubeconfig, in a few words: YAML's own message has five lines."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not YAML: {exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, yaml.YAMLError):
        return "not YAML"
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def explain(exc: KubeError) -> str:
    """One line for a person: what failed and what to do about it."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, Forbidden):
        return (
            f"the Kubernetes API server refused: {exc}; grant streamproc's RBAC "
            "(k8s/rbac.yaml, docs/deploying.md) to the identity in your kubeconfig"
        )
    if isinstance(exc, Unavailable):
        return (
            f"cannot reach the Kubernetes API server: {exc}; check that the cluster is up and "
            "that the kubeconfig's server address is right"
        )
    return f"the Kubernetes API server answered: {exc}"


def _proxy_from_environment(configuration: client.Configuration) -> None:
    """Honour HTTP(S)_PROXY / NO_PROXY for the API server, read once rather than per request.

    Credentials in the proxy's URL stay there: aiohttp sends them as Proxy-Authorization.
    """
    server = urlsplit(str(configuration.host))
    if configuration.proxy or not server.hostname or proxy_bypass(server.hostname):
        return
    proxy = getproxies().get(server.scheme)
    if proxy:
        configuration.proxy = proxy if "://" in proxy else f"http://{proxy}"


@dataclass(frozen=True, slots=True)
class Limits:
    """How hard streamproc may press the API server; the defaults are the settings' own."""

    qps: float = DEFAULTS.api_qps
    burst: int = DEFAULTS.api_burst
    concurrency: int = DEFAULTS.api_concurrency
    #: record Kubernetes Events (one more request per pod and change, from their own budget)
    events: bool = DEFAULTS.kube_events
    #: Events' own budget, beside ``qps``: they never delay an observation's requests
    event_qps: float = DEFAULTS.event_qps

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits an operator set (``--api-qps``, ``--api-burst``, ...)."""
        return cls(
            qps=settings.api_qps,
            burst=settings.api_burst,
            concurrency=settings.api_concurrency,
            events=settings.kube_events,
            event_qps=settings.event_qps,
        )

    @property
    def event_burst(self) -> int:
        """Events allowed at once above ``event_qps``: two seconds' worth (a workload's pods)."""
        return max(1, round(2 * self.event_qps))


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
        self._authorization = client.AuthorizationV1Api(api)
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
        configuration = await _configuration(kubeconfig, context)
        _proxy_from_environment(configuration)
        api = client.ApiClient(configuration)
        kube = cls(api, timeout_s=timeout_s, attempts=attempts, limits=limits or Limits())
        kube._quiet_session(api)
        return kube

    def _quiet_session(self, api: client.ApiClient) -> None:
        """Swap the client's HTTP session for one that does not consult the environment.

        kubernetes_asyncio opens its session with ``trust_env=True``, and aiohttp then hands every
        request to a thread twice: to read ``~/.netrc`` and to look up proxy variables (in a pod,
        next to thousands of service variables). Measured in the annotator, that was a third of
        its CPU. The proxy is looked up once instead (``_proxy_from_environment``); the connector,
        with its TLS settings and pool, is the client's own.
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
                    raise _translate(response.status, message, response.headers, what)
                return orjson.loads(body)  # type: ignore[no-any-return]
            except ApiException as exc:
                code = str(exc.status)
                raise _translate(exc.status or 0, str(exc.reason), exc.headers, what) from None
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
        self, resource: str = "pods", *, page_size: int = 500
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
                raise _translate(response.status, body, response.headers, what)
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
            raise _translate(exc.status or 0, str(exc.reason), exc.headers, what) from None
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

    # ---- reads for ``streamproc doctor`` (never a write) ---------------------------------------
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

    async def can_i(self, group: str, resource: str, verb: str) -> tuple[bool, str]:
        """Whether the identity in use may ``verb`` ``resource`` in every namespace, and why not.

        A SelfSubjectAccessReview: the API server answers for its own authorizers (RBAC,
        webhooks), which reading the Roles could not.
        """
        body: Any = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": verb}},
        }
        doc = await self._call(
            "create",
            f"access review {verb} {resource}",
            lambda: self._authorization.create_self_subject_access_review(
                body, _preload_content=False, _request_timeout=self._timeout
            ),
        )
        status = doc.get("status") or {}
        return status.get("allowed") is True, str(status.get("reason") or "")

    async def list_daemonsets(self) -> list[Json]:
        """Every DaemonSet in the cluster (Retina's agent is one, wherever it was installed)."""
        doc = await self._call(
            "list",
            "daemonsets",
            lambda: self._apps.list_daemon_set_for_all_namespaces(
                _preload_content=False, _request_timeout=self._timeout
            ),
        )
        return list(doc.get("items") or [])

    async def list_deployments(self, namespace: str) -> list[Json]:
        """The Deployments of one namespace."""
        doc = await self._call(
            "list",
            f"deployments in {namespace}",
            lambda: self._apps.list_namespaced_deployment(
                namespace, _preload_content=False, _request_timeout=self._timeout
            ),
        )
        return list(doc.get("items") or [])

    async def get_config_map(self, namespace: str, name: str) -> Json:
        """One ConfigMap."""
        return await self._call(
            "get",
            f"configmap {namespace}/{name}",
            lambda: self._core.read_namespaced_config_map(
                name, namespace, _preload_content=False, _request_timeout=self._timeout
            ),
        )

    async def served_resources(self, group: str, version: str) -> set[str] | None:
        """The resources discovery lists for ``group/version``; None when it is not served.

        Discovery is open to every authenticated identity, so this tells whether a CRD is
        installed without the right to read CustomResourceDefinitions.
        """
        try:
            doc = await self._call(
                "get",
                f"discovery {group}/{version}",
                lambda: self._api.call_api(
                    f"/apis/{group}/{version}",
                    "GET",
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=self._timeout,
                ),
            )
        except NotFound:
            return None
        return {str(r.get("name")) for r in doc.get("resources") or () if isinstance(r, dict)}

    async def list_cluster_objects(self, group: str, version: str, plural: str) -> list[Json]:
        """Cluster-scoped custom objects (Retina's MetricsConfigurations)."""
        doc = await self._call(
            "list",
            f"{plural}.{group}",
            lambda: self._custom.list_cluster_custom_object(
                group, version, plural, _preload_content=False, _request_timeout=self._timeout
            ),
        )
        return list(doc.get("items") or [])


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


def controller_of(obj: Json) -> tuple[str, str] | None:
    """The (kind, name) of the owner reference marked ``controller: true``, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") and ref.get("name"):
            return str(ref["kind"]), str(ref["name"])
    return None
