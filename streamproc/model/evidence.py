"""Network evidence of an observation: the PromQL to ask, the answers read back, the summary line.

An observation exists so that someone can look at a suspicious workload's network behaviour;
this is what it saw, read from the Prometheus that scrapes Retina, over exactly the observation's
range (``observed-since`` to its end, extensions included). Pure: no I/O
(``clients.prometheus`` asks, ``stages.annotate.evidencing`` and ``streamproc evidence`` use it).

Where the numbers come from (microsoft/retina v1.2.6, pkg/module/metrics/{forward,drops,tcpflags,
tcpretrans,dns}.go, ``exporter`` namespace ``networkobservability``): in annotation mode Retina
aggregates per pod ("local context", pkg/module/metrics/types.go: no source_/destination_ prefix)
and labels each series ``ip, namespace, podname, workload_kind, workload_name``;
``adv_forward_count``/``_bytes`` {direction: ingress|egress}, ``adv_drop_count``/``_bytes``
{reason, direction}, ``adv_tcpflags_count`` {flag} and ``adv_tcpretrans_count`` {direction} are
gauges that only grow (used as counters), ``adv_dns_request_count`` {query_type, query} and
``adv_dns_response_count`` {return_code, query_type, query, response, num_response} counters.
Series outlive the observation (frozen until the agent restarts, retina#544), so the evidence is
the *increase over the range*, evaluated at its end; but Retina creates a series at its first
flow, already above zero (a DNS name asked once is a new series stuck at 1, whose ``increase`` is
0): a series absent at the range's start counts from 0, its last value in the range
(``last_over_time(x[r]) unless x @ start``; the ``@`` modifier is stable since Prometheus 2.33,
Debian 12 ships 2.42). Frozen series are still scraped, so present at the start: their
``increase`` is 0. A counter reset inside a series born in the range loses what came before the
reset (rare: an agent restart within the observation). Each pod counts from its own start (a pod
followed later joins later): pods are grouped by start and each group's range is its own.
AKS's ACNS (Hubble control plane) exports
``hubble_flows_processed_total``, ``hubble_drop_total`` {reason}, ``hubble_tcp_flags_total``
{flag}, ``hubble_dns_queries_total`` {query, qtypes} and ``hubble_dns_responses_total`` {query,
rcode}, each labelled ``source`` (outgoing) or ``destination`` (incoming) = ``namespace/pod``
(MicrosoftDocs/azure-aks-docs articles/aks/container-network-observability-metrics.md, commit
fb060abe): flows, not packets, and no bytes. Retina's families are asked first; Hubble's when
Retina's have no series for the pods.

Prometheus answers are untrusted input: :func:`vector` checks their shape and bounds and raises
:class:`BadAnswer`; every query is bounded (``topk``) so an answer is a handful of series.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from streamproc.model import conventions, marks, outcomes

#: which exporter's families answered
Source = Literal["retina", "hubble"]
#: how the audit record names them
SOURCE_NAMES: dict[Source, str] = {
    "retina": "networkobservability_adv_*",
    "hubble": "hubble_*",
}
#: the widest range ever asked about: ``observed-since`` is clamped to it (``marks``)
MAX_RANGE_S = marks.MAX_OBSERVED_S
#: drop reasons, TCP flags and DNS queries kept (``topk``), and series read from one answer
TOP = 10
MAX_SERIES = 200
#: a label value longer than this (Kubernetes names are at most 253) is cut
MAX_LABEL = 253
#: the Event line's bound (Kubernetes caps an Event's message at 1 KiB)
MAX_SUMMARY = 900

_RETINA = "networkobservability_adv_"


class BadAnswer(ValueError):
    """A Prometheus answer that is not a query result of the expected shape."""


@dataclass(frozen=True, slots=True)
class Target:
    """The pods of one observation, and the range (epoch seconds) it lasted.

    ``starts`` holds each pod's own start (same order as ``pods``; empty: all at ``start``): a
    pod followed later was observed from later, and counts only from then.
    """

    namespace: str
    pods: tuple[str, ...]
    start: float
    end: float
    starts: tuple[float, ...] = ()

    @property
    def range_ms(self) -> int:
        """Milliseconds the range spans, at least 1 s and at most :data:`MAX_RANGE_S`."""
        return _window_ms(self.start, self.end)

    def groups(self) -> list[tuple[int, tuple[str, ...]]]:
        """The pods by their own range (milliseconds back from ``end``), longest first."""
        starts = self.starts if len(self.starts) == len(self.pods) else ()
        by: dict[int, list[str]] = {}
        for n, pod in enumerate(self.pods):
            by.setdefault(_window_ms(starts[n] if starts else self.start, self.end), []).append(pod)
        return sorted(((ms, tuple(pods)) for ms, pods in by.items()), reverse=True)

    def starts_of(self) -> dict[str, str]:
        """Each pod's start as queried (RFC 3339), for the audit record."""
        return {
            pod: conventions.format_time(self.end - ms / 1000)
            for ms, pods in self.groups()
            for pod in pods
        }

    def bounds(self) -> list[str]:
        """[start, end] as RFC 3339 (start as queried: clamped to the widest range)."""
        start = max(self.start, self.end - MAX_RANGE_S)
        return [conventions.format_time(start), conventions.format_time(self.end)]


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL expression and what its answer fills."""

    key: Literal[
        "forward_packets",
        "forward_bytes",
        "drops",
        "tcp_flags",
        "retransmissions",
        "dns_requests",
        "dns_responses",
    ]
    expr: str


def _window_ms(start: float, end: float) -> int:
    return int(min(MAX_RANGE_S, max(1.0, end - start)) * 1000)


#: the parts of the evidence, and the queries that fill each
Part = Literal["forward", "drops", "tcp", "dns"]
PART_OF: dict[str, Part] = {
    "forward_packets": "forward",
    "forward_bytes": "forward",
    "drops": "drops",
    "tcp_flags": "tcp",
    "retransmissions": "tcp",
    "dns_requests": "dns",
    "dns_responses": "dns",
}


#: one sample of an instant vector: its labels and value
Sample = tuple[dict[str, str], float]


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """A name the pods asked for: how often, and what came back."""

    query: str
    count: int
    return_codes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the observation saw of the pods' network, or why that is missing."""

    target: Target
    source: Source | None = None
    #: direction -> {"packets": n, "bytes": n} (Hubble: flows, no bytes)
    forward: dict[str, dict[str, int]] = field(default_factory=dict)
    #: reason -> packets dropped
    drops: dict[str, int] = field(default_factory=dict)
    #: TCP flag -> packets
    tcp_flags: dict[str, int] = field(default_factory=dict)
    #: direction -> retransmissions (only where Retina's tcpretrans plugin runs)
    retransmissions: dict[str, int] = field(default_factory=dict)
    dns: tuple[DnsQuery, ...] = ()
    missing: outcomes.EvidenceMissing | None = None
    detail: str = ""
    #: parts whose queries failed while others answered, and why (the rest is still evidence)
    missing_parts: dict[Part, outcomes.EvidenceMissing] = field(default_factory=dict)

    @property
    def result(self) -> outcomes.EvidenceResult:
        """``found`` or why not (the ``result`` of ``streamproc_evidence_total``)."""
        return self.missing or "found"

    def as_dict(self) -> dict[str, Any]:
        """The audit record's ``evidence`` field (and ``streamproc evidence --output json``)."""
        doc: dict[str, Any] = {"range": self.target.bounds(), "pods": list(self.target.pods)}
        if len(set(self.target.starts)) > 1:
            doc["starts"] = self.target.starts_of()
        if self.source is not None:
            doc["source"] = SOURCE_NAMES[self.source]
            #: what ``forward``'s "packets" and ``drops`` count: Hubble counts flows
            doc["unit"] = "packets" if self.source == "retina" else "flows"
            doc["forward"] = self.forward
            doc["drops"] = self.drops
            doc["tcp"] = {"flags": self.tcp_flags, "retransmissions": self.retransmissions}
            doc["dns"] = [
                {"query": q.query, "count": q.count, "return_codes": q.return_codes}
                for q in self.dns
            ]
        if self.missing_parts:
            doc["missing_parts"] = dict(self.missing_parts)
        if self.missing is not None:
            doc["missing"] = self.missing
            doc["detail"] = self.detail
        return doc

    def summary(self) -> str:
        """One line a person reads in an Event: traffic, drops, DNS (or why there is none)."""
        if self.missing is not None:
            return f"no network evidence ({self.missing}: {self.detail})"[:MAX_SUMMARY]
        unit = "packets" if self.source == "retina" else "flows"
        parts = []
        for direction in sorted(self.forward):
            counts = self.forward[direction]
            text = f"{direction} {counts.get('packets', 0):,} {unit}"
            if "bytes" in counts:
                text += f" / {human_bytes(counts['bytes'])}"
            parts.append(text)
        if not parts:
            parts.append(f"no forwarded {unit}")
        dropped = sum(self.drops.values())
        text = "; ".join(parts)
        if dropped:
            text += f"; {dropped:,} drops ({', '.join(sorted(self.drops, key=_by(self.drops)))})"
        if self.dns:
            text += "; DNS: " + ", ".join(_dns_line(q) for q in self.dns[:3])
        if self.missing_parts:
            gone = ", ".join(f"{part} ({why})" for part, why in sorted(self.missing_parts.items()))
            text += f"; missing: {gone}"
        return text[:MAX_SUMMARY]


def _dns_line(q: DnsQuery) -> str:
    """A name with a count per return code (``evil.example.com NXDOMAIN x3``), failures first.

    Counts are responses per code, not requests; a name asked but never answered in the range
    says ``no answer`` with its requests.
    """
    times = "\N{MULTIPLICATION SIGN}"
    if not q.return_codes:
        return f"{q.query} no answer {times}{q.count:,}"
    codes = sorted(q.return_codes.items(), key=lambda kv: (_ok(kv[0]), -kv[1], kv[0]))
    return f"{q.query} " + "/".join(f"{code} {times}{n:,}" for code, n in codes[:3])


def _ok(code: str) -> bool:
    """Whether a return code means success (Retina: NOERROR; Hubble: "No Error")."""
    return code.replace(" ", "").upper() == "NOERROR"


def _by(counts: Mapping[str, int]) -> Any:
    return lambda key: (-counts[key], key)


def human_bytes(n: int) -> str:
    """Bytes as a person reads them: 3.2 MB (powers of 1000, as ``ls -h --si``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def quote(value: str) -> str:
    """A PromQL string literal (double-quoted, escaped): names come from pods, untrusted."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _pods_regex(pods: Sequence[str]) -> str:
    return "|".join(re.escape(p) for p in pods)


def _grown(
    metric: str,
    matchers: Sequence[str],
    groups: Sequence[tuple[int, str]],
    end: float,
    after: Sequence[str] = (),
) -> str:
    """How much ``metric`` grew over each group's range, a series born in it counted from 0.

    ``groups``: (window in ms, the pods' matcher); ``matchers`` and ``after``: the other label
    matchers, before and after the pods'.
    """
    parts = []
    for ms, pods in groups:
        sel = f"{metric}{{{','.join([*matchers, pods, *after])}}}"
        window = f"[{ms}ms]"
        born = f"last_over_time({sel}{window}) unless {sel} @ {end - ms / 1000:.3f}"
        parts.append(f"({born}) or increase({sel}{window})")
    return " or ".join(f"({p})" for p in parts)


def _matcher(label: str, names: Sequence[str]) -> str:
    if len(names) == 1:
        return f"{label}={quote(names[0])}"
    return f"{label}=~{quote(_pods_regex(names))}"


def queries(target: Target, source: Source) -> list[Query]:
    """The bounded queries that fill an :class:`Evidence` from ``source``'s families."""
    end = target.end
    if source == "retina":
        groups = [(ms, _matcher("podname", pods)) for ms, pods in target.groups()]

        def inc(family: str) -> str:
            ns = f"namespace={quote(target.namespace)}"
            return _grown(f"{_RETINA}{family}", [ns], groups, end)

        return [
            Query("forward_packets", f"sum by (direction) ({inc('forward_count')})"),
            Query("forward_bytes", f"sum by (direction) ({inc('forward_bytes')})"),
            Query("drops", f"topk({TOP}, sum by (reason) ({inc('drop_count')}))"),
            Query("tcp_flags", f"topk({2 * TOP}, sum by (flag) ({inc('tcpflags_count')}))"),
            Query("retransmissions", f"sum by (direction) ({inc('tcpretrans_count')})"),
            Query("dns_requests", f"topk({TOP}, sum by (query) ({inc('dns_request_count')}))"),
            Query(
                "dns_responses",
                f"topk({5 * TOP}, sum by (query, return_code) ({inc('dns_response_count')}))",
            ),
        ]

    def side(label: str, family: str, extra: Sequence[str] = ()) -> str:
        """The pods' series on one side: outgoing (``source``) or incoming (``destination``)."""
        groups = [
            (ms, _matcher(label, [f"{target.namespace}/{p}" for p in pods]))
            for ms, pods in target.groups()
        ]
        return _grown(f"hubble_{family}", (), groups, end, extra)

    def both(family: str) -> str:
        return f"{side('source', family)} or {side('destination', family)}"

    forwarded = ['verdict="FORWARDED"']
    flows = "flows_processed_total"
    return [
        Query(
            "forward_packets",
            f'label_replace(sum({side("source", flows, forwarded)}), "direction", "egress", "", "")'
            f' or label_replace(sum({side("destination", flows, forwarded)}), "direction", '
            '"ingress", "", "")',
        ),
        Query("drops", f"topk({TOP}, sum by (reason) ({both('drop_total')}))"),
        Query("tcp_flags", f"topk({2 * TOP}, sum by (flag) ({both('tcp_flags_total')}))"),
        Query("dns_requests", f"topk({TOP}, sum by (query) ({both('dns_queries_total')}))"),
        Query(
            "dns_responses",
            f"topk({5 * TOP}, label_replace(sum by (query, rcode) "
            f'({both("dns_responses_total")}), "return_code", "$1", "rcode", "(.*)"))',
        ),
    ]


def vector(answer: object) -> list[Sample]:
    """The samples of an ``/api/v1/query`` answer of type vector; :class:`BadAnswer` otherwise.

    Shape per the Prometheus HTTP API: ``{"status": "success", "data": {"resultType": "vector",
    "result": [{"metric": {...}, "value": [time, "number"]}]}}``. At most :data:`MAX_SERIES`
    series are read; NaN, infinite and negative values are refused.
    """
    if not isinstance(answer, Mapping) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, Mapping) else None
        raise BadAnswer(f"not a successful answer: {str(error or answer)[:120]}")
    data = answer.get("data")
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        raise BadAnswer("data is not a vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise BadAnswer("data.result is not a list")
    samples = []
    for item in result[:MAX_SERIES]:
        if not isinstance(item, Mapping):
            raise BadAnswer("a result is not an object")
        metric, value = item.get("metric"), item.get("value")
        if not isinstance(metric, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metric.items()
        ):
            raise BadAnswer("a result's metric is not a map of strings")
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
            raise BadAnswer("a result's value is not [time, string]")
        try:
            number = float(value[1])
        except ValueError:
            raise BadAnswer(f"value {value[1][:40]!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise BadAnswer(f"value {value[1][:40]!r} is not a finite count")
        labels = {str(k)[:MAX_LABEL]: _label(v) for k, v in list(metric.items())[:32]}
        samples.append((labels, number))
    return samples


def _label(value: str) -> str:
    """A label value as shown to a person: bounded, printable."""
    cut = value[:MAX_LABEL]
    return cut if cut.isprintable() else cut.encode("unicode_escape").decode()[:MAX_LABEL]


def _per(samples: Sequence[Sample], label: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for labels, value in samples:
        key = labels.get(label, "") or "unknown"
        counts[key] = counts.get(key, 0) + round(value)
    return {k: v for k, v in counts.items() if v > 0}


def assemble(
    target: Target,
    source: Source,
    answers: Mapping[str, Sequence[Sample]],
    missing_parts: Mapping[Part, outcomes.EvidenceMissing] | None = None,
) -> Evidence:
    """The evidence the answers to :func:`queries` make up (``no-series`` when they are empty).

    ``missing_parts``: the parts whose queries failed (the others are still evidence).
    """
    if not any(answers.values()):
        return missing(target, "no-series", f"no {SOURCE_NAMES[source]} series for these pods")
    forward: dict[str, dict[str, int]] = {}
    for key, unit in (("forward_packets", "packets"), ("forward_bytes", "bytes")):
        for direction, n in _per(answers.get(key, ()), "direction").items():
            forward.setdefault(direction, {"packets": 0})[unit] = n
    requests = _per(answers.get("dns_requests", ()), "query")
    codes: dict[str, dict[str, int]] = {}
    for labels, value in answers.get("dns_responses", ()):
        query = labels.get("query", "") or "unknown"
        code = labels.get("return_code", "") or "unknown"
        if round(value) > 0:
            codes.setdefault(query, {})[code] = codes.get(query, {}).get(code, 0) + round(value)
    names = sorted(set(requests) | set(codes), key=lambda q: (-requests.get(q, 0), q))[:TOP]
    dns = tuple(DnsQuery(q, requests.get(q, 0), codes.get(q, {})) for q in names)
    return Evidence(
        target=target,
        source=source,
        forward=forward,
        drops=_per(answers.get("drops", ()), "reason"),
        tcp_flags=_per(answers.get("tcp_flags", ()), "flag"),
        retransmissions=_per(answers.get("retransmissions", ()), "direction"),
        dns=dns,
        missing_parts=dict(missing_parts or {}),
    )


def missing(target: Target, why: outcomes.EvidenceMissing, detail: str) -> Evidence:
    """Evidence that could not be read, and why."""
    return Evidence(target=target, missing=why, detail=detail[:200])


#: the expr that says whether a Prometheus scrapes Retina (or ACNS's Hubble): series that exist
#: whether or not a pod is observed yet (Retina's node-level basic metrics,
#: ``networkobservability_forward_count`` etc., and the ``adv_dns_*`` of every pod; microsoft/retina
#: v1.2.6 pkg/module/metrics, pkg/metrics/metrics.go), so a healthy setup with nothing observed
#: passes
SCRAPED: dict[Source, str] = {
    "retina": 'count({__name__=~"networkobservability_.+"})',
    "hubble": 'count({__name__=~"hubble_.+"})',
}


def last_observation(namespace: str, kind: str, name: str, lookback_s: int) -> tuple[str, str]:
    """Queries for a workload's last observation in ``lookback_s``: starts, and last seen times.

    From ``streamproc_observed_pod_since_seconds`` (value: the start; present while observed):
    per pod, the latest start, and the time of its last sample (a subquery of ``timestamp``, at
    a step that keeps it to about 10,000 points).
    """
    sel = (
        f"streamproc_observed_pod_since_seconds{{namespace={quote(namespace)},"
        f"workload_kind={quote(kind)},workload_name={quote(name)}}}"
    )
    step = max(1, math.ceil(lookback_s / 10_000))
    return (
        f"max by (pod) (max_over_time({sel}[{lookback_s}s]))",
        f"max by (pod) (max_over_time(timestamp({sel})[{lookback_s}s:{step}s]))",
    )
