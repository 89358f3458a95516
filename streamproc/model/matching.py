"""Which topologies a detection opens. Pure: (Detection, topologies) -> matching topologies.

Detections repeat the same rule, priority, source, tags and namespace over and over in a flood, so
the answer is memoised on exactly those inputs (bounded; cleared when full). That keeps matching
near one dict look-up per detection however many topologies are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.model import conventions
from streamproc.model.events import Detection
from streamproc.model.topologies import Topology

_CACHE_LIMIT = 65_536


@dataclass(frozen=True, slots=True)
class _Compiled:
    topology: Topology
    rules: frozenset[str]
    tags: frozenset[str]
    sources: frozenset[str]
    include: frozenset[str]
    exclude: frozenset[str]
    clusters: frozenset[str]

    def admits(self, detection: Detection) -> bool:
        return self.admits_elsewhere(detection) and not self.excludes(detection.namespace)

    def admits_elsewhere(self, detection: Detection) -> bool:
        """Every condition but the excluded namespaces holds."""
        match = self.topology.spec.match
        namespace = detection.namespace
        return (
            match.priority.admits(detection.priority)
            and (not self.rules or detection.rule in self.rules)
            and (not self.sources or detection.source in self.sources)
            and (not self.tags or not self.tags.isdisjoint(detection.tags))
            and namespace is not None
            and (not self.include or namespace in self.include)
            and (not self.clusters or detection.cluster in self.clusters)
        )

    def excludes(self, namespace: str | None) -> bool:
        return namespace in self.exclude and namespace not in self.include


class Matcher:
    """Compiled topologies for one source topic."""

    def __init__(self, topologies: list[Topology]) -> None:
        self.topologies = tuple(topologies)
        self._compiled = tuple(
            _Compiled(
                topology=t,
                rules=frozenset(t.spec.match.rules),
                tags=frozenset(t.spec.match.tags),
                sources=frozenset(t.spec.match.sources),
                include=frozenset(t.spec.match.namespaces.include),
                # a topology's own exclude list adds to the protected ones, never replaces them
                exclude=frozenset(t.spec.match.namespaces.exclude)
                | frozenset(conventions.PROTECTED_NAMESPACES),
                clusters=frozenset(t.spec.match.clusters),
            )
            for t in topologies
        )
        self._cache: dict[tuple[object, ...], tuple[Topology, ...]] = {}

    def match(self, detection: Detection) -> tuple[Topology, ...]:
        """Topologies whose every condition holds for ``detection``."""
        key = (
            detection.rule,
            detection.priority,
            detection.source,
            detection.tags,
            detection.namespace,
            detection.cluster,
        )
        found = self._cache.get(key)
        if found is None:
            found = tuple(c.topology for c in self._compiled if c.admits(detection))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def excluded(self, detection: Detection) -> tuple[Topology, ...]:
        """Topologies that would match but for their excluded namespaces (protected ones too).

        Asked only for detections no topology matched, so it costs nothing on the hot path.
        """
        return tuple(
            c.topology
            for c in self._compiled
            if c.excludes(detection.namespace) and c.admits_elsewhere(detection)
        )
