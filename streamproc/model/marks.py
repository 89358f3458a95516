"""Streamproc's marks on a pod, read back: untrusted input, decoded once and bounded by policy.

Anyone who may edit pods in a namespace may edit the ``streamproc.io/*`` annotations and the
``streamproc.io/observed`` label on them, so every reader of marks (the follower, the expirer,
the annotator, ``status`` and ``release``) reads them through ``cluster.marking.read``, as a
Kafka record is read through its decoder. What streamproc itself writes (``patches.observe``)
always passes: an RFC 3339 expiry no later than the longest TTL the topology's ladder could have
written (plus :data:`SKEW_S` for clocks that disagree), an action id naming the topology and the
object's own namespace, owned keys the topology writes, a level ``n/m`` within a ladder.
Anything else is a :class:`Refusal`: it never crashes a reader, never extends an observation, is
not followed and not counted (``maxObservations``, node budget). A labelled object with refused
marks is ended at once by the expirer, which removes only what streamproc provably wrote
(bookkeeping, label, and owned keys that still hold the value the topology writes) and nothing a
person set.

What the checks above cannot tell apart: a mark a tenant forges to look exactly like
streamproc's on its own pods (a known topology, its own workload, an expiry within the ladder),
which would buy it one ``maxObservations`` slot per workload it owns, renewable forever. With a
key (``--mark-key-file``, :class:`~streamproc.model.seals.Sealer` on the :class:`Policy`) the
marks must also carry ``streamproc.io/seal``, an HMAC of them and of the object's namespace,
name and uid: a missing one is refused ``unsealed``, a wrong one ``bad-seal``. A tenant can then
only put back the marks streamproc wrote on that very object, expiry included. Without a key
nothing is checked (and marks written before a key was set are refused once it is).

``observed-since`` (when the observation opened) bounds the range streamproc asks Prometheus
about at the end (``model.evidence``): optional (pods observed before it was written have none),
refused when it is not RFC 3339, later than ``expires-at`` or later than now + :data:`SKEW_S`; an
earlier value than an observation could have started (``expires-at`` minus
:data:`MAX_OBSERVED_S`) is clamped there, so a forged start never widens a query without bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from streamproc.model import conventions, seals
from streamproc.model.topologies import MAX_LEVELS, METRICS, MetricName, Topology
from streamproc.model.workloads import cluster_of

#: why marks were refused: ``malformed`` (not the form streamproc writes), ``beyond-policy``
#: (an expiry later than any ladder of the topology could have written), ``foreign``
#: (well-formed, but naming another topology or namespace, or keys the topology never writes),
#: and with a key: ``unsealed`` (no ``seal``), ``bad-seal`` (a seal no key made for these marks
#: on this object: a copy from another object, or edited marks)
Reason = Literal["malformed", "beyond-policy", "foreign", "unsealed", "bad-seal"]
REASONS: tuple[Reason, ...] = ("malformed", "beyond-policy", "foreign", "unsealed", "bad-seal")

#: how far ahead of this process's clock another replica's clock may be, for the expiry bound
SKEW_S = 300.0
#: the bound when no topology is loaded (``status``, ``release``): renderable, never extended
CEILING_S = 366 * 86400.0
#: the most owned keys a mark may list (a topology writes a handful)
MAX_OWNED = 64
#: what streamproc writes for rule and action id at most (``patches.observe`` truncates there)
MAX_VALUE = 253
#: the longest an observation, extensions included, is believed to have lasted: an older
#: ``observed-since`` is clamped to ``expires-at`` minus this (the evidence range's bound)
MAX_OBSERVED_S = 7 * 86400.0
#: pods+reasons warned about, remembered so a resync does not repeat the warning (bounded)
MAX_WARNED = 4096

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_LEVEL = re.compile(r"([1-9][0-9]?)/([1-9][0-9]?)")


@dataclass(frozen=True, slots=True)
class Marks:
    """Marks that streamproc could have written, as they are now."""

    until: float
    topology: str
    rule: str
    action_id: str
    #: topology keys streamproc added (and so may remove while they keep its value)
    owned: frozenset[str]
    #: ``n/m`` on a topology with a ladder, else empty
    level: str
    #: whether the ``observed`` label is on (only then is it an observation to expire)
    labelled: bool
    #: (namespace, Kind, name) the action id names, None when it is cut short (long names)
    workload: tuple[str, str, str] | None
    #: when the observation opened (``observed-since``, clamped); None on marks written before it
    since: float | None = None
    #: the Hubble metrics it gets through ACNS's filters (``metric-filters``); empty: not through
    #: them, or marks written before the key existed
    metric_filters: tuple[MetricName, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Marks streamproc will not act on, and what of them it may still clean up."""

    reason: Reason
    detail: str
    labelled: bool = False
    topology: str = ""
    #: keys the mark claims streamproc added, well-formed ones only (removed only if they still
    #: hold the value a loaded topology writes)
    owned: frozenset[str] = field(default_factory=frozenset)


#: what reading an object's marks gives: its marks, a refusal, or None when it carries none
Read = Marks | Refusal | None


@dataclass(frozen=True, slots=True)
class Policy:
    """What the loaded topologies could have written: the bounds marks are checked against."""

    #: topology -> the longest TTL its ladder writes
    ttls: Mapping[str, float] = field(default_factory=dict)
    #: topology -> the annotations it writes
    writes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: with ``--mark-key-file``: marks must carry its seal, and writes seal them (None: neither)
    sealer: seals.Sealer | None = None

    @classmethod
    def of(cls, topologies: Iterable[Topology], *, sealer: seals.Sealer | None = None) -> Policy:
        """The policy of these topologies (none: only the generic bounds apply)."""
        ttls, writes = {}, {}
        for topology in topologies:
            action = topology.spec.action
            ladder = action.escalation.ttls if action.escalation else ()
            ttls[topology.name] = max((action.ttl, *ladder))
            writes[topology.name] = dict(action.annotate)
        return cls(ttls, writes, sealer)

    def longest(self, topology: str) -> float:
        """The longest TTL ``topology`` writes; an unknown one gets the longest of any."""
        if topology in self.ttls:
            return self.ttls[topology]
        return max(self.ttls.values(), default=CEILING_S)

    def ours(self, topology: str, key: str, value: object) -> bool:
        """Whether ``key: value`` is what ``topology`` writes (any topology if it is unknown)."""
        if topology in self.writes:
            return self.writes[topology].get(key) == value
        if not self.writes:
            return True  # nothing loaded to compare with (``release`` by hand)
        return any(w.get(key) == value for w in self.writes.values())

    def _keys(self, topology: str) -> set[str] | None:
        if topology in self.writes:
            return set(self.writes[topology])
        if not self.writes:
            return None
        return {k for w in self.writes.values() for k in w}


def _owned(value: object) -> frozenset[str]:
    """The well-formed keys of an ``owned-keys`` value (at most ``MAX_OWNED``)."""
    if not isinstance(value, str):
        return frozenset()
    keys = [k for k in value.split(",", MAX_OWNED)[:MAX_OWNED] if k]
    return frozenset(k for k in keys if conventions.is_annotation_key(k))


def _time(value: str) -> float | None:
    if _RFC3339.fullmatch(value) is None:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError):
        return None


def _text(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_VALUE and value.isprintable()


def decode(  # noqa: C901 - one refusal per check, in order
    annotations: Mapping[str, Any],
    labels: Mapping[str, Any],
    *,
    namespace: str,
    now: float,
    policy: Policy,
    subject: seals.Identity = ("", "", ""),
) -> Read:
    """The marks on an object in ``namespace``, a :class:`Refusal`, or None when it has none.

    ``subject``: the object's (namespace, name, uid), what a seal is bound to (``seals``).
    """
    labelled = labels.get(conventions.OBSERVED_LABEL) == "true"
    if not labelled and not any(k in annotations for k in conventions.BOOKKEEPING_KEYS):
        return None
    topology = annotations.get(conventions.TOPOLOGY, "")
    owned_value = annotations.get(conventions.OWNED_KEYS, "")
    owned = _owned(owned_value)

    def refuse(reason: Reason, detail: str) -> Refusal:
        name = topology if isinstance(topology, str) else ""
        return Refusal(reason, detail, labelled, name, owned)

    raw_until = annotations.get(conventions.EXPIRES_AT)
    if not isinstance(raw_until, str) or (until := _time(raw_until)) is None:
        return refuse("malformed", f"expires-at {str(raw_until)[:40]!r} is not RFC 3339")
    if not isinstance(topology, str) or not conventions.is_dns1123_label(topology):
        return refuse("malformed", f"topology {str(topology)[:70]!r} is not a DNS-1123 label")
    bound = now + min(policy.longest(topology), CEILING_S) + SKEW_S
    if not 0 <= until <= bound:
        return refuse("beyond-policy", f"expires-at {raw_until[:40]} is beyond {topology}'s TTL")
    rule, action_id, level = (
        annotations.get(k, "") for k in (conventions.RULE, conventions.ACTION_ID, conventions.LEVEL)
    )
    if not (_text(rule) and _text(action_id) and isinstance(level, str)):
        return refuse("malformed", "rule or action id is not a line of at most 253 characters")
    if not isinstance(owned_value, str) or owned != set(owned_value.split(",")) - {""}:
        return refuse("malformed", "owned-keys is not a list of annotation keys")
    if level and not _level_ok(level):
        return refuse("malformed", f"level {level[:20]!r} is not n/m within a ladder")
    parts = cluster_of(action_id)[1].split("/", 4)
    if len(parts) < 3 or parts[0] != topology or parts[1] != namespace:
        return refuse("foreign", f"action id {action_id[:80]!r} is not {topology}'s in {namespace}")
    keys = policy._keys(topology)  # noqa: SLF001 - the policy's own reading of a topology
    if keys is not None and not owned <= keys:
        return refuse("foreign", f"owned-keys lists {sorted(owned - keys)[:3]}, not {topology}'s")
    since = _since(annotations.get(conventions.OBSERVED_SINCE), until=until, now=now)
    if isinstance(since, Refusal):
        return refuse(since.reason, since.detail)
    filters = _metric_filters(annotations.get(conventions.METRIC_FILTERS))
    if filters is None:
        return refuse("malformed", "metric-filters is not a list of Hubble metrics")
    if (unsealed := _unsealed(annotations, policy.sealer, subject)) is not None:
        return refuse(unsealed.reason, unsealed.detail)
    complete = len(parts) == 5 and parts[4].isdigit()  # topology/ns/Kind/name/window
    return Marks(
        until=until,
        topology=topology,
        rule=rule,
        action_id=action_id,
        owned=owned,
        level=level,
        labelled=labelled,
        workload=(parts[1], parts[2], parts[3]) if complete else None,
        since=since,
        metric_filters=filters,
    )


def _unsealed(
    annotations: Mapping[str, Any], sealer: seals.Sealer | None, subject: seals.Identity
) -> Refusal | None:
    """Why the marks' seal is refused (with a key only); None when it verifies or is not asked."""
    if sealer is None:
        return None
    seal = annotations.get(conventions.SEAL)
    if seal is None:
        return Refusal("unsealed", "no seal, and this process checks seals (--mark-key-file)")
    if not isinstance(seal, str) or not sealer.verifies(subject, annotations, seal):
        return Refusal("bad-seal", "the seal is not streamproc's for these marks on this object")
    return None


def _metric_filters(raw: object) -> tuple[MetricName, ...] | None:
    """``metric-filters``: distinct known metrics, in ``METRICS`` order; None when refused."""
    if raw is None:
        return ()
    if not isinstance(raw, str) or len(raw) > MAX_VALUE:
        return None
    listed = raw.split(",")
    found = tuple(m for m in METRICS if m in listed)
    return found if found and len(found) == len(listed) else None


def _since(raw: object, *, until: float, now: float) -> float | Refusal | None:
    """``observed-since`` checked and clamped; None when absent (written before it existed)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or (since := _time(raw)) is None:
        return Refusal("malformed", f"observed-since {str(raw)[:40]!r} is not RFC 3339")
    if since > until or since > now + SKEW_S:
        return Refusal("beyond-policy", f"observed-since {raw[:40]} is later than it can be")
    return max(since, until - MAX_OBSERVED_S, 0.0)


def _level_ok(level: str) -> bool:
    found = _LEVEL.fullmatch(level)
    return found is not None and int(found[1]) <= int(found[2]) <= MAX_LEVELS


def mapping(value: object) -> Mapping[str, Any]:
    """A part of an object that should be a mapping; anything else reads as empty."""
    return value if isinstance(value, Mapping) else {}
