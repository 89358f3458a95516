"""What is under observation now, read from the cluster, and ending an observation early.

Both read the pods' own marks (the ``streamproc.io/observed`` label and the bookkeeping
annotations), so they answer the same way whichever process, or none, is running. Marks are
read through ``marking.read``: refused ones (a tenant's edit) are not shown as an observation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from streamproc.clients import kube
from streamproc.cluster import marking, metric_filters, releasing
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.model import conventions, marks
from streamproc.model.topologies import Topology


@dataclass
class Observation:
    """One workload under observation."""

    namespace: str
    kind: str
    workload: str
    topology: str
    rule: str
    expires_at: float
    pods: list[str] = field(default_factory=list)
    #: the node each pod runs on (Retina's per-node filter map holds their IPs)
    nodes: list[str] = field(default_factory=list)
    #: the escalation level, "3/4" (empty for a topology without a ladder)
    level: str = ""
    #: when its pods' observation opened (the earliest ``observed-since``); None when a pod's
    #: marks predate it
    since: float | None = None
    #: each pod's own start (same order as ``pods``): a pod followed later starts later
    starts: list[float | None] = field(default_factory=list)

    @property
    def expires_in(self) -> float:
        """Seconds left (negative when overdue)."""
        return self.expires_at - time.time()

    def as_dict(self) -> dict[str, object]:
        """JSON form for ``status --output json``."""
        return {
            **asdict(self),
            "since": conventions.format_time(self.since) if self.since is not None else None,
            "starts": [conventions.format_time(s) if s is not None else None for s in self.starts],
            "expires_at": conventions.format_time(self.expires_at),
            "expires_in_s": round(self.expires_in),
        }


async def current(
    client: kube.Kube, resolver: WorkloadResolver, policy: marks.Policy | None = None
) -> list[Observation]:
    """Every workload with at least one pod carrying streamproc's observation, latest expiry."""
    policy = policy or marks.Policy()
    now = time.time()
    pods = await client.list_pods(None, label_selector=f"{conventions.OBSERVED_LABEL}=true")
    found: dict[tuple[str, str, str], Observation] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        read = marking.read(pod, now=now, policy=policy)
        if not isinstance(read, marks.Marks):
            continue  # refused: not streamproc's observation (the expirer ends it)
        ref = await resolver.workload_of(pod)
        key = (ref.namespace, ref.kind, ref.name)
        until = read.until
        entry = found.setdefault(
            key,
            Observation(
                ref.namespace,
                ref.kind,
                ref.name,
                read.topology,
                read.rule,
                until,
                level=read.level,
                since=read.since,
            ),
        )
        if entry.pods and (entry.since is None or read.since is None):
            entry.since = None  # one pod's start unknown: the observation's start is unknown
        elif read.since is not None and entry.since is not None:
            entry.since = min(entry.since, read.since)
        entry.pods.append(str(meta.get("name", "")))
        entry.starts.append(read.since)
        entry.nodes.append(str((pod.get("spec") or {}).get("nodeName") or ""))
        entry.expires_at = max(entry.expires_at, until)
    selector = f"{conventions.OBSERVED_LABEL}=true"
    for namespace in await client.list_observed_namespaces(selector):
        name = str((namespace.get("metadata") or {}).get("name", ""))
        read = marking.read(namespace, now=now, policy=policy)
        if isinstance(read, marks.Marks):
            found[(name, "Namespace", name)] = Observation(
                name, "Namespace", name, read.topology, read.rule, read.until, level=read.level
            )
    return sorted(found.values(), key=lambda o: (o.namespace, o.kind, o.workload))


async def find(
    client: kube.Kube,
    resolver: WorkloadResolver,
    workload: tuple[str, str | None, str],
    policy: marks.Policy | None = None,
) -> Observation | None:
    """The observation of one workload (namespace, kind or None for any, name), if it has one."""
    namespace, kind, name = workload
    for observation in await current(client, resolver, policy):
        if (observation.namespace, observation.workload) == (namespace, name) and (
            kind is None or observation.kind == kind
        ):
            return observation
    return None


async def release(
    client: kube.Kube,
    resolver: WorkloadResolver,
    namespace: str,
    kind: str | None,
    name: str,
    policy: marks.Policy | None = None,
) -> tuple[list[str], str | None]:
    """End a workload's observation now: remove exactly what streamproc added.

    Returns the pods released and the kind of the workload found under observation (None
    when none was). Without a ``policy`` (no topologies loaded) every owned key goes, whatever
    its value now; with one, a key a person changed stays.
    """
    released = []
    found = None
    for observation in await current(client, resolver, policy):
        if (observation.namespace, observation.workload) != (namespace, name):
            continue
        if kind is not None and observation.kind != kind:
            continue
        found = observation.kind
        targets = (
            [kube.ObjectRef.namespace_object(name)]
            if observation.kind == "Namespace"
            else [kube.ObjectRef.pod(namespace, pod) for pod in observation.pods]
        )
        for ref in targets:
            done = await releasing.release(client, ref, policy=policy)
            if done.outcome == "released":
                released.append(ref.name)
    return released, found


async def project_filters(
    client: kube.Kube,
    topologies: Sequence[Topology],
    default_backend: str,
    policy: marks.Policy,
) -> metric_filters.Written | None:
    """Reconcile ACNS's ContainerNetworkMetric once, if a topology observes through it.

    ``release`` calls it after removing the pods' marks: the filters follow the marks, so the
    released pods leave the filters now, not at the annotator's next reconciliation.
    """
    wanted = metric_filters.metrics_of(topologies, default_backend)
    if not wanted:
        return None
    # the API server's clock, as the expirer's: a host clock behind it would keep expired pods
    return await metric_filters.sync(client, wanted, policy=policy, now=client.now())


def per_node(found: list[Observation]) -> dict[str, int]:
    """Observed pods per node, busiest first (what Retina's filter map on each node holds)."""
    counts: dict[str, int] = {}
    for observation in found:
        for node in observation.nodes:
            if node:
                counts[node] = counts.get(node, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
