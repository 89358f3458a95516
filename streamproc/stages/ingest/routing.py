"""What a detection does: skipped, refused, or counted for a workload.

Decided once per batch for each distinct (rule, priority, source, tags, namespace, pod, owners,
cluster), so a detection costs a dict look-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from streamproc import reasons
from streamproc.model import fleets
from streamproc.model.events import Detection
from streamproc.model.tallies import UUID_SAMPLE, Tally, start_tally
from streamproc.model.workloads import WorkloadRef
from streamproc.stages.ingest.batches import BatchResult, Slot


class Route:
    """What every detection with one (rule, priority, source, tags, namespace, pod, owners) does."""

    __slots__ = (
        "cluster",
        "count",
        "detail",
        "excluded",
        "kind",
        "named",
        "placement",
        "priority",
        "refused",
        "source",
        "targets",
        "workload",
        "workload_key",
    )

    def __init__(self, kind: str, detection: Detection) -> None:
        self.kind = kind
        self.cluster = detection.cluster
        self.priority = detection.priority
        self.source = detection.source
        self.count = 0
        #: (topology name, window size in ms) for each matched topology.
        self.targets: tuple[tuple[str, int], ...] = ()
        self.workload: WorkloadRef | None = None
        self.workload_key = ""
        #: topologies that would have matched but for their excluded namespaces
        self.excluded: tuple[str, ...] = ()
        #: the cluster field as written, and what placing it did (``fleets.Fleet.place``)
        self.named = ""
        self.placement: fleets.Placement = "own"
        #: why every detection of this route is dead-lettered, with the dead letter's detail
        self.refused: reasons.DeadLetter | None = None
        self.detail = ""


def add_to_tallies(
    tallies: dict[Slot, Tally], route: Route, detection: Detection, timestamp: int
) -> None:
    """Count one detection into the tally of each topology it matched."""
    workload_key = route.workload_key
    for name, size_ms in route.targets:
        start = timestamp - timestamp % size_ms
        slot = (name, workload_key, start)
        tally = tallies.get(slot)
        if tally is None:
            assert route.workload is not None
            tallies[slot] = start_tally(
                name,
                route.workload,
                start,
                timestamp,
                detection.rule,
                detection.priority,
                detection.pod or "",
                detection.uuid,
                route.cluster,
            )
            continue
        tally.count += 1
        tally.first_append_ms = min(tally.first_append_ms, timestamp)
        tally.priority = max(tally.priority, detection.priority)
        if detection.uuid and len(tally.uuids) < UUID_SAMPLE:
            tally.uuids.append(detection.uuid)


def summarise(routes: Mapping[tuple[object, ...], Route], result: BatchResult) -> None:
    """Fold each route's count into the batch's counters (once per route, not per event)."""
    for key, route in routes.items():
        result.consumed[(route.priority, route.source)] += route.count
        if route.placement not in ("own", "member"):
            result.fields[(route.named, route.placement)] += route.count
        if route.kind == "host":
            result.host_events += route.count
        elif route.excluded:
            result.excluded_detections += route.count
            for name in route.excluded:
                result.excluded[name] += route.count
        elif route.kind == "unmatched":
            result.unmatched += route.count
        elif route.workload is not None:
            identity = (route.cluster, key[4], key[5], route.workload)
            result.identities[identity] += route.count  # type: ignore[index]
        for name, _ in route.targets:
            result.matched[name] += route.count
            result.rules[(name, key[0])] += route.count  # type: ignore[index]
