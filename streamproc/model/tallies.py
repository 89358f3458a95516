"""Tallies: what the ingest stage publishes, one per topology x workload x window per flush.

A tally says "N matching detections for this workload fell into this window", plus a small sample
(first rule, highest priority, the pod that fired, a few uuids) for the audit trail. It is how the
ingest stage spares the Faust stage a per-detection cost: a flood of a million detections for one
workload becomes a handful of tallies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import orjson
from pydantic import ConfigDict

from streamproc.model import records
from streamproc.model.workloads import WORKLOAD_KINDS, Kind, ResolvedBy, WorkloadRef, in_cluster

if TYPE_CHECKING:
    from streamproc.model.topologies import Topology

UUID_SAMPLE = 5


class TallyError(ValueError):
    """A record on the tallies topic that is not a tally."""


@dataclass(slots=True)
class Tally:
    """Detections of one workload in one window, as counted by one ingest batch."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    topology: records.Label
    namespace: records.Label
    kind: Kind
    name: records.Subdomain
    resolved_by: ResolvedBy
    window_start: records.Epoch
    count: records.Count
    first_append_ms: records.Epoch
    rule: records.Text
    priority: records.Priority
    pod: records.OptionalSubdomain
    uuids: records.Uuids = field(default_factory=list)
    #: the cluster of the workload, in a fleet sharing one Kafka ("" for a single cluster)
    cluster: records.OptionalLabel = ""
    #: not detections: ``streamproc release --forget`` asks the windows stage to drop the
    #: workload's escalation history
    forget: bool = False

    @property
    def workload_key(self) -> str:
        """``[cluster:]topology/namespace/Kind/name``: the Kafka key and the windows table key."""
        return in_cluster(self.cluster, f"{self.topology}/{self.namespace}/{self.kind}/{self.name}")

    def encode(self) -> bytes:
        """JSON bytes for Kafka."""
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Tally:
        """Parse and check a tally; anything on the topic is untrusted until it passes here."""
        try:
            return _decode(raw)
        except ValueError as exc:
            raise TallyError(f"not a tally: {exc}") from None


_decode = records.decoder(Tally)


def start_tally(
    topology: str,
    workload: WorkloadRef,
    window_start: int,
    append_ms: int,
    rule: str,
    priority: int,
    pod: str,
    uuid: str,
    cluster: str = "",
) -> Tally:
    """The tally for the first detection of a workload in a window within one batch."""
    return Tally(
        topology=topology,
        namespace=workload.namespace,
        kind=workload.kind,
        name=workload.name,
        resolved_by=workload.resolved_by,
        window_start=window_start,
        count=1,
        first_append_ms=append_ms,
        rule=rule,
        priority=priority,
        pod=pod,
        uuids=[uuid] if uuid else [],
        cluster=cluster,
    )


def forget_tally(topology: str, namespace: str, kind: Kind, name: str, cluster: str = "") -> Tally:
    """The record that makes the windows stage drop a workload's escalation history."""
    now_ms = int(time.time() * 1000)
    return Tally(
        topology=topology,
        namespace=namespace,
        kind=kind,
        name=name,
        resolved_by="api",
        window_start=now_ms,
        count=1,
        first_append_ms=now_ms,
        rule="streamproc release --forget",
        priority=0,
        pod="",
        cluster=cluster,
        forget=True,
    )


def forgetting(
    topologies: Iterable[Topology], namespace: str, kind: str, name: str, cluster: str = ""
) -> list[Tally]:
    """``release --forget``: one forget record per topology with an escalation ladder.

    Topologies without a ladder keep no history to forget. A ``kind`` streamproc does not
    observe is a ValueError (it comes from a person's command line).
    """
    if kind not in WORKLOAD_KINDS:
        raise ValueError(f"{kind!r} is not a workload kind streamproc observes")
    checked = WORKLOAD_KINDS[WORKLOAD_KINDS.index(kind)]  # the Literal, not the str
    return [
        forget_tally(t.name, namespace, checked, name, cluster)
        for t in topologies
        if t.spec.action.escalation
    ]
