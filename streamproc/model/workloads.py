"""Which workload a pod belongs to: the unit streamproc windows, deduplicates and observes.

A workload is namespace + owner kind + owner name, following the controller chain the way
``kubectl`` users think of it: Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob,
Pod -> StatefulSet, Pod -> DaemonSet, or the bare Pod. There are three ways to find it, in order
of trust, and every WorkloadRef records which one was used:

``owner-fields``  the detection carries k8smeta owner fields;
``api``           the pod's ownerReferences (and its ReplicaSet's or Job's) read from the cluster;
``name-shape``    the pod name's shape (``web-7d4b9c8f5-x2x7k`` is Deployment ``web``).

This module has the rules only; the API reads live in ``kube``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job", "Pod"]
ResolvedBy = Literal["owner-fields", "api", "name-shape"]
WORKLOAD_KINDS: tuple[Kind, ...] = (
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "CronJob",
    "Job",
    "Pod",
)

# Kubernetes' rand.SafeEncodeString alphabet: pod-template-hash and generated suffixes use it.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_DEPLOYMENT_POD = re.compile(rf"(?P<name>.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}")
_CRONJOB_POD = re.compile(rf"(?P<name>.+)-\d{{8,10}}-{_SAFE}{{5}}")
_STATEFULSET_POD = re.compile(r"(?P<name>.+)-\d+")
_REPLICASET = re.compile(rf"(?P<name>.+)-{_SAFE}{{6,10}}")
#: a name a controller generated (``generateName`` plus five characters): a DaemonSet's or Job's
_GENERATED_POD = re.compile(rf"(?P<name>.+)-{_SAFE}{{5}}")


@dataclass(frozen=True, slots=True)
class WorkloadRef:
    """Identity of one workload; ``key`` is its stable string form on Kafka."""

    namespace: str
    kind: Kind
    name: str
    resolved_by: ResolvedBy

    @property
    def key(self) -> str:
        """``namespace/Kind/name``: the Kafka key, so a workload stays on one partition."""
        return f"{self.namespace}/{self.kind}/{self.name}"


def in_cluster(cluster: str, key: str) -> str:
    """A workload key made unique across a fleet: ``cluster:key`` (unchanged without a cluster).

    Names of clusters, topologies and namespaces are DNS-1123 labels, so ``:`` never occurs in
    them and the key splits back unambiguously (``cluster_of``).
    """
    return f"{cluster}:{key}" if cluster else key


def cluster_of(key: str) -> tuple[str, str]:
    """(cluster, key without it) of a key made by ``in_cluster``."""
    cluster, found, rest = key.partition(":")
    return (cluster, rest) if found else ("", key)


def from_owner_fields(
    namespace: str, pod: str, owners: tuple[tuple[str, str], ...]
) -> WorkloadRef | None:
    """Use explicit owner fields; a ReplicaSet alone names its Deployment by shape."""
    found = dict(owners)
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job"):
        if kind in found:
            return WorkloadRef(namespace, kind, found[kind], "owner-fields")
    if "ReplicaSet" in found:
        match = _REPLICASET.fullmatch(found["ReplicaSet"])
        if match:
            return WorkloadRef(namespace, "Deployment", match["name"], "owner-fields")
    del pod
    return None


def from_owner_chain(
    namespace: str,
    pod: str,
    owner: tuple[str, str] | None,
    grand_owner: tuple[str, str] | None,
) -> WorkloadRef:
    """Apply the controller chain read from the API (pod's controller and that one's controller)."""
    if owner is None:
        return WorkloadRef(namespace, "Pod", pod, "api")
    kind, name = owner
    if kind == "ReplicaSet":
        if grand_owner is not None and grand_owner[0] == "Deployment":
            return WorkloadRef(namespace, "Deployment", grand_owner[1], "api")
        return WorkloadRef(namespace, "Pod", pod, "api")
    if kind == "Job":
        if grand_owner is not None and grand_owner[0] == "CronJob":
            return WorkloadRef(namespace, "CronJob", grand_owner[1], "api")
        return WorkloadRef(namespace, "Job", name, "api")
    if kind in ("StatefulSet", "DaemonSet"):
        return WorkloadRef(namespace, kind, name, "api")  # type: ignore[arg-type]
    # Owned by something streamproc does not model (a custom controller): observe the pod.
    return WorkloadRef(namespace, "Pod", pod, "api")


def from_name_shape(namespace: str, pod: str) -> WorkloadRef:
    """Last resort: guess from the name; an ambiguous shape falls back to the pod itself."""
    if match := _CRONJOB_POD.fullmatch(pod):
        return WorkloadRef(namespace, "CronJob", match["name"], "name-shape")
    if match := _DEPLOYMENT_POD.fullmatch(pod):
        return WorkloadRef(namespace, "Deployment", match["name"], "name-shape")
    if match := _STATEFULSET_POD.fullmatch(pod):
        return WorkloadRef(namespace, "StatefulSet", match["name"], "name-shape")
    # ``name-xxxxx`` is a DaemonSet's or a Job's pod; the name cannot tell which.
    return WorkloadRef(namespace, "Pod", pod, "name-shape")


def is_ambiguous(ref: WorkloadRef) -> bool:
    """A bare Pod by name shape whose name a DaemonSet or a Job could have generated.

    The name cannot tell (``node-exporter-nsxsp``): such a pod may well be one of many of a
    DaemonSet, so ``simulate`` flags it rather than count each pod as a workload of its own.
    """
    return (
        ref.resolved_by == "name-shape"
        and ref.kind == "Pod"
        and _GENERATED_POD.fullmatch(ref.name) is not None
    )


def parent_kind(kind: str) -> str | None:
    """The controller kind whose owner decides the workload (ReplicaSet -> Deployment, ...)."""
    return {"ReplicaSet": "Deployment", "Job": "CronJob"}.get(kind)
