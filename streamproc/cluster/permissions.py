"""The Kubernetes permissions each stage uses: one list for the code, the RBAC, the docs and doctor.

``k8s/rbac.yaml`` grants exactly these (a test compares them), docs/deploying.md's table is
rendered from them (a test compares that too), a test measures the requests each stage really
makes at the emulated API server and finds each one here, and ``streamproc doctor`` asks the
API server about every one with a SelfSubjectAccessReview. A permission a stage starts to use
is added here once, and every one of those places follows or fails.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Permission:
    """One (API group, resource, verb) a stage needs, and why."""

    group: str
    resource: str
    verb: str
    why: str
    #: a topology feature that needs it (``capture``, ``namespace scope``); None: always needed
    feature: str | None = None

    @property
    def label(self) -> str:
        """As ``kubectl auth can-i`` names it: ``patch pods``, ``create captures.retina.sh``."""
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {resource}"


_RESOLVE = (
    Permission("", "pods", "get", "find the workload that owns a detected pod"),
    Permission("", "pods", "list", "the cluster cache's list of pods; a workload's pods"),
    Permission("", "pods", "watch", "keep the cluster cache current; follow new pods"),
    Permission("apps", "replicasets", "get", "follow a ReplicaSet to its Deployment"),
    Permission("apps", "replicasets", "list", "the cluster cache's ReplicaSets"),
    Permission("apps", "replicasets", "watch", "keep the cluster cache's ReplicaSets current"),
    Permission("batch", "jobs", "get", "follow a Job to its CronJob"),
    Permission("batch", "jobs", "list", "the cluster cache's Jobs"),
    Permission("batch", "jobs", "watch", "keep the cluster cache's Jobs current"),
)

#: stage -> what it needs; the windows stage talks only to Kafka.
STAGES: dict[str, tuple[Permission, ...]] = {
    "ingest": _RESOLVE,
    "windows": (),
    "annotate": (
        *_RESOLVE,
        Permission("", "pods", "patch", "write and remove the Retina annotation"),
        Permission("", "events", "create", "record ObservationStarted/Expired Events"),
        Permission("retina.sh", "captures", "create", "start a Retina packet capture", "capture"),
        Permission("", "namespaces", "get", "observe a whole namespace", "namespace scope"),
        Permission("", "namespaces", "list", "resync observed namespaces", "namespace scope"),
        Permission("", "namespaces", "patch", "annotate a namespace", "namespace scope"),
    ),
}

#: what ``streamproc doctor`` reads beyond the stages' own (it runs as a person's identity, not
#: a deployed account, so k8s/rbac.yaml grants none of these); a missing one is a ⚠ line saying
#: what could not be checked, never a failure (a test finds every request doctor makes here)
DOCTOR: tuple[Permission, ...] = (
    Permission("apps", "daemonsets", "list", "find Retina's agent, wherever it was installed"),
    Permission("", "configmaps", "get", "read the agent's configuration"),
    Permission("apps", "deployments", "list", "find Retina's operator"),
    Permission(
        "retina.sh", "metricsconfigurations", "list", "MetricsConfigurations exclude annotations"
    ),
    Permission("", "nodes", "list", "tell AKS and its dataplane from the nodes' labels"),
    Permission("", "services", "get", "ACNS's kube-system/network-observability Service"),
    Permission(
        "acn.azure.com",
        "containernetworkmetrics",
        "list",
        "warn when streamproc's include filters would narrow what ACNS collects",
    ),
)


#: the ``acns-metric-filters`` backend's feature name (``Permission.feature``)
ACNS_FEATURE = "acns-metric-filters"
_CNM = ("acn.azure.com", "containernetworkmetrics")

#: stage -> permissions granted only where they are used (opt in): the annotator's writes of
#: ACNS's one ContainerNetworkMetric, for the ``acns-metric-filters`` backend. k8s/rbac.yaml
#: leaves them out; the kustomize component ``k8s/components/acns-metric-filters`` grants them.
OPT_IN: dict[str, tuple[Permission, ...]] = {
    "annotate": (
        Permission(*_CNM, "get", "read ACNS's ContainerNetworkMetric", ACNS_FEATURE),
        Permission(*_CNM, "list", "find the cluster's one ContainerNetworkMetric", ACNS_FEATURE),
        Permission(*_CNM, "create", "create it when the cluster has none", ACNS_FEATURE),
        Permission(*_CNM, "update", "write streamproc's include filters into it", ACNS_FEATURE),
        Permission(
            *_CNM, "delete", "delete it again once the one it created is empty", ACNS_FEATURE
        ),
    ),
}


def rules(stage: str, *, opt_in: bool = False) -> list[dict[str, list[str]]]:
    """A stage's permissions as RBAC rules, one per (group, resource), verbs in order."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for p in (*STAGES[stage], *(OPT_IN.get(stage, ()) if opt_in else ())):
        grouped.setdefault((p.group, p.resource), []).append(p.verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": verbs}
        for (group, resource), verbs in grouped.items()
    ]


def markdown() -> str:
    """The RBAC table of docs/deploying.md (running this module prints it)."""
    lines = ["| stage | permission | why |", "|---|---|---|"]
    for stage, needed in STAGES.items():
        if not needed:
            lines.append(f"| {stage} | none (Kafka only; no token mounted) | |")
        for p in needed:
            when = f" (topologies with {p.feature})" if p.feature else ""
            lines.append(f"| {stage} | `{p.label}` | {p.why}{when} |")
        lines.extend(
            f"| {stage} | `{p.label}` | {p.why} (opt in: backend {p.feature}) |"
            for p in OPT_IN.get(stage, ())
        )
    return "\n".join(lines)


def doctor_markdown() -> str:
    """The table of what doctor reads beyond the stages' permissions (docs/operating.md)."""
    lines = ["| doctor reads | why |", "|---|---|"]
    lines += [f"| `{p.label}` | {p.why} |" for p in DOCTOR]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())  # noqa: T201 - the docs' tables, for pasting
    print()  # noqa: T201
    print(doctor_markdown())  # noqa: T201
