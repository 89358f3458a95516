"""Which platform the cluster is, and so which way of observing a pod works on it.

streamproc can select pods for network observation in two ways (``Settings.observation_backend``),
and which one works is a property of the cluster, not a preference:

- ``retina-annotation``: ``retina.sh: observe`` on the pod. Only Retina's Standard control plane
  reads it (microsoft/retina v1.2.6 ``docs/03-Metrics/annotations.md``: "only available in
  Standard Control Plane"; ``cmd/hubble`` has no annotation handling).
- ``acns-metric-filters``: include filters in the cluster's one ``ContainerNetworkMetric``
  (``acn.azure.com/v1alpha1``, cluster-scoped, preview, ~30 s to reconcile; CRD
  ``containernetworkmetrics.acn.azure.com``). AKS's Advanced Container Networking Services (ACNS)
  offer it on the Cilium dataplane only (MicrosoftDocs/azure-aks-docs at fb060abe,
  ``articles/aks/how-to-configure-container-network-metrics-filtering.md``, ms.date 10/30/2025;
  ``articles/aks/container-network-observability-metrics.md``: source-level filtering on Cilium
  clusters only).

On AKS without Cilium, ACNS runs Retina with the Hubble control plane and collects pod-level
metrics (``hubble_*``) for every pod or for none: no mechanism selects pods there.

The platform is told from what the API answers, every piece of it untrusted and any of it
possibly forbidden: the nodes' ``kubernetes.azure.com/*`` labels (AKS; ``use-labels.md``) and
``kubernetes.azure.com/ebpf-dataplane=cilium`` (Cilium), the agent DaemonSet's markers (label
``kubernetes.azure.com/managedby: aks``, ``core-aks-concepts.md``; an image from
``mcr.microsoft.com/containernetworking/``; args ``hubble-control-plane``, retina
``deploy/hubble/manifests/controller/helm/retina/values.yaml``; the flat ``enable-hubble`` and
``hubble-metrics-server`` keys of its ConfigMap, that chart's ``templates/agent/configmap.yaml``),
and discovery of ``acn.azure.com/v1alpha1`` (open to every authenticated identity). Only AKS's
label and image say AKS manages the agent. The ``kube-system/network-observability`` Service
(port ``hubble`` 9965) is no marker of AKS: OSS Retina ships it too (microsoft/retina 532c5aa2
``deploy/hubble/manifests/controller/helm/retina/templates/hubble/metrics-service.yaml``,
``deploy/standard/prometheus/network-observability/network-observability-svc.yaml``), so it
only corroborates a Hubble plane already seen. A marker that
cannot be read is left out; the judgement uses the ones seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streamproc.clients import kube
from streamproc.doctor import checks, retina
from streamproc.doctor.checks import Check
from streamproc.model import metric_filters as projection
from streamproc.model.topologies import ACNS, METRICS, Topology
from streamproc.settings import Settings

Json = dict[str, Any]
AREA = "Platform"
#: the ways a pod can be selected for observation; the first two are ``OBSERVATION_BACKENDS``
Mechanism = Literal["retina-annotation", "acns-metric-filters", "none"]
MECHANISMS: dict[Mechanism, str] = {
    "retina-annotation": "Retina annotation (retina.sh: observe, Standard control plane)",
    "acns-metric-filters": "ACNS ContainerNetworkMetric filters",
    "none": "none",
}
AKS_LABELS = "kubernetes.azure.com/"
DATAPLANE = "kubernetes.azure.com/ebpf-dataplane"
MANAGED_BY = "kubernetes.azure.com/managedby"
ACNS_IMAGES = "mcr.microsoft.com/containernetworking/"
CNM_GROUP, CNM_VERSION, CNM_PLURAL = "acn.azure.com", "v1alpha1", "containernetworkmetrics"
CNM_CRD = f"{CNM_PLURAL}.{CNM_GROUP}"
SERVICE = ("kube-system", "network-observability")
HUBBLE_PORT = 9965
#: where a person reads what works where
DOCS = "docs/aks.md"
OSS_INSTALL = (
    "disable ACNS observability (az aks update --disable-acns-observability; "
    "MicrosoftDocs/azure-aks-docs articles/aks/use-advanced-container-networking-services.md) "
    "and install OSS Retina with enableAnnotations=true, enablePodLevel=true (" + DOCS + ")"
)

ACNS_ENABLE = (
    "ContainerNetworkMetric filtering (preview) needs ACNS (az aks update --enable-acns) on "
    "Kubernetes >= 1.32 with the aks-preview CLI extension >= 20.0.0b4 (MicrosoftDocs/"
    "azure-aks-docs articles/aks/how-to-configure-container-network-metrics-filtering.md); "
    "then run with --observation-backend acns-metric-filters"
)


def _dict(value: object) -> Json:
    return value if isinstance(value, dict) else {}


def _labels(obj: object) -> dict[str, str]:
    labels = _dict(_dict(_dict(obj).get("metadata")).get("labels"))
    return {str(k): str(v) for k, v in labels.items()}


@dataclass(frozen=True, slots=True)
class Nodes:
    """What the nodes' labels say: how many there are, on AKS, on the Cilium dataplane."""

    total: int = 0
    aks: int = 0
    cilium: int = 0


def read_nodes(items: Sequence[object]) -> Nodes:
    """Count the AKS and Cilium nodes; anything that is not a Node object is skipped."""
    total = aks = cilium = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        labels = _labels(item)
        total += 1
        aks += any(k.startswith(AKS_LABELS) for k in labels)
        cilium += labels.get(DATAPLANE) == "cilium"
    return Nodes(total, aks, cilium)


def agent_markers(
    agent: retina.Agent, config_map: Json | None, service: Json | None
) -> tuple[list[str], list[str]]:
    """The markers seen: (managed by AKS, Hubble control plane), each as a person reads it."""
    managed, hubble = [], []
    if agent.labels.get(MANAGED_BY) == "aks":
        managed.append(f"label {MANAGED_BY}=aks")
    if agent.image.startswith(ACNS_IMAGES):
        managed.append(f"image {agent.image.rpartition(':')[0] or agent.image}")
    if "hubble-control-plane" in agent.args:
        hubble.append("args hubble-control-plane")
    data = _dict(_dict(config_map).get("data"))
    flat = [k for k in ("enable-hubble", "hubble-metrics-server") if k in data]
    if flat and str(data.get("enable-hubble", "true")).strip().lower() == "true":
        hubble.append(f"ConfigMap keys {', '.join(flat)}")
    ports = _dict(_dict(service).get("spec")).get("ports")
    if (
        hubble
        and isinstance(ports, list)
        and any(
            isinstance(p, dict) and p.get("name") == "hubble" and p.get("port") == HUBBLE_PORT
            for p in ports
        )
    ):
        # OSS Retina ships this very Service with both control planes (microsoft/retina at
        # 532c5aa2: deploy/hubble/manifests/controller/helm/retina/templates/hubble/
        # metrics-service.yaml, deploy/standard/prometheus/network-observability/
        # network-observability-svc.yaml): it tells neither AKS nor the plane, so it only
        # corroborates a Hubble plane the agent itself shows
        hubble.append(f"Service {'/'.join(SERVICE)} port hubble {HUBBLE_PORT}")
    return managed, hubble


@dataclass(frozen=True, slots=True)
class Platform:
    """What doctor learned of the cluster; None where it could not tell."""

    nodes: Nodes | None
    agent: retina.Agent | None = None
    #: markers that AKS manages the agent (ACNS or Azure Monitor), and of the Hubble control plane
    managed: tuple[str, ...] = ()
    hubble: tuple[str, ...] = ()
    #: ``containernetworkmetrics.acn.azure.com`` is served
    cnm: bool | None = None
    #: the DaemonSets could be listed, so ``agent`` None means there is none
    agents_read: bool = True

    @property
    def aks(self) -> bool | None:
        """On AKS: its nodes say so; only when they cannot be read, an AKS-managed agent does.

        ``managed`` holds only the strong markers (AKS's label, AKS's image registry): what OSS
        Retina also ships never makes a cluster AKS.
        """
        if self.nodes is not None:
            return self.nodes.aks > 0
        return True if self.managed else None

    @property
    def cilium(self) -> bool | None:
        """The Cilium dataplane (on some node at least)."""
        return None if self.nodes is None else self.nodes.cilium > 0

    def mechanisms(self) -> list[Mechanism]:
        """The ways of selecting pods that work here, the more specific first."""
        found: list[Mechanism] = []
        # ContainerNetworkMetric filters only act on Cilium (unknown nodes: trust the CRD)
        if self.cnm and self.cilium is not False:
            found.append("acns-metric-filters")
        if self.agent is not None and not self.hubble:
            found.append("retina-annotation")
        return found


def _platform_check(p: Platform, nodes_error: str) -> Check:
    if p.nodes is None:
        return checks.warn(
            AREA,
            "platform",
            f"cannot list nodes ({nodes_error}): AKS and its dataplane are told from node labels"
            + (", so only the agent's markers were used" if p.managed else ""),
            "run doctor with an identity that may list nodes (kubectl auth can-i list nodes)",
        )
    n = p.nodes
    if not n.aks:
        return checks.ok(AREA, "platform", f"not AKS (no node of {n.total} has {AKS_LABELS}*)")
    cilium = (
        f"Cilium dataplane on {n.cilium} of {n.total} nodes ({DATAPLANE}=cilium)"
        if n.cilium
        else f"no Cilium dataplane (no node has {DATAPLANE}=cilium)"
    )
    return checks.ok(
        AREA, "platform", f"AKS ({n.aks} of {n.total} nodes have {AKS_LABELS}* labels), {cilium}"
    )


def _agent_check(p: Platform) -> Check:
    agent = p.agent
    if agent is None:
        serves = "; on Cilium, Cilium's own Hubble serves ACNS's metrics" if p.cilium else ""
        return checks.ok(
            AREA, "Retina agent", f"none (no DaemonSet runs a retina-agent image){serves}"
        )
    owner = (
        "managed by AKS (ACNS)"
        if p.managed and p.hubble
        else "managed by AKS"
        if p.managed
        else "self-installed"
    )
    plane = "Hubble control plane" if p.hubble else "Standard control plane"
    seen = ", ".join([*p.managed, *p.hubble])
    return checks.ok(
        AREA, "Retina agent", f"{agent.where}: {plane}, {owner}" + (f" ({seen})" if seen else "")
    )


def _cnm_check(p: Platform) -> Check | None:
    if p.cnm is None:
        return checks.warn(
            AREA,
            "ContainerNetworkMetric CRD",
            f"discovery of {CNM_GROUP}/{CNM_VERSION} did not answer",
            f"check by hand: kubectl get crd {CNM_CRD}",
        )
    if not (p.aks or p.cilium or p.cnm):
        return None
    if p.cnm:
        return checks.ok(
            AREA,
            "ContainerNetworkMetric CRD",
            f"{CNM_CRD} served (preview; one per cluster; ~30 s to reconcile)",
        )
    return checks.ok(AREA, "ContainerNetworkMetric CRD", f"{CNM_CRD} not installed")


def _none_check(p: Platform) -> Check:
    """No mechanism works: why, and a fix that fits the platform."""
    name = "mechanism"
    if p.cilium and p.aks:
        return checks.fail(
            AREA,
            name,
            f"none: the Cilium dataplane, but {CNM_CRD} is not installed"
            + (" and no Retina agent runs" if p.agent is None else ""),
            ACNS_ENABLE
            + (
                "" if p.managed or p.agent is not None else f"; or install Retina: {retina.INSTALL}"
            ),
        )
    managed_hubble = p.agent is not None and p.hubble and p.managed
    if managed_hubble or (p.cnm and p.cilium is False):
        return checks.fail(
            AREA,
            name,
            "none: ACNS runs Retina with the Hubble control plane, which ignores retina.sh "
            "annotations (microsoft/retina docs/03-Metrics/annotations.md), and without the "
            "Cilium dataplane ACNS collects pod-level metrics for all pods or none: "
            "ContainerNetworkMetric filtering needs Cilium (MicrosoftDocs/azure-aks-docs "
            "articles/aks/container-network-observability-metrics.md)",
            f"pods cannot be selected on this cluster as it is; either {OSS_INSTALL}, or use a "
            "cluster with Azure CNI powered by Cilium and --observation-backend "
            "acns-metric-filters. Do not install a second Retina over the AKS-managed one",
        )
    if p.agent is not None and p.hubble:
        return checks.fail(
            AREA,
            name,
            f"none: {p.agent.where} runs Retina's Hubble control plane, which ignores retina.sh "
            "annotations (microsoft/retina docs/03-Metrics/annotations.md)",
            f"reinstall Retina with its Standard control plane: {retina.INSTALL}",
        )
    return checks.fail(
        AREA,
        name,
        "none: no Retina agent (a DaemonSet running a retina-agent image) in the cluster",
        f"install Retina >= v1.2.0 (Standard control plane): {retina.INSTALL}",
    )


def judge(p: Platform, backend: str, loaded: Sequence[Topology] | None = None) -> list[Check]:
    """The platform, its agent and CRD, the mechanisms that work, and each backend in use.

    The deployment's ``backend`` is judged when a topology uses it (or none is loaded); a
    topology's own ``spec.action.backend`` is judged on a line that names the topology.
    """
    found = [_agent_check(p)] if p.agents_read else []
    cnm = _cnm_check(p)
    if cnm is not None:
        found.append(cnm)
    works = p.mechanisms()
    if not works and not p.agents_read:
        return [
            *found,
            checks.warn(
                AREA,
                "mechanism",
                "cannot tell: the DaemonSets (Retina's agent is one) could not be listed",
                "run doctor with an identity that may list daemonsets",
            ),
        ]
    if not works:
        return [*found, _none_check(p)]
    found.append(
        checks.ok(AREA, "mechanism", "works here: " + "; ".join(MECHANISMS[m] for m in works))
    )
    n = p.nodes
    if "acns-metric-filters" in works and n is not None and 0 < n.cilium < n.total:
        found.append(
            checks.warn(
                AREA,
                "node pools",
                f"{n.total - n.cilium} of {n.total} nodes are not on the Cilium dataplane: "
                "ContainerNetworkMetric filters select no pod there (source-level filtering is "
                "Cilium's), so observations of pods on those nodes yield no Hubble metrics",
                "run the workloads to observe on Cilium node pools, or move the node pools to "
                "Azure CNI powered by Cilium",
            )
        )
    users = _backends(backend, loaded)
    if users is None or "" in users.get(backend, ()):
        found.append(_backend_check(p, works, backend, None))
    else:
        found.append(
            checks.ok(
                AREA,
                "backend",
                f"--observation-backend {backend} is used by no topology (each chooses its own "
                "spec.action.backend)",
            )
        )
    found += [
        _backend_check(p, works, chosen, name)
        for chosen, names in sorted((users or {}).items())
        for name in sorted(n for n in names if n)
    ]
    return found


def _backends(default: str, loaded: Sequence[Topology] | None) -> dict[str, set[str]] | None:
    """Each effective backend and the topologies using it ("" for the deployment's default).

    None without topologies: only the deployment's setting can be judged.
    """
    if not loaded:
        return None
    users: dict[str, set[str]] = {}
    for topology in loaded:
        action = topology.spec.action
        users.setdefault(action.observed_through(default), set()).add(
            topology.name if action.backend is not None else ""
        )
    return users


def _backend_check(
    p: Platform, works: list[Mechanism], backend: str, topology: str | None
) -> Check:
    """Whether one backend works here, named as set: the deployment's flag or a topology's field."""
    what = (
        f"--observation-backend {backend}"
        if topology is None
        else f"topology {topology}: spec.action.backend {backend}"
    )
    if backend in works:
        return checks.ok(AREA, _backend_name(topology), f"{what} is one that works here")
    why = (
        "ACNS's Hubble control plane ignores retina.sh annotations"
        if backend == "retina-annotation" and p.hubble
        else "no Retina agent reads retina.sh annotations"
        if backend == "retina-annotation"
        else f"{CNM_CRD} is not served on a Cilium cluster"
    )
    fix = (
        f"set --observation-backend {works[0]} (STREAMPROC_OBSERVATION_BACKEND)"
        if topology is None
        else f"set spec.action.backend: {works[0]} in topology {topology}"
    )
    return (checks.fail if p.agents_read else checks.warn)(
        AREA,
        _backend_name(topology),
        f"{what}, but {why}: on this cluster only {MECHANISMS[works[0]]} select pods",
        fix,
    )


def _backend_name(topology: str | None) -> str:
    return "backend" if topology is None else f"backend of {topology}"


async def survey(
    client: kube.Inspector,
    settings: Settings,
    agents: Sequence[retina.Agent] | None,
    loaded: Sequence[Topology] | None = None,
) -> tuple[list[Check], Platform]:
    """Read what tells the platform (each read may fail alone), then judge it.

    ``agents`` None: the DaemonSets could not be listed, so whether Retina runs is unknown.
    """
    nodes: Nodes | None = None
    nodes_error = ""
    try:
        nodes = read_nodes(await client.list_nodes())
    except (kube.KubeError, ValueError, AttributeError) as exc:
        nodes_error = str(exc)
    try:
        served = await client.served_resources(CNM_GROUP, CNM_VERSION)
        cnm: bool | None = served is not None and CNM_PLURAL in served
    except (kube.KubeError, ValueError, AttributeError):
        cnm = None
    agent = agents[0] if agents else None
    managed: list[str] = []
    hubble: list[str] = []
    if agent is not None:
        config_map = await _optional(
            client.get_config_map(agent.namespace, agent.config_maps[0])
            if agent.config_maps
            else None
        )
        service = await _optional(client.get_service(*SERVICE))
        managed, hubble = agent_markers(agent, config_map, service)
    found = Platform(nodes, agent, tuple(managed), tuple(hubble), cnm, agents is not None)
    judged = judge(found, settings.observation_backend, loaded)
    metrics = filter_metrics(settings.observation_backend, loaded)
    if cnm and metrics:
        try:
            objects: list[Json] | None = await client.list_cluster_objects(
                CNM_GROUP, CNM_VERSION, CNM_PLURAL
            )
        except (kube.KubeError, ValueError, AttributeError):
            objects = None
        narrowed = narrowing(objects, metrics)
        if narrowed is not None:
            judged.append(narrowed)
    return [_platform_check(found, nodes_error), *judged], found


def filter_metrics(default: str, loaded: Sequence[Topology] | None) -> set[str]:
    """The Hubble metrics streamproc will add include filters for (none: not that backend)."""
    if not loaded:
        return set(METRICS) if default == ACNS else set()
    return {m for t in loaded for m in t.spec.action.filter_metrics(default)}


def narrowing(objects: Sequence[object] | None, metrics: set[str]) -> Check | None:
    """⚠ when streamproc's include filters would narrow what ACNS collects; None otherwise.

    ACNS collects every pod's metrics without a ContainerNetworkMetric, so creating one narrows
    them to the included pods; and an entry with only exclude filters ("all pods but these")
    becomes "only streamproc's pods" once include filters join it (MicrosoftDocs/azure-aks-docs
    fb060abe how-to-configure-container-network-metrics-filtering.md). ``objects`` None: the
    objects could not be listed, nothing to say.
    """
    if objects is None:
        return None
    named = sorted((o for o in objects if isinstance(o, dict) and _name(o)), key=_name)
    chosen = [o for o in named if _name(o) == projection.DEFAULT_NAME] or named
    if not chosen:
        return checks.warn(
            AREA,
            "metric filters",
            "no ContainerNetworkMetric yet: streamproc creates one at the first observation, and "
            "from then on ACNS collects Hubble pod metrics only for the pods observed (today it "
            "collects them for every pod), until the last observation ends",
            f"read 'Read before turning it on' in {DOCS}; create a ContainerNetworkMetric "
            "yourself first if others rely on these metrics",
        )
    spec = _dict(chosen[0].get("spec"))
    entries = spec.get("filters")
    exclude_only = sorted(
        {
            str(e.get("metric"))
            for e in (entries if isinstance(entries, list) else ())
            if isinstance(e, dict)
            and e.get("metric") in metrics
            and isinstance(e.get("excludeFilters"), list)
            and e.get("excludeFilters")
            and not [f for f in e.get("includeFilters") or () if not projection.ours(f)]
        }
    )
    if not exclude_only:
        return None
    return checks.warn(
        AREA,
        "metric filters",
        f"ContainerNetworkMetric {_name(chosen[0])}: the {', '.join(exclude_only)} "
        f"entr{'y has' if len(exclude_only) == 1 else 'ies have'} exclude filters only (every "
        "pod but those); while streamproc's include filters are in it, only the observed pods' "
        "metrics are collected there",
        f"read 'Read before turning it on' in {DOCS}; to keep the other pods' metrics, add an "
        "include filter of your own that selects them",
    )


def _name(obj: Json) -> str:
    name = _dict(obj.get("metadata")).get("name")
    return name if isinstance(name, str) else ""


async def _optional(read: Any) -> Json | None:
    """A marker's object, or None when it is missing, forbidden or not an object."""
    if read is None:
        return None
    try:
        doc = await read
    except (kube.KubeError, ValueError, AttributeError):
        return None
    return doc if isinstance(doc, dict) else None


def managed_fix(check: Check, p: Platform) -> Check:
    """A Retina check's fix, made safe for an agent AKS manages: never a second install over it."""
    if not p.managed or not check.fix or ("helm" not in check.fix and "ConfigMap" not in check.fix):
        return check
    return checks.Check(
        check.area,
        check.name,
        check.status,
        check.detail,
        f"{p.agent.where if p.agent else 'the agent'} is managed by AKS, which owns its "
        f"configuration: do not change it or install a second Retina over it ({DOCS})",
    )
