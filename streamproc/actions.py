"""Actions: what the windows stage emits, exactly one per workload per window that qualifies.

An action carries everything the annotator needs and nothing it must look up elsewhere: the
workload, the annotations to write (from the topology, never from the detection), when the
observation expires, and a deterministic ``id`` (topology/workload/window) that makes a replayed
action recognisable on the pods it already touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from streamproc import conventions


class ActionError(ValueError):
    """A record on the actions topic that is not a usable action."""


@dataclass(frozen=True, slots=True)
class Action:
    """Open or extend the observation of one workload."""

    id: str
    topology: str
    namespace: str
    kind: str
    name: str
    resolved_by: str
    pod: str
    window_start: int
    window_end: int
    ttl: float
    annotations: dict[str, str]
    scope: str
    rule: str
    priority: int
    count: int
    first_append_ms: int
    dry_run: bool = False
    uuids: list[str] = field(default_factory=list)

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
            doc: Any = orjson.loads(raw)
            action = cls(**doc)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ActionError(f"not an action: {exc}") from None
        if not conventions.is_dns1123_label(action.namespace):
            raise ActionError(f"namespace {action.namespace[:80]!r} is not DNS-1123")
        for name in (action.name, action.pod):
            if not conventions.is_dns1123_subdomain(name):
                raise ActionError(f"name {name[:80]!r} is not a DNS-1123 subdomain")
        if not all(conventions.is_annotation_key(k) for k in action.annotations):
            raise ActionError("an annotation key is not a valid Kubernetes key")
        return action
