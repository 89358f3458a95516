"""A Retina-shaped ``/metrics`` endpoint: pod-level series that move while pods are observed.

Real Retina needs eBPF and a node; the evidence (``model.evidence``), its tests and the evidence
dashboard need only what a Prometheus scrapes from it. This serves that, on loopback, in its own
thread (synchronous tests, subprocesses and an event loop alike use it), in the Prometheus text
format, with Retina's names, labels and types (microsoft/retina v1.2.6, pkg/module/metrics:
annotation mode's local context labels ``ip, namespace, podname, workload_kind,
workload_name``; ``adv_forward_*``, ``adv_drop_*``, ``adv_tcpflags_count`` and
``adv_tcpretrans_count`` are gauges, the ``adv_dns_*`` ones counters) and, for AKS's ACNS,
Hubble's (``hubble_*_total`` counters labelled ``source``/``destination`` = ``namespace/pod``,
MicrosoftDocs/azure-aks-docs articles/aks/container-network-observability-metrics.md).

Values move deterministically with the time served: each series grows at its :data:`RATES` per
second a pod is observed (Retina's DNS plugin ignores annotations, so DNS series move for every
pod), and stay frozen after (Retina keeps them until the agent restarts, retina#544). As in
Retina, a series is created at its first flow, already above zero (never served at 0), and an
observed pod asks :data:`ONCE` one time: a series born at 1 that never moves (the name a
malicious pod resolves once, which ``increase()`` alone does not see). Which pods
are observed comes from a callable asked at each scrape (e.g. :func:`annotated_in` over the
emulator's pods) or from :meth:`RetinaExporter.observe`. Every scrape is recorded
(:attr:`RetinaExporter.served`), so a test computes what Prometheus should find over a range.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Self

from aiohttp import web

from streamproc.model import metric_filters

Family = Literal["retina", "hubble"]
#: a series: (metric name, sorted label pairs)
Series = tuple[str, tuple[tuple[str, str], ...]]

_ADV = "networkobservability_adv_"
#: per observed second: (name, extra labels, rate). The DNS query is one an incident shows.
RETINA_RATES: tuple[tuple[str, dict[str, str], float], ...] = (
    (f"{_ADV}forward_count", {"direction": "egress"}, 100.0),
    (f"{_ADV}forward_count", {"direction": "ingress"}, 40.0),
    (f"{_ADV}forward_bytes", {"direction": "egress"}, 150_000.0),
    (f"{_ADV}forward_bytes", {"direction": "ingress"}, 30_000.0),
    (f"{_ADV}drop_count", {"reason": "IPTABLE_RULE_DROP", "direction": "egress"}, 3.0),
    (f"{_ADV}drop_bytes", {"reason": "IPTABLE_RULE_DROP", "direction": "egress"}, 180.0),
    (f"{_ADV}tcpflags_count", {"flag": "SYN"}, 8.0),
    (f"{_ADV}tcpflags_count", {"flag": "RST"}, 2.0),
    (f"{_ADV}tcpretrans_count", {"direction": "egress"}, 1.0),
)
#: DNS moves for every pod, observed or not (Retina's DNS plugin ignores annotations)
RETINA_DNS: tuple[tuple[str, dict[str, str], float], ...] = (
    (f"{_ADV}dns_request_count", {"query_type": "A", "query": "evil.example.com."}, 2.0),
    (
        f"{_ADV}dns_response_count",
        {
            "return_code": "NXDOMAIN",
            "query_type": "A",
            "query": "evil.example.com.",
            "response": "",
            "num_response": "0",
        },
        2.0,
    ),
)
#: a name each observed pod asks once, answered NXDOMAIN: (request labels, response labels)
ONCE = "once.evil.example.com."
RETINA_ONCE: tuple[tuple[str, dict[str, str]], ...] = (
    (f"{_ADV}dns_request_count", {"query_type": "A", "query": ONCE}),
    (
        f"{_ADV}dns_response_count",
        {
            "return_code": "NXDOMAIN",
            "query_type": "A",
            "query": ONCE,
            "response": "",
            "num_response": "0",
        },
    ),
)
_TYPES = {
    "networkobservability_forward_count": "gauge",
    f"{_ADV}forward_count": "gauge",
    f"{_ADV}forward_bytes": "gauge",
    f"{_ADV}drop_count": "gauge",
    f"{_ADV}drop_bytes": "gauge",
    f"{_ADV}tcpflags_count": "gauge",
    f"{_ADV}tcpretrans_count": "gauge",
    f"{_ADV}dns_request_count": "counter",
    f"{_ADV}dns_response_count": "counter",
    "hubble_flows_processed_total": "counter",
    "hubble_drop_total": "counter",
    "hubble_tcp_flags_total": "counter",
    "hubble_dns_queries_total": "counter",
    "hubble_dns_responses_total": "counter",
}
#: Hubble's, per observed second: (name, side the pod is on, extra labels, rate)
HUBBLE_RATES: tuple[tuple[str, str, dict[str, str], float], ...] = (
    (
        "hubble_flows_processed_total",
        "source",
        {"protocol": "TCP", "subtype": "to-stack", "type": "Trace", "verdict": "FORWARDED"},
        20.0,
    ),
    (
        "hubble_flows_processed_total",
        "destination",
        {"protocol": "TCP", "subtype": "to-endpoint", "type": "Trace", "verdict": "FORWARDED"},
        10.0,
    ),
    ("hubble_drop_total", "source", {"protocol": "TCP", "reason": "POLICY_DENIED"}, 4.0),
    ("hubble_tcp_flags_total", "source", {"flag": "SYN", "family": "IPv4"}, 6.0),
    ("hubble_dns_queries_total", "source", {"query": "evil.example.com.", "qtypes": "A"}, 2.0),
    (
        "hubble_dns_responses_total",
        "source",
        {"query": "evil.example.com.", "qtypes": "A", "rcode": "Non-Existent Domain"},
        2.0,
    ),
)


@dataclass(frozen=True, slots=True)
class ExportedPod:
    """A pod the exporter knows (Retina's pod labels)."""

    namespace: str
    name: str
    ip: str = "10.0.0.1"
    workload_kind: str = "ReplicaSet"
    workload_name: str = ""


def annotated_in(list_pods: Callable[[], Iterable[dict[str, Any]]]) -> Callable[[], set[str]]:
    """Observed pods as Retina's annotation mode sees them: ``retina.sh: observe`` on the pod."""

    def observed() -> set[str]:
        found = set()
        for pod in list_pods():
            meta = pod.get("metadata") or {}
            if (meta.get("annotations") or {}).get("retina.sh") == "observe":
                found.add(f"{meta.get('namespace')}/{meta.get('name')}")
        return found

    return observed


def filtered_in(list_metrics: Callable[[], Iterable[dict[str, Any]]]) -> Callable[[], set[str]]:
    """Observed pods as ACNS's Hubble sees them: named in streamproc's include filters.

    The ``namespacedPod`` lists of the ``includeFilters`` streamproc owns
    (``metric_filters.ours``) in the ContainerNetworkMetric objects (MicrosoftDocs/azure-aks-docs
    articles/aks/how-to-configure-container-network-metrics-filtering.md, commit fb060abe).
    """

    def observed() -> set[str]:
        found: set[str] = set()
        for cnm in list_metrics():
            for entry in (cnm.get("spec") or {}).get("filters") or []:
                for item in entry.get("includeFilters") or []:
                    if not metric_filters.ours(item):
                        continue
                    for way in ("from", "to"):
                        found.update(
                            str(p) for p in (item.get(way) or {}).get("namespacedPod") or []
                        )
        return found

    return observed


class RetinaExporter:
    """Serves the families for ``pods`` on ``127.0.0.1``; ``start`` and always ``stop`` it."""

    def __init__(
        self,
        pods: Iterable[ExportedPod],
        *,
        families: Iterable[Family] = ("retina",),
        observed: Callable[[], set[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pods = {f"{p.namespace}/{p.name}": p for p in pods}
        self.families = frozenset(families)
        self._observed_fn = observed
        self._observed: set[str] = set()
        self._clock = clock
        self._lock = threading.Lock()
        #: seconds each pod has been observed, as of ``_last``
        self._seconds: dict[str, float] = dict.fromkeys(self.pods, 0.0)
        self._dns_seconds: dict[str, float] = dict.fromkeys(self.pods, 0.0)
        self._was: set[str] = set()
        #: the pods that asked :data:`ONCE` (from their first observed scrape on)
        self._asked_once: set[str] = set()
        #: seconds served (Retina's node-level series move with them)
        self._up = 0.0
        self._last: float | None = None
        #: every scrape: (time served, {series: value})
        self.served: list[tuple[float, dict[Series, float]]] = []
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def target(self) -> str:
        """``host:port`` for a scrape config."""
        return f"127.0.0.1:{self.port}"

    def observe(self, key: str, on: bool = True) -> None:
        """Start (or stop) the series of ``namespace/pod`` moving, from the next scrape on."""
        with self._lock:
            (self._observed.add if on else self._observed.discard)(key)

    def _advance(self, now: float) -> None:
        """Credit the time since the last scrape to the pods observed then (and DNS to all)."""
        if self._last is not None:
            elapsed = max(0.0, now - self._last)
            self._up += elapsed
            for key in self._was:
                self._seconds[key] += elapsed
            for key in self._dns_seconds:
                self._dns_seconds[key] += elapsed
        observed = self._observed_fn() if self._observed_fn is not None else set(self._observed)
        self._was = {k for k in observed if k in self.pods}
        self._last = now

    def values(self, now: float) -> dict[Series, float]:
        """The series as served at ``now`` (and remembered in :attr:`served`)."""
        with self._lock:
            self._advance(now)
            found: dict[Series, float] = {}
            if "retina" in self.families:
                self._basic(found)
            for key, pod in self.pods.items():
                if "retina" in self.families:
                    self._retina(found, pod, key)
                if "hubble" in self.families:
                    for name, side, extra, rate in HUBBLE_RATES:
                        if value := math.floor(rate * self._seconds[key]):  # born above zero
                            found[_series(name, {side: key, **extra})] = value
            self.served.append((now, found))
            return found

    def _basic(self, found: dict[Series, float]) -> None:
        """Retina's node-level basic series: there whether or not a pod is observed."""
        up = self._up
        for direction, rate in (("egress", 50.0), ("ingress", 20.0)):
            found[_series("networkobservability_forward_count", {"direction": direction})] = (
                1 + math.floor(rate * up)
            )

    def _retina(self, found: dict[Series, float], pod: ExportedPod, key: str) -> None:
        base = {
            "ip": pod.ip,
            "namespace": pod.namespace,
            "podname": pod.name,
            "workload_kind": pod.workload_kind,
            "workload_name": pod.workload_name,
        }
        for name, extra, rate in RETINA_RATES:  # created at the first flow, above zero
            if value := math.floor(rate * self._seconds[key]):
                found[_series(name, {**extra, **base})] = value
        for name, extra, rate in RETINA_DNS:
            if value := math.floor(rate * self._dns_seconds[key]):
                found[_series(name, {**extra, **base})] = value
        if key in self._was:
            self._asked_once.add(key)
        if key in self._asked_once:
            for name, extra in RETINA_ONCE:
                found[_series(name, {**extra, **base})] = 1

    def served_at(self, series: Series, at: float) -> float:
        """The value last served for ``series`` at or before ``at`` (0 before any)."""
        value = 0.0
        for when, values in self.served:
            if when > at:
                break
            value = values.get(series, value)
        return value

    def increase(self, series: Series, start: float, end: float) -> float:
        """What the exporter served ``series`` to grow by over [start, end]."""
        return self.served_at(series, end) - self.served_at(series, start)

    async def _metrics(self, _request: web.Request) -> web.Response:
        values = self.values(self._clock())
        lines = []
        for name in sorted({s[0] for s in values}):
            lines.append(f"# HELP {name} {name} (Retina-shaped, streamproc.lab)")
            lines.append(f"# TYPE {name} {_TYPES[name]}")
            for (series_name, labels), value in sorted(values.items()):
                if series_name == name:
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{text}}} {value:g}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def start(self) -> str:
        """Serve in a thread of its own; the ``host:port`` to scrape."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_get("/metrics", self._metrics)
            runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, "127.0.0.1", 0)
                loop.run_until_complete(site.start())
                server = site._server  # noqa: SLF001 - the only way to the bound port
                assert server is not None
                self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="retina-exporter", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failed:
            raise failed[0]
        return self.target

    def stop(self) -> None:
        """Stop serving (bounded)."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _series(name: str, labels: dict[str, str]) -> Series:
    return name, tuple(sorted(labels.items()))


def series(name: str, **labels: str) -> Series:
    """A series key as :attr:`RetinaExporter.served` holds it."""
    return _series(name, labels)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
