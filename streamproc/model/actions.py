"""Actions: what the windows stage emits, exactly one per workload per window that qualifies.

An action names the workload, the window that qualified and the detection that made it qualify,
with a deterministic ``id`` (topology/workload/window) that makes a replayed action recognisable
on the pods it already touched. What to write and for how long (annotations, TTL, scope, dry run)
the annotator takes from its *own* topology, never from a record: a forged action can choose
nothing. Fields older versions wrote (``ttl``, ``annotations``, ``scope``, ``dry_run``) are
ignored rather than refused, so actions in flight survive a rolling upgrade.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import orjson
from pydantic import ConfigDict

from streamproc.model import records
from streamproc.model.workloads import Kind, ResolvedBy


class ActionError(ValueError):
    """A record on the actions topic that is not a usable action."""


@dataclass(frozen=True, slots=True)
class Action:
    """Open or extend the observation of one workload."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="ignore")

    id: records.Text
    topology: records.Label
    namespace: records.Label
    kind: Kind
    name: records.Subdomain
    resolved_by: ResolvedBy
    pod: records.OptionalSubdomain
    window_start: records.Epoch
    window_end: records.Epoch
    rule: records.Text
    priority: records.Priority
    count: records.Count
    first_append_ms: records.Epoch
    uuids: records.Uuids = field(default_factory=list)
    #: the cluster whose annotators act on it ("" for a single cluster)
    cluster: records.OptionalLabel = ""
    #: the step of the topology's escalation ladder (1 without one); the annotator clamps it
    #: to its own topology's ladder
    level: records.Count = 1

    def encode(self) -> bytes:
        """JSON bytes for Kafka."""
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Action:
        """Parse and check an action; anything on the topic is untrusted until it passes here."""
        try:
            action = _decode(raw)
        except ValueError as exc:
            raise ActionError(f"not an action: {exc}") from None
        if action.window_end < action.window_start:
            raise ActionError("window_end before window_start")
        return action


_decode = records.decoder(Action)
