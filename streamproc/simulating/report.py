"""What a simulation found: per topology what it would have done, and what it would have cost.

The numbers come from the live code's own outputs: the ingest batch counters, the windows
decision and the annotator's and expirer's audit records (collected by :class:`Collector`, the
same records the live stages put on ``streamproc.audit``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from streamproc.clients.kafka import BadBatch
from streamproc.model import conventions, events, outcomes, workloads
from streamproc.model.actions import Action
from streamproc.model.topologies import Topology
from streamproc.stages.ingest import BatchResult

#: how identities are named in the report, from ``WorkloadRef.resolved_by`` and the pod's source
IDENTITY_SOURCES = ("owner-fields", "snapshot", "api", "name-shape")
_TOP = 10


@dataclass
class TopologyStats:
    """One topology's share of the simulation."""

    detections: int = 0
    windows: int = 0
    deduplicated: int = 0
    actions: int = 0
    opened: int = 0
    extended: int = 0
    not_due: int = 0
    captures: int = 0
    refused_cap: int = 0
    refused_budget_pods: int = 0
    refused_budget: int = 0
    excluded: int = 0
    no_pods: int = 0
    other: Counter[str] = field(default_factory=Counter)
    workloads: set[tuple[str, str, str, str]] = field(default_factory=set)
    pods: set[tuple[str, str, str]] = field(default_factory=set)
    levels: Counter[int] = field(default_factory=Counter)
    observed_s: float = 0.0
    patches: int = 0
    expiries: int = 0
    rules: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "detections": self.detections,
            "windows": self.windows,
            "deduplicated": self.deduplicated,
            "actions": self.actions,
            "observations_opened": self.opened,
            "observations_extended": self.extended,
            "extensions_not_due": self.not_due,
            "workloads": len(self.workloads),
            "pods": len(self.pods),
            "observation_minutes": round(self.observed_s / 60, 1),
            "levels": {str(k): v for k, v in sorted(self.levels.items())},
            "captures": self.captures,
            "refused": {
                "cap": self.refused_cap,
                "node_budget_actions": self.refused_budget,
                "node_budget_pods": self.refused_budget_pods,
                "excluded_namespace": self.excluded,
            },
            "no_pods": self.no_pods,
            "other_outcomes": dict(self.other),
            "api_writes": {"applies": self.patches, "expiries": self.expiries},
            "top_rules": dict(self.rules.most_common(_TOP)),
        }


@dataclass
class Decision:
    """One action the windows decision emitted, with what the annotator made of it."""

    topology: str
    cluster: str
    namespace: str
    kind: str
    name: str
    window_start: int
    window_end: int
    level: int
    detections: int
    outcome: str = ""

    @property
    def workload(self) -> str:
        """``[cluster:]namespace/Kind/name``."""
        prefix = f"{self.cluster}:" if self.cluster else ""
        return f"{prefix}{self.namespace}/{self.kind}/{self.name}"


class Report:
    """Everything counted in one simulation (one topology set)."""

    def __init__(self, name: str, topologies: Sequence[Topology], *, payload_time: bool) -> None:
        self.name = name
        self.windows_from = "payload time" if payload_time else "Kafka record time"
        self.stats = {t.name: TopologyStats() for t in topologies}
        self.records = 0
        self.dead: Counter[str] = Counter()
        self.dead_examples: dict[str, list[str]] = {}
        self.identities: Counter[str] = Counter()
        #: pods taken for bare Pods by a name a DaemonSet or a Job could have generated
        self.ambiguous: set[str] = set()
        #: payloads whose ``time`` was out of step with their neighbours' (``timing.in_step``)
        self.out_of_step = 0
        self.out_of_step_examples: list[str] = []
        self.skipped: Counter[str] = Counter()
        self.priorities: Counter[str] = Counter()
        self.workload_detections: Counter[str] = Counter()
        self.decisions: dict[str, Decision] = {}
        self.writes: Counter[str] = Counter()
        #: (topology, namespace, kind, name) -> [[start, until, level], ...]
        self.intervals: dict[tuple[str, str, str, str], list[list[Any]]] = {}
        self.first_ms = 0
        self.latest_ms = 0
        #: the most windows held at once (memory follows this, not the input's length)
        self.most_live_windows = 0
        #: the input files by index (a record's partition), to name a dead letter ``file:line``
        self.locations: list[str] = []

    def topology(self, name: str) -> TopologyStats:
        """The stats of one topology."""
        return self.stats[name]

    def add_batch(self, result: BatchResult, sources: Mapping[tuple[str, str], str]) -> None:
        """Fold one ingest batch's counters in."""
        self.records += sum(result.consumed.values()) + len(result.dead)
        self._add_dead(result)
        self.out_of_step += len(result.out_of_step)
        for record in result.out_of_step[: max(0, 3 - len(self.out_of_step_examples))]:
            self.out_of_step_examples.append(
                self._where(record.topic, record.partition, record.offset)
            )
        for (priority, _), n in result.consumed.items():
            self.priorities[events.PRIORITIES[len(events.PRIORITIES) - 1 - priority]] += n
        self.skipped["host event (no pod)"] += result.host_events
        self.skipped["no topology matched"] += result.unmatched
        self.skipped["namespace excluded"] += result.excluded_detections
        for name, n in result.excluded.items():
            self.stats[name].excluded += n
        for name, n in result.matched.items():
            self.stats[name].detections += n
        for (name, rule), n in result.rules.items():
            self.stats[name].rules[rule] += n
        self._add_identities(result, sources)
        if result.latest_ms and not self.first_ms:
            self.first_ms = result.latest_ms
        if result.tallies:
            earliest = min(t.first_append_ms for t in result.tallies.values())
            self.first_ms = min(self.first_ms, earliest) if self.first_ms else earliest

    def _add_dead(self, result: BatchResult) -> None:
        for record, reason, _ in result.dead:
            self.dead[reason] += 1
            examples = self.dead_examples.setdefault(reason, [])
            if len(examples) < 3:
                examples.append(self._where(record.topic, record.partition, record.offset))

    def _where(self, topic: str, partition: int, offset: int) -> str:
        if partition < len(self.locations):
            return f"{self.locations[partition]}:{offset}"
        return f"{topic}[{partition}]@{offset}"

    def undecodable(self, batches: Sequence[BadBatch]) -> None:
        """Record batches of a topic that could not be decoded (their records are lost to us)."""
        for batch in batches:
            self.dead[batch.reason] += batch.next_offset - batch.offset
            examples = self.dead_examples.setdefault(batch.reason, [])
            if len(examples) < 3:
                examples.append(self._where(batch.topic, batch.partition, batch.offset))

    def _add_identities(self, result: BatchResult, sources: Mapping[tuple[str, str], str]) -> None:
        for (cluster, namespace, pod, workload), n in result.identities.items():
            source: str = workload.resolved_by
            if source == "api" and not cluster:
                source = sources.get((namespace, pod), "api")
            self.identities[source] += n
            prefix = f"{cluster}:" if cluster else ""
            self.workload_detections[f"{prefix}{workload.key}"] += n
            if workloads.is_ambiguous(workload):
                self.ambiguous.add(f"{prefix}{namespace}/{pod}")

    def decided(self, action: Action) -> None:
        """The windows decision emitted ``action``."""
        self.stats[action.topology].actions += 1
        self.decisions[action.id] = Decision(
            action.topology,
            action.cluster,
            action.namespace,
            action.kind,
            action.name,
            action.window_start,
            action.window_end,
            action.level,
            action.count,
        )

    def add_writes(self, writes: Counter[str]) -> None:
        """A simulated cluster's writes."""
        self.writes.update(writes)

    def add_intervals(self, intervals: Mapping[tuple[str, str, str, str], list[list[Any]]]) -> None:
        """Each workload's observations, start to end, from the simulated follower."""
        for key, spans in intervals.items():
            self.intervals.setdefault(key, []).extend(spans)
            self.stats[key[0]].observed_s += sum(until - start for start, until, _ in spans)

    def observed(self) -> set[tuple[str, str, str]]:
        """Workloads (namespace, kind, name) any topology of this set opened an observation on."""
        return {
            (d.namespace, d.kind, d.name)
            for d in self.decisions.values()
            if d.outcome in ("applied", "extended")
        }

    def time_range(self) -> list[str | None]:
        """The first and last detection time seen (RFC 3339), None before any."""
        return [
            conventions.format_time(self.first_ms / 1000) if self.first_ms else None,
            conventions.format_time(self.latest_ms / 1000) if self.latest_ms else None,
        ]

    def api_writes(self) -> dict[str, int]:
        """The requests the live code would have sent, by kind."""
        return {
            "applies": self.writes.get("observe", 0),
            "expiries": self.writes.get("release", 0),
            "events": self.writes.get("event", 0),
            "captures": self.writes.get("capture", 0),
        }

    def as_dict(self) -> dict[str, Any]:
        """The whole report as JSON-ready data."""
        return {
            "topologies_from": self.name,
            "records": self.records,
            "windows_from": self.windows_from,
            "times_out_of_step": self.out_of_step,
            "times_out_of_step_examples": self.out_of_step_examples,
            "time_range": self.time_range(),
            "identities": {k: self.identities.get(k, 0) for k in IDENTITY_SOURCES},
            "ambiguous_identities": sorted(self.ambiguous),
            "most_live_windows": self.most_live_windows,
            "skipped": dict(self.skipped),
            "dead_letters": dict(self.dead),
            "dead_letter_examples": self.dead_examples,
            "topologies": {name: s.as_dict() for name, s in self.stats.items()},
            "api_writes": self.api_writes(),
            "top_workloads": [
                {"workload": w, "detections": n}
                for w, n in self.workload_detections.most_common(_TOP)
            ],
            "actions": [
                {
                    "topology": d.topology,
                    "cluster": d.cluster,
                    "namespace": d.namespace,
                    "kind": d.kind,
                    "name": d.name,
                    "window_start": d.window_start,
                    "window_end": d.window_end,
                    "level": d.level,
                    "detections": d.detections,
                    "outcome": d.outcome,
                }
                for d in self.decisions.values()
            ],
        }


class Collector:
    """An ``auditing.Auditor`` that folds the live code's audit records into a report."""

    #: outcomes after which the workload is under observation (``applying``'s results)
    OPENED, EXTENDED = "applied", "extended"
    #: other outcomes, and the counter each adds to
    COUNTED: ClassVar[dict[outcomes.Outcome, str]] = {
        "extension-not-due": "not_due",
        "already-applied": "not_due",
        "refused-cap": "refused_cap",
        "refused-node-budget": "refused_budget",
        "no-pods": "no_pods",
    }

    def __init__(self, report: Report) -> None:
        self._report = report

    def record(self, *, result: outcomes.Outcome, **fields: Any) -> None:
        """One audit record, as the annotator, the node budget and the expirer write them."""
        stats = self._report.stats.get(str(fields.get("topology", "")))
        if stats is None:
            return
        pods = [str(p) for p in fields.get("pods") or ()]
        namespace = str(fields.get("namespace", ""))
        if result == "expired":
            stats.expiries += 1
            return
        if result.startswith("capture-"):
            stats.captures += result == "capture-created"
            return
        if result == "refused-node-budget" and "nodes" in fields:
            stats.refused_budget_pods += len(pods)  # the budget's own record, per pod refused
            return
        decision = self._report.decisions.get(str(fields.get("action", "")))
        if decision is not None:
            decision.outcome = result
        if result in (self.OPENED, self.EXTENDED):
            stats.patches += len(pods)
            stats.pods.update((namespace, pod, str(fields.get("topology"))) for pod in pods)
            stats.workloads.add((namespace, str(fields.get("kind")), str(fields.get("name")), ""))
            if result == self.OPENED:
                stats.opened += 1
                stats.levels[int(fields.get("level", 1))] += 1
            else:
                stats.extended += 1
        else:
            counter = self.COUNTED.get(result)
            if counter is None:
                stats.other[result] += 1
            else:
                setattr(stats, counter, getattr(stats, counter) + 1)

    async def flush(self) -> None:
        """Nothing is buffered."""
