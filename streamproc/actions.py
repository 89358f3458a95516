"""Actions: what the windows stage emits, exactly one per workload per window that qualifies.

An action carries everything the annotator needs and nothing it must look up elsewhere: the
workload, the annotations to write (from the topology, never from the detection), when the
observation expires, and a deterministic ``id`` (topology/workload/window) that makes a replayed
action recognisable on the pods it already touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import orjson
from pydantic import ConfigDict

from streamproc import records
from streamproc.workloads import Kind, ResolvedBy


class ActionError(ValueError):
    """A record on the actions topic that is not a usable action."""


@dataclass(frozen=True, slots=True)
class Action:
    """Open or extend the observation of one workload."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    id: records.Text
    topology: records.Label
    namespace: records.Label
    kind: Kind
    name: records.Subdomain
    resolved_by: ResolvedBy
    pod: records.OptionalSubdomain
    window_start: records.Epoch
    window_end: records.Epoch
    ttl: float
    annotations: dict[records.AnnotationKey, str]
    scope: Literal["workload", "pod", "namespace"]
    rule: records.Text
    priority: records.Priority
    count: records.Count
    first_append_ms: records.Epoch
    dry_run: bool = False
    uuids: records.Uuids = field(default_factory=list)

    @property
    def expires_at(self) -> float:
        """The observation lasts ``ttl`` after the end of the window that qualified."""
        return self.window_end + self.ttl

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
        if action.window_end < action.window_start or not 0 < action.ttl <= 366 * 86_400:
            raise ActionError("window_end before window_start, or ttl not in (0, 366 days]")
        return action


_decode = records.decoder(Action)
