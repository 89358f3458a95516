"""Writing ACNS's ContainerNetworkMetric: the observed pods, projected, read-modify-write.

The projection itself is pure (:mod:`streamproc.model.metric_filters`); this module reads what
it is computed from (the pods under observation through the ``acns-metric-filters`` backend,
listed by streamproc's label in pages and read through ``marking.read``, and the singleton as it
is now) and writes the result: a PUT carrying the ``metadata.resourceVersion`` it was computed
from, so a concurrent writer (another annotate replica, a person, ACNS) makes it fail with 409
rather than be overwritten; then it reads and computes again, a bounded number of times. Two
replicas compute the same projection from the same pods, so they converge.

There is one object per cluster: streamproc uses whichever exists and creates
``container-network-metric`` only when there is none. Creating it turns filtering on for the
whole cluster (without the object ACNS collects every pod's metrics), so that is logged as a
warning. An object streamproc created (``streamproc.io/created-by``) is deleted again, with a
resourceVersion precondition, once no filter at all is left in it: the cluster is back to
collecting everything, as before. An object someone else created is never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streamproc.clients import kube, metrics
from streamproc.cluster import marking
from streamproc.model import conventions, marks, outcomes
from streamproc.model import metric_filters as projection
from streamproc.model.topologies import ACNS, MetricName, Topology

log = logging.getLogger("streamproc.metric_filters")
GVR = (projection.GROUP, projection.VERSION, projection.PLURAL)
#: reads and writes after a 409 before giving up (the caller reconciles again later)
ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Written:
    """What a reconciliation found and did."""

    outcome: outcomes.FilterWrite
    #: the singleton's name ("" when there is none)
    name: str = ""
    #: pods named in streamproc's filters now
    pods: int = 0


def metrics_of(topologies: Iterable[Topology], default: str) -> dict[str, tuple[MetricName, ...]]:
    """Topologies observing through the filters, each with the Hubble metrics it wants."""
    return {
        t.name: t.spec.action.metrics
        for t in topologies
        if t.spec.action.observed_through(default) == ACNS
    }


async def observed(
    client: kube.Kube,
    wanted: Mapping[str, tuple[MetricName, ...]],
    *,
    policy: marks.Policy,
    now: float,
) -> dict[projection.Workload, projection.Observed]:
    """The pods under observation through the filters now, per workload.

    Only marks streamproc could have written, labelled, unexpired, of a whole action id (so
    the workload is known): a tenant's edit never adds a pod to the filters. A pod is observed
    through the filters when its marks say so (``metric-filters``, with the metrics), whatever
    topologies this process loaded, so processes with different topology files (a rolling
    upgrade, a second deployment) project the same filters and never delete each other's.
    Marks written before that key existed count when their topology is in ``wanted``.
    """
    found: list[tuple[projection.Workload, str, tuple[MetricName, ...]]] = []
    selector = f"{conventions.OBSERVED_LABEL}=true"
    async for page, _ in client.list_pages("pods", label_selector=selector):
        for pod in page:
            read = marking.read(pod, now=now, policy=policy)
            if (
                not isinstance(read, marks.Marks)
                or not read.labelled
                or read.workload is None
                or read.until <= now
            ):
                continue
            wants = read.metric_filters or wanted.get(read.topology, ())
            if not wants:
                continue
            name = str((pod.get("metadata") or {}).get("name") or "")
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue  # leaving: its name may come back as another pod's
            if not name:
                continue  # "ns/" would read as a pattern, not a pod
            found.append((read.workload, name, wants))
    return projection.merge(found)


def _name(obj: kube.Json) -> str:
    name = marks.mapping(obj.get("metadata")).get("name")
    return name if isinstance(name, str) else ""


def _singleton(items: list[kube.Json]) -> kube.Json | None:
    """The cluster's one object: the docs' name if present, else the first by name."""
    named = sorted((o for o in items if isinstance(o, dict) and _name(o)), key=_name)
    default = [o for o in named if _name(o) == projection.DEFAULT_NAME]
    if len(named) > 1:
        log.warning(
            "%d ContainerNetworkMetric objects, ACNS honours one: streamproc writes to %s",
            len(named),
            _name((default or named)[0]),
        )
    chosen = default or named
    return chosen[0] if chosen else None


def _created_by_us(obj: kube.Json) -> bool:
    annotations = marks.mapping(marks.mapping(obj.get("metadata")).get("annotations"))
    return annotations.get(projection.CREATED_BY) == "streamproc"


async def _read_singleton(client: kube.Kube) -> kube.Json | None:
    try:
        return _singleton(await client.list_cluster_objects(GVR))
    except kube.NotFound:
        raise kube.NotFound(
            f"the API server does not serve {projection.PLURAL}.{projection.GROUP}: enable "
            "ACNS container network metrics filtering on the cluster (docs/architecture.md, "
            "Observation backends), or use --observation-backend retina-annotation",
            status=404,
        ) from None


async def _once(
    client: kube.Kube,
    current: kube.Json | None,
    observed: Mapping[projection.Workload, projection.Observed],
    *,
    dry_run: bool,
) -> Written:
    """One read-modify-write from ``current``; Conflict/NotFound when it changed meanwhile."""
    spec = current.get("spec") if current is not None else None
    projected = projection.project(spec, observed)
    name = _name(current) if current is not None else projection.DEFAULT_NAME
    if projected is None:
        log.warning("%s: spec.filters is not a list; left alone, no filters written", name)
        return Written("malformed", name)
    if projected.left_out:
        log.warning(
            "%s: %d observed pods left out of the filters (at most %d)",
            name,
            projected.left_out,
            projection.MAX_PODS,
        )
    metrics.metric_filter_pods.set(projected.pods)
    if current is None:
        if not observed:
            return Written("unchanged")
        return await _create(client, projected, dry_run=dry_run)
    if projected.spec == spec:
        return Written("unchanged", name, projected.pods)
    version = str(marks.mapping(current.get("metadata")).get("resourceVersion") or "")
    if not projected.any_filters and _created_by_us(current):
        if dry_run:
            log.info("dry run: would delete ContainerNetworkMetric %s (no filters left)", name)
            return Written("dry-run", name)
        await client.delete_cluster_object(GVR, name, resource_version=version)
        log.info(
            "deleted ContainerNetworkMetric %s, which streamproc created: no filters left, "
            "so ACNS collects every pod's metrics again",
            name,
        )
        return Written("deleted", name)
    body: dict[str, Any] = {**current, "spec": projected.spec}
    if dry_run:
        log.info("dry run: would write ContainerNetworkMetric %s: %s", name, projected.spec)
        return Written("dry-run", name, projected.pods)
    await client.replace_cluster_object(GVR, body)
    log.info("ContainerNetworkMetric %s: streamproc's filters name %d pods", name, projected.pods)
    return Written("replaced", name, projected.pods)


async def _create(client: kube.Kube, projected: projection.Projection, *, dry_run: bool) -> Written:
    name = projection.DEFAULT_NAME
    body = {
        "apiVersion": f"{projection.GROUP}/{projection.VERSION}",
        "kind": projection.KIND,
        "metadata": {"name": name, "annotations": {projection.CREATED_BY: "streamproc"}},
        "spec": projected.spec,
    }
    if dry_run:
        log.info("dry run: would create ContainerNetworkMetric %s: %s", name, projected.spec)
        return Written("dry-run", name, projected.pods)
    await client.create_cluster_object(GVR, body)  # 409 when another replica was first
    log.warning(
        "created ContainerNetworkMetric %s: ACNS now collects Hubble metrics only as its filters "
        "say (before, without the object, it collected every pod's); streamproc deletes it "
        "again once its filters are gone",
        name,
    )
    return Written("created", name, projected.pods)


async def sync(
    client: kube.Kube,
    wanted: Mapping[str, tuple[MetricName, ...]],
    *,
    policy: marks.Policy,
    now: float,
    dry_run: bool = False,
) -> Written:
    """Make streamproc's filters in the singleton exactly the observed pods'; Conflict after 409s.

    Each attempt reads the object first and lists the pods after it, then writes with the
    object's resourceVersion. So the pods are never older than the object: whatever another
    writer (a replica that just opened a pod, a person) put there before our read is in our
    pod list too, or came after it and makes our PUT fail with 409. A 409 (or the object gone)
    redoes both reads: retrying with the old pod list would write a stale projection over a
    fresher one, and succeed.
    """
    for _attempt in range(ATTEMPTS):
        current = await _read_singleton(client)
        found = await observed(client, wanted, policy=policy, now=now)
        try:
            written = await _once(client, current, found, dry_run=dry_run)
        except (kube.Conflict, kube.NotFound):
            # changed or deleted since it was read (another replica, a person): read both again
            metrics.metric_filter_writes.labels(result="conflict").inc()
            continue
        metrics.metric_filter_writes.labels(result=written.outcome).inc()
        return written
    raise kube.Conflict(f"ContainerNetworkMetric kept changing ({ATTEMPTS} attempts)", status=409)
