"""Falco detections as streamproc sees them, and the one function that reads them from bytes.

Two producers write the same JSON shape: Falcosidekick's Kafka output (its ``types.FalcoPayload``:
``uuid``, ``output``, ``priority``, ``rule``, ``time``, ``output_fields``, ``source``, ``tags``,
``hostname``) and Falco's own ``json_output`` (the same keys, without ``uuid``; ``tags`` and
``hostname`` only when enabled). Kubernetes context lives in ``output_fields``: ``k8s.ns.name`` and
``k8s.pod.name`` from the container plugin, and owner names from the k8smeta plugin. Falco writes
``null`` or ``<NA>`` for a field it could not resolve. A fleet names each detection's cluster in
``output_fields`` too: Falcosidekick's ``customfields`` (``CUSTOMFIELDS=cluster:prod-eu``) sets
``output_fields[key] = value`` on every event it forwards (falcosecurity/falcosidekick
``handlers.go``, ``config.go``, 2.34.1).

This module does no I/O. It is on the hot path (every raw detection passes through ``parse``), so it
reads fields with plain dict look-ups and allocates one small object per detection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from streamproc import reasons
from streamproc.model import conventions
from streamproc.settings import DEFAULTS

#: Falco's priority names, most severe first (falcosecurity/falco ``falco_common.h``).
PRIORITIES = (
    "Emergency",
    "Alert",
    "Critical",
    "Error",
    "Warning",
    "Notice",
    "Informational",
    "Debug",
)
#: rank where larger is more severe: Debug=0 ... Emergency=7.
PRIORITY_RANK: dict[str, int] = {name: len(PRIORITIES) - 1 - i for i, name in enumerate(PRIORITIES)}
_PRIORITY_LOOKUP: dict[str, int] = {
    **PRIORITY_RANK,
    **{name.lower(): rank for name, rank in PRIORITY_RANK.items()},
    **{name.upper(): rank for name, rank in PRIORITY_RANK.items()},
    "info": PRIORITY_RANK["Informational"],
    "warn": PRIORITY_RANK["Warning"],
    "err": PRIORITY_RANK["Error"],
    "crit": PRIORITY_RANK["Critical"],
    "emerg": PRIORITY_RANK["Emergency"],
}

#: owner fields the k8smeta plugin (and some rule outputs) provide, mapped to the owner kind.
OWNER_FIELDS: tuple[tuple[str, str], ...] = (
    ("k8smeta.deployment.name", "Deployment"),
    ("k8smeta.sts.name", "StatefulSet"),
    ("k8smeta.statefulset.name", "StatefulSet"),
    ("k8smeta.ds.name", "DaemonSet"),
    ("k8smeta.daemonset.name", "DaemonSet"),
    ("k8smeta.cronjob.name", "CronJob"),
    ("k8smeta.job.name", "Job"),
    ("k8smeta.rs.name", "ReplicaSet"),
)

#: RFC 3339 date-time (section 5.6), as Go's time.Time marshals it in Falcosidekick's
#: ``types.FalcoPayload.Time`` (nanoseconds, ``Z``) and Falco's json_output writes it. Windows
#: are keyed on the Kafka record time, not this; a payload without a valid one is refused.
_RFC3339 = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d{1,9})?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)"
).fullmatch

MAX_MESSAGE_BYTES = 1 << 20
MAX_OUTPUT_FIELDS = 512
_NOT_AVAILABLE = frozenset(("", "<NA>", "N/A"))
#: what a cluster field becomes that is no string or too long for a DNS-1123 label (63): never
#: a cluster's name, and nothing unbounded is kept of it
NOT_A_NAME = "(not a cluster name)"


#: every reason ``parse`` gives (a metric label and the dead letter's ``streamproc.reason``)
REASONS: tuple[reasons.DeadLetter, ...] = (
    "too-large",
    "invalid-json",
    "not-an-object",
    "missing-rule",
    "invalid-priority",
    "invalid-output-fields",
    "invalid-tags",
    "invalid-namespace",
    "invalid-pod-name",
    "too-many-fields",
    "invalid-time",
)


class ParseError(ValueError):
    """A detection that cannot be used; ``reason`` is a short, bounded code for metrics and DLQ."""

    def __init__(self, reason: reasons.DeadLetter, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Detection(NamedTuple):
    """One Falco detection, reduced to what windowing and matching need.

    A NamedTuple rather than a frozen dataclass: it is built once per raw detection on the hot
    path, and a tuple is several times cheaper to create than a frozen dataclass.
    """

    rule: str
    priority: int
    source: str
    tags: tuple[str, ...]
    namespace: str | None
    pod: str | None
    owners: tuple[tuple[str, str], ...]
    #: the cluster its cluster field names (Falcosidekick ``customfields``), "" without one, as
    #: written: whose detection it is, the ingestor decides (``fleets.Fleet.place``)
    cluster: str
    uuid: str
    time: str
    hostname: str

    @property
    def priority_name(self) -> str:
        """Falco's spelling of the priority."""
        return PRIORITIES[len(PRIORITIES) - 1 - self.priority]

    @property
    def has_kubernetes_context(self) -> bool:
        """Host events (no namespace or no pod) cannot be tied to a workload."""
        return self.namespace is not None and self.pod is not None


class _Memo:
    """Bounded memo of answers that depend only on a repeated value (names, tag lists).

    Detections repeat the same namespaces, pods and tag lists over and over; validating each
    once keeps regex and per-element checks off the per-event path. Cleared when full.
    """

    __slots__ = ("_limit", "known")

    def __init__(self, limit: int = 65_536) -> None:
        #: answers so far; the hot path reads it directly before calling ``check``.
        self.known: dict[object, bool] = {}
        self._limit = limit

    def check(self, key: object, compute: Callable[[Any], bool]) -> bool:
        found = self.known.get(key)
        if found is None:
            found = compute(key)
            if len(self.known) >= self._limit:
                self.known.clear()
            self.known[key] = found
        return found


_namespaces = _Memo()
_pods = _Memo()
_tag_lists = _Memo()
_OWNER_KEYS = frozenset(field for field, _ in OWNER_FIELDS)


def _all_text(tags: tuple[object, ...]) -> bool:
    return all(type(t) is str for t in tags)


def _valid_tags(tags: tuple[object, ...]) -> bool:
    try:
        return _tag_lists.check(tags, _all_text)
    except TypeError:  # an unhashable element (a list or object) is not a tag anyway
        return False


def _text(value: object) -> str | None:
    if value is None or type(value) is not str or value in _NOT_AVAILABLE:
        return None
    return value


def _owners(fields: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    if _OWNER_KEYS.isdisjoint(fields):
        return ()
    present = _OWNER_KEYS.intersection(fields)
    return tuple(
        (kind, name)
        for field, kind in OWNER_FIELDS
        if field in present
        and (name := _text(fields[field])) is not None
        and _pods.check(name, conventions.is_dns1123_subdomain)
    )


_seconds: dict[str, int] = {}


def _epoch_s(text: str) -> int:
    """Seconds of ``YYYY-MM-DDTHH:MM:SS`` in UTC (second 60 counts as 59)."""
    try:
        return int(datetime.fromisoformat(text + "+00:00").timestamp())
    except ValueError:
        try:
            fixed = text.upper().replace(":60", ":59") + "+00:00"
            return int(datetime.fromisoformat(fixed).timestamp())
        except ValueError as exc:
            raise ParseError("invalid-time", f"'time' is {text[:60]!r}: {exc}") from None


def epoch_ms(time: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 ``time`` as ``parse`` accepted it.

    Falcosidekick writes nanoseconds (``2026-12-01T05:37:23.123456789Z``); Python reads up to
    microseconds and ignores the rest. A leap second counts as the second before it; a date
    that does not exist (February 30) is a ParseError.
    """
    if len(time) > 20 and time[19] == "." and time[-1] == "Z":
        # Falcosidekick's own form: the seconds are shared by a burst's detections, so they are
        # read once; the fraction's first three digits are the milliseconds
        seconds = _seconds.get(time[:19])
        if seconds is None:
            if len(_seconds) >= 4096:
                _seconds.clear()
            seconds = _seconds[time[:19]] = _epoch_s(time[:19])
        return seconds * 1000 + int((time[20:-1] + "00")[:3])
    try:
        return int(datetime.fromisoformat(time).timestamp() * 1000)
    except ValueError:
        pass
    try:  # the spellings RFC 3339 allows that Python does not read: ``t``, ``z``, second 60
        return int(datetime.fromisoformat(time.upper().replace(":60", ":59")).timestamp() * 1000)
    except ValueError as exc:
        raise ParseError("invalid-time", f"'time' is {time[:60]!r}: {exc}") from None


def parse(  # noqa: C901, PLR0912, PLR0915 - one flat pass is the fast path
    raw: bytes, *, cluster_field: str = DEFAULTS.cluster_field
) -> Detection:
    """Decode and validate one detection; raise ParseError with a reason code otherwise.

    ``cluster_field`` is the ``output_fields`` key naming the cluster. Its value is kept as
    written, not judged here: whether it matters depends on the deployment (``fleets``).
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ParseError("too-large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ParseError("invalid-json", str(exc)[:200]) from None
    if type(doc) is not dict:
        raise ParseError("not-an-object", f"top level is {type(doc).__name__}")
    rule = doc.get("rule")
    if type(rule) is not str or not rule:
        raise ParseError("missing-rule", "'rule' must be a non-empty string")
    raw_priority = doc.get("priority")
    priority = None
    if type(raw_priority) is str:
        priority = _PRIORITY_LOOKUP.get(raw_priority)
        if priority is None:
            priority = _PRIORITY_LOOKUP.get(raw_priority.lower())
    if priority is None:
        raise ParseError("invalid-priority", f"'priority' is {str(raw_priority)[:40]!r}")
    fields = doc.get("output_fields")
    if fields is None:
        fields = {}
    elif type(fields) is not dict:
        raise ParseError("invalid-output-fields", "'output_fields' must be an object")
    elif len(fields) > MAX_OUTPUT_FIELDS:
        raise ParseError("too-many-fields", f"{len(fields)} output fields > {MAX_OUTPUT_FIELDS}")
    tags: Any = doc.get("tags")
    if tags is None:
        tags = ()
    elif type(tags) is not list or not _valid_tags(tags := tuple(tags)):
        raise ParseError("invalid-tags", "'tags' must be a list of strings")
    namespace = fields.get("k8s.ns.name")
    if namespace.__class__ is not str or namespace in _NOT_AVAILABLE:
        namespace = _text(fields.get("k8smeta.ns.name"))
    pod = fields.get("k8s.pod.name")
    if pod.__class__ is not str or pod in _NOT_AVAILABLE:
        pod = _text(fields.get("k8smeta.pod.name"))
    if namespace is not None and not (
        _namespaces.known.get(namespace)
        or _namespaces.check(namespace, conventions.is_dns1123_label)
    ):
        raise ParseError("invalid-namespace", f"namespace {namespace[:80]!r} is not DNS-1123")
    if pod is not None and not (
        _pods.known.get(pod) or _pods.check(pod, conventions.is_dns1123_subdomain)
    ):
        raise ParseError("invalid-pod-name", f"pod {pod[:80]!r} is not a DNS-1123 subdomain")
    cluster = fields.get(cluster_field, "") if fields else ""
    if cluster.__class__ is not str or len(cluster) > 63:
        cluster = NOT_A_NAME if cluster is not None else ""
    time = doc.get("time")
    if type(time) is not str or _RFC3339(time) is None:
        raise ParseError("invalid-time", f"'time' is {str(time)[:60]!r}, not RFC 3339")
    source = doc.get("source")
    uuid = doc.get("uuid")
    hostname = doc.get("hostname")
    return Detection(
        rule,
        priority,
        source if type(source) is str else "syscall",
        tags,
        namespace,
        pod,
        () if _OWNER_KEYS.isdisjoint(fields) else _owners(fields),
        cluster,
        uuid if type(uuid) is str else "",
        time,
        hostname if type(hostname) is str else "",
    )
