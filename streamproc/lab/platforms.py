"""The platforms streamproc meets, as the objects their API servers hold: for the lab and tests.

Each shape is what ``streamproc doctor`` tells apart (``doctor/platform.py``), built from what the
sources describe:

- ``retina``: any cluster with Retina's Standard control plane installed from its chart
  (``ClusterBuilder.retina``), nodes without AKS labels;
- ``aks-retina``: AKS (nodes labelled ``kubernetes.azure.com/*``: MicrosoftDocs/azure-aks-docs
  ``articles/aks/use-labels.md``) with the same self-installed Retina;
- ``aks-acns``: AKS with Advanced Container Networking Services on Azure CNI: AKS's own
  ``kube-system/retina-agent`` (label ``kubernetes.azure.com/managedby: aks``,
  ``core-aks-concepts.md``) running the Hubble control plane as microsoft/retina v1.2.6's
  ``deploy/hubble/manifests/controller/helm/retina/`` renders it (args ``hubble-control-plane
  --config-dir /retina/config``; ConfigMap ``retina-config`` with flat ``enable-hubble`` and
  ``hubble-metrics-server`` keys beside ``config.yaml``), and the ``kube-system/
  network-observability`` Service (port ``hubble`` 9965, retina ``deploy/standard/prometheus/
  network-observability/network-observability-svc.yaml``);
- ``aks-acns-cilium``: AKS with ACNS on the Cilium dataplane (nodes labelled
  ``kubernetes.azure.com/ebpf-dataplane=cilium``): Cilium's Hubble serves the pod metrics, and
  the ``containernetworkmetrics.acn.azure.com`` CRD selects pods (MicrosoftDocs/azure-aks-docs
  at fb060abe, ``articles/aks/how-to-configure-container-network-metrics-filtering.md``). With
  ``user_filters``, the cluster's one ContainerNetworkMetric already holds a filter of the
  user's own: that page's first example, a dns exclude of ``kube-system/coredns``.

The image tags of AKS's managed components are illustrative: AKS chooses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml

from streamproc.lab.cluster import NODES, RETINA_VERSION, ClusterBuilder, host_ip, sample_cluster
from streamproc.model import metric_filters as projection

if TYPE_CHECKING:  # the emulator needs the lab's extra; naming the platforms must not
    from streamproc.lab.kubeemu import KubeEmulator

Json = dict[str, Any]
PlatformName = Literal["retina", "aks-retina", "aks-acns", "aks-acns-cilium"]
PLATFORMS: tuple[PlatformName, ...] = get_args(PlatformName)
#: the platforms whose ContainerNetworkMetric selects pods (the lab shows its filters)
METRIC_FILTERS: frozenset[PlatformName] = frozenset({"aks-acns-cilium"})
#: the observation backend the lab runs each platform with (doctor says which works where)
BACKENDS: dict[PlatformName, str] = {
    "retina": "retina-annotation",
    "aks-retina": "retina-annotation",
    "aks-acns": "retina-annotation",
    "aks-acns-cilium": "acns-metric-filters",
}
#: the ContainerNetworkMetric's group and resource, which the emulator serves only when the CRD
#: is installed (``KubeEmulator.uninstalled``)
CNM = ("acn.azure.com", "containernetworkmetrics")
CNM_NAME = "container-network-metric"
AKS_CLUSTER = "MC_streamproc-lab_aks_eastus2"
MANAGED = {"kubernetes.azure.com/managedby": "aks"}
#: the Hubble chart's config.yaml values (retina v1.2.6 deploy/hubble/.../values.yaml)
HUBBLE_CONFIG: Json = {
    "apiServer": {"host": "0.0.0.0", "port": 10093},  # noqa: S104 - the chart's default
    "logLevel": "info",
    "enabledPlugin": ["linuxutil", "packetforward", "packetparser", "dns", "dropreason"],
    "metricsIntervalDuration": "10s",
    "enableTelemetry": False,
    "enablePodLevel": True,
    "remoteContext": False,
    "enableAnnotations": False,
    "bypassLookupIPOfInterest": True,
    "dataAggregationLevel": "high",
}


@dataclass
class Shape:
    """A platform's objects, and the custom resources its API server does not serve."""

    name: PlatformName
    builder: ClusterBuilder
    uninstalled: set[tuple[str, str]] = field(default_factory=set)

    def load(self, emulator: KubeEmulator) -> None:
        """Put the shape into an emulator (before it serves, or while it does)."""
        for obj in self.builder.objects:
            emulator.create(obj)
        emulator.uninstalled |= self.uninstalled


def nodes(builder: ClusterBuilder, *, aks: bool, cilium: bool = False) -> None:
    """The cluster's nodes (``NODES``), Ready, with AKS's labels when ``aks``."""
    for index, node in enumerate(NODES):
        labels = {
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
        }
        if aks:
            labels |= {
                "kubernetes.azure.com/agentpool": "nodepool1",
                "kubernetes.azure.com/cluster": AKS_CLUSTER,
                "kubernetes.azure.com/mode": "system",
                "kubernetes.azure.com/os-sku": "Ubuntu",
                "kubernetes.azure.com/role": "agent",
            }
        if cilium:
            labels["kubernetes.azure.com/ebpf-dataplane"] = "cilium"
        builder.objects.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": labels, "uid": f"uid-node-{index}"},
                "spec": {"podCIDR": f"10.244.{index}.0/24"},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": host_ip(node)},
                        {"type": "Hostname", "address": node},
                    ],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                    "nodeInfo": {
                        "kubeletVersion": "v1.33.2",
                        "osImage": "Ubuntu 22.04.5 LTS",
                        "containerRuntimeVersion": "containerd://1.7.27",
                    },
                },
            }
        )


def network_observability_service(builder: ClusterBuilder) -> None:
    """ACNS's metrics Service: Hubble's metrics on 9965 (and Retina's own on 10093)."""
    builder.objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "network-observability",
                "namespace": "kube-system",
                "labels": dict(MANAGED),
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "10.0.91.17",
                "ports": [
                    {"name": "hubble", "protocol": "TCP", "port": 9965, "targetPort": 9965},
                    {"name": "retina", "protocol": "TCP", "port": 10093, "targetPort": 10093},
                ],
            },
        }
    )


def acns_retina(builder: ClusterBuilder, cluster: str = "aks") -> None:
    """AKS's own Retina agent with the Hubble control plane, its ConfigMap and Service."""
    namespace = "kube-system"
    flat = {
        "leader-election": "false",
        "cluster-name": cluster,
        "enable-hubble": "true",
        "hubble-socket-path": "/var/run/cilium/hubble.sock",
        "hubble-metrics-server": ":9965",
        "hubble-metrics": "flow:sourceEgressContext=pod;destinationIngressContext=pod "
        "tcp:sourceEgressContext=pod;destinationIngressContext=pod "
        "dns:query;sourceEgressContext=pod;destinationIngressContext=pod "
        "drop:sourceEgressContext=pod;destinationIngressContext=pod",
        "enable-hubble-open-metrics": "false",
    }
    builder.namespace(namespace)
    builder.objects.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "retina-config", "namespace": namespace, "labels": dict(MANAGED)},
            "data": {**flat, "config.yaml": yaml.safe_dump(HUBBLE_CONFIG, sort_keys=False)},
        }
    )
    builder.agent_daemonset(
        namespace,
        "retina-agent",
        {"k8s-app": "retina", **MANAGED},
        {
            "name": "retina",
            "image": f"mcr.microsoft.com/containernetworking/retina-agent:{RETINA_VERSION}",
            "args": ["hubble-control-plane", "--config-dir", "/retina/config"],
        },
        [{"name": "config", "configMap": {"name": "retina-config"}}],
    )
    network_observability_service(builder)


def cnm_crd() -> Json:
    """The ContainerNetworkMetric CRD as the docs' object implies it: cluster-scoped, v1alpha1."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "containernetworkmetrics.acn.azure.com", "labels": dict(MANAGED)},
        "spec": {
            "group": "acn.azure.com",
            "scope": "Cluster",
            "names": {
                "kind": "ContainerNetworkMetric",
                "listKind": "ContainerNetworkMetricList",
                "plural": "containernetworkmetrics",
                "singular": "containernetworkmetric",
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def user_metric() -> Json:
    """The user's own ContainerNetworkMetric: the docs' basic DNS filter (coredns excluded)."""
    return {
        "apiVersion": "acn.azure.com/v1alpha1",
        "kind": "ContainerNetworkMetric",
        "metadata": {"name": CNM_NAME},
        "spec": {
            "filters": [
                {
                    "metric": "dns",
                    "excludeFilters": [{"from": {"namespacedPod": ["kube-system/coredns"]}}],
                }
            ]
        },
    }


def build(
    name: PlatformName,
    builder: ClusterBuilder | None = None,
    *,
    user_filters: bool = True,
    agent: bool = False,
) -> Shape:
    """A platform's shape around ``builder``'s workloads (the sample cluster's when None).

    The builder must not hold Retina already (``sample_cluster(retina=False)``); ``retina`` and
    ``aks-retina`` add the chart's. ``agent`` adds AKS's Retina agent to ``aks-acns-cilium`` too,
    for a cluster whose node pools differ.
    """
    builder = builder if builder is not None else sample_cluster(retina=False)
    shape = Shape(name, builder)
    aks = name != "retina"
    cilium = name in METRIC_FILTERS
    nodes(builder, aks=aks, cilium=cilium)
    if name in ("retina", "aks-retina"):
        builder.retina()
    elif name == "aks-acns" or agent:
        acns_retina(builder)
    if cilium:
        if not agent:
            network_observability_service(builder)
        builder.objects.append(cnm_crd())
        if user_filters:
            builder.objects.append(user_metric())
    else:
        shape.uninstalled.add(CNM)
    return shape


def filter_counts(metric: Json | None) -> tuple[int, int]:
    """(streamproc's include filters, the user's filters) in a ContainerNetworkMetric.

    Read from an object anyone may have written: whatever is not a filter is not counted.
    """
    ours = theirs = 0
    spec = metric.get("spec") if isinstance(metric, dict) else None
    filters = spec.get("filters") if isinstance(spec, dict) else None
    for entry in filters if isinstance(filters, list) else ():
        if not isinstance(entry, dict):
            continue
        for key in ("includeFilters", "excludeFilters"):
            for item in entry.get(key) or ():
                if not isinstance(item, dict):
                    continue
                mine = key == "includeFilters" and projection.ours(item)
                ours += mine
                theirs += not mine
    return ours, theirs
