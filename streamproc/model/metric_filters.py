"""ACNS's ContainerNetworkMetric as a projection of the observed pods: pure, no I/O.

On AKS, Advanced Container Networking Services runs Retina with the Hubble control plane, which
ignores ``retina.sh`` annotations; on Cilium node pools it selects the pods that get Hubble
metrics with one cluster-scoped ``ContainerNetworkMetric`` (``acn.azure.com/v1alpha1``), whose
``spec.filters[]`` entries each name a ``metric`` (flow, drop, tcp, dns) and lists of
``includeFilters``/``excludeFilters``, each filter with an optional ``name`` and ``from``/``to``
endpoints (``namespacedPod: ["ns/pod"]``, ``labelSelector``, ``ip``), ``protocol`` and
``verdict`` (MicrosoftDocs/azure-aks-docs, articles/aks/
how-to-configure-container-network-metrics-filtering.md at fb060abe, ms.date 10/30/2025).

The pods' own marks stay the truth (schedule, caps, restarts, ``status`` and ``release`` read
them); the object only mirrors them. :func:`project` computes the spec in which streamproc's own
include filters (named ``streamproc.io.<ns>.<Kind>.<name>.from|to``) are exactly those of the
pods observed now, one ``from`` and one ``to`` filter per workload and metric, so traffic the
pods send and receive both count. Everything else in the spec is the user's and is kept as it
is, object for object, in order: an entry streamproc adds its filters to keeps its other keys,
and an entry streamproc created is dropped once none of its filters are left (an entry needs at
least one include or exclude filter). One normalisation: an empty ``includeFilters: []`` beside
exclude filters, which means what no key means, may lose the empty list once streamproc's
filters left it; an entry or ``includeFilters`` that is not the documented shape is never
written to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamproc.model import conventions
from streamproc.model.topologies import METRICS, MetricName

#: ``ContainerNetworkMetric`` as ACNS serves it: one per cluster, cluster-scoped
GROUP, VERSION, PLURAL, KIND = (
    "acn.azure.com",
    "v1alpha1",
    "containernetworkmetrics",
    ("ContainerNetworkMetric"),
)
#: the name streamproc gives the singleton when the cluster has none (the docs' own)
DEFAULT_NAME = "container-network-metric"
#: on a singleton streamproc created: it may delete it again once no filter is left in it
CREATED_BY = f"{conventions.PREFIX}/created-by"
#: what streamproc's filters' names start with: everything else is the user's. No ``/``: the
#: docs give a filter's ``name`` as an optional string and no pattern (only ``namespacedPod``
#: entries get one, ``^.+$``; MicrosoftDocs/azure-aks-docs articles/aks/
#: how-to-configure-container-network-metrics-filtering.md at fb060abe, ms.date 10/30/2025), and
#: their one example is ``sample-filter``; ACNS may turn a name into a metric or object name
#: where ``/`` is not allowed, so the name sticks to dots, letters, digits and ``-``
#: (a namespace and a Kind hold no dot, so the name stays unique)
FILTER_PREFIX = f"{conventions.PREFIX}."
#: what the backend's first cut (unreleased) named them, ``streamproc.io/<ns>/<Kind>/<name>/from``:
#: still streamproc's, so a cluster that ran it gets them replaced, not left behind
LEGACY_PREFIX = f"{conventions.PREFIX}/"
#: the most pods the projection names in all: each appears in 2 filters per metric, and the
#: object must stay far below etcd's 1.5 MiB per object (2,000 pods x 8 x ~60 B is ~1 MiB)
MAX_PODS = 2000

Workload = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Observed:
    """One workload's pods under observation through the filters, and the metrics wanted."""

    pods: frozenset[str]
    metrics: frozenset[MetricName]


@dataclass(frozen=True, slots=True)
class Projection:
    """The spec to write, and what it holds of streamproc's."""

    spec: dict[str, Any]
    #: pods named in streamproc's filters
    pods: int
    #: pods left out because the projection would exceed ``MAX_PODS``
    left_out: int
    #: whether any filter is left in the spec at all, the user's or streamproc's
    any_filters: bool


def filter_name(workload: Workload, direction: str) -> str:
    """``streamproc.io.<ns>.<Kind>.<name>.from``: one filter's name, per workload and way."""
    namespace, kind, name = workload
    return f"{FILTER_PREFIX}{namespace}.{kind}.{name}.{direction}"


def ours(item: object) -> bool:
    """Whether a filter is streamproc's (its ``name`` starts with ``streamproc.io.``, or ``/``)."""
    if not isinstance(item, Mapping):
        return False
    name = item.get("name")
    return isinstance(name, str) and name.startswith((FILTER_PREFIX, LEGACY_PREFIX))


def merge(found: Iterable[tuple[Workload, str, Iterable[MetricName]]]) -> dict[Workload, Observed]:
    """(workload, pod, metrics) of each observed pod, as one :class:`Observed` per workload."""
    pods: dict[Workload, set[str]] = {}
    wanted: dict[Workload, set[MetricName]] = {}
    for workload, pod, metrics in found:
        if not pod:
            continue  # "ns/" would read as a pattern of the whole namespace, not a pod
        pods.setdefault(workload, set()).add(pod)
        wanted.setdefault(workload, set()).update(metrics)
    return {w: Observed(frozenset(pods[w]), frozenset(wanted[w])) for w in pods}


def _ours_by_metric(
    observed: Mapping[Workload, Observed],
) -> tuple[dict[str, list[dict[str, Any]]], int, int]:
    """Our include filters per metric, in a stable order; pods named, pods left out."""
    by_metric: dict[str, list[dict[str, Any]]] = {}
    named = left_out = 0
    for workload in sorted(observed):
        seen = observed[workload]
        room = max(0, MAX_PODS - named)
        pods = sorted(seen.pods)
        kept, left_out = pods[:room], left_out + max(0, len(pods) - room)
        if not kept:
            continue
        named += len(kept)
        listed = [f"{workload[0]}/{pod}" for pod in kept]
        for metric in METRICS:
            if metric in seen.metrics:
                by_metric.setdefault(metric, []).extend(
                    {"name": filter_name(workload, way), way: {"namespacedPod": list(listed)}}
                    for way in ("from", "to")
                )
    return by_metric, named, left_out


def _entry(
    entry: Mapping[str, Any], listed: list[Any], add: Sequence[dict[str, Any]]
) -> Mapping[str, Any] | None:
    """One ``spec.filters[]`` entry without streamproc's filters, plus ``add``; None: drop it.

    ``listed`` is its ``includeFilters``. An entry streamproc did not touch is returned as the
    very same object.
    """
    theirs = [f for f in listed if not ours(f)]
    if len(theirs) == len(listed) and not add:
        return entry
    new = dict(entry)
    if theirs or add:
        new["includeFilters"] = [*theirs, *add]
    else:
        new.pop("includeFilters", None)
    excludes = new.get("excludeFilters")
    if not new.get("includeFilters") and not (isinstance(excludes, list) and excludes):
        return None  # only streamproc's filters were in it: an entry needs at least one
    return new


def project(spec: object, observed: Mapping[Workload, Observed]) -> Projection | None:
    """The spec whose streamproc filters are exactly ``observed``'s; None if it is not a spec.

    ``spec`` is the object's ``spec`` as read (None when the object is new). A spec whose
    ``filters`` is not a list is not something streamproc can add to without guessing: None.
    """
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        return None
    entries = spec.get("filters", [])
    if not isinstance(entries, list):
        return None
    wanted, named, left_out = _ours_by_metric(observed)
    placed: set[str] = set()
    filters: list[Any] = []
    for entry in entries:
        includes = entry.get("includeFilters", []) if isinstance(entry, Mapping) else None
        if not isinstance(includes, list):
            filters.append(entry)  # not something to add to without guessing: left as it is
            continue
        metric = entry.get("metric")
        add: list[dict[str, Any]] = []
        if isinstance(metric, str) and metric in wanted and metric not in placed:
            add = wanted[metric]  # into the first entry of its metric; others lose theirs
            placed.add(metric)
        kept = _entry(entry, includes, add)
        if kept is not None:
            filters.append(kept)
    filters += [
        {"metric": m, "includeFilters": wanted[m]}
        for m in METRICS
        if m in wanted and m not in placed
    ]
    new = dict(spec)
    if filters or "filters" in spec:
        new["filters"] = filters
    return Projection(new, named, left_out, any_filters=any(_has_filters(e) for e in filters))


def _has_filters(entry: object) -> bool:
    if not isinstance(entry, Mapping):
        return True  # not ours to judge: kept, and the object with it
    return any(
        isinstance(entry.get(k), list) and entry.get(k)
        for k in ("includeFilters", "excludeFilters")
    )


def named_pods(spec: object) -> set[str]:
    """The ``ns/pod`` names in streamproc's filters of a spec (what the gauge counts)."""
    found: set[str] = set()
    entries = spec.get("filters") if isinstance(spec, Mapping) else None
    for entry in entries if isinstance(entries, list) else ():
        includes = entry.get("includeFilters") if isinstance(entry, Mapping) else None
        for item in includes if isinstance(includes, list) else ():
            if ours(item):
                for way in ("from", "to"):
                    endpoint = item.get(way)
                    pods = endpoint.get("namespacedPod") if isinstance(endpoint, Mapping) else None
                    # a string is not a list of names: its characters are not pods
                    listed = pods if isinstance(pods, list) else ()
                    found.update(p for p in listed if isinstance(p, str) and p)
    return found
