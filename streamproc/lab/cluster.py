"""A realistic sample cluster for the emulator: the objects a kubectl user would recognise.

Deployments own ReplicaSets (with ``pod-template-hash``) that own pods; a StatefulSet's pods are
``name-0..n``; a DaemonSet runs one pod per node; a CronJob owns a Job named after its scheduled
minute, which owns a pod; and one bare pod has no owner. Pod names follow Kubernetes' own
generators (the safe-encoding alphabet), so name-shape resolution sees what it would in a cluster.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

import yaml

Json = dict[str, Any]
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
NODES = ("node-a", "node-b")
RETINA_VERSION = "v1.2.6"
#: the agent's config.yaml as Retina's chart renders it with the settings streamproc needs
#: (``--set enableAnnotations=true --set enablePodLevel=true``; the rest are chart defaults)
RETINA_CONFIG: Json = {
    "apiServer": {"host": "0.0.0.0", "port": 10093},  # noqa: S104 - Retina's chart default
    "logLevel": "info",
    "enabledPlugin": ["dropreason", "packetforward", "linuxutil", "dns", "packetparser"],
    "metricsIntervalDuration": "10s",
    "enableTelemetry": False,
    "enablePodLevel": True,
    "remoteContext": False,
    "enableAnnotations": True,
    "bypassLookupIPOfInterest": False,
    "dataAggregationLevel": "low",
    "filterMapMaxEntries": 255,
}


@dataclass(frozen=True)
class SampleWorkload:
    """One workload and its pods, for the replay generator and assertions."""

    namespace: str
    kind: str
    name: str
    pods: tuple[str, ...]
    images: tuple[str, ...] = field(default=("nginx:1.27",))


def _suffix(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SAFE) for _ in range(n))


def _owner(kind: str, name: str, uid: str, api_version: str) -> Json:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, namespace: str, labels: dict[str, str], uid: str, owner: Json | None) -> Json:
    meta: Json = {"name": name, "namespace": namespace, "labels": dict(labels), "uid": uid}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return meta


def _template(labels: dict[str, str], image: str, container: str = "main") -> Json:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {"containers": [{"name": container, "image": image}]},
    }


def _replicas(n: int) -> Json:
    """A workload's status with all ``n`` replicas up to date, ready and available."""
    return {
        "observedGeneration": 1,
        "replicas": n,
        "readyReplicas": n,
        "updatedReplicas": n,
        "availableReplicas": n,
    }


def _daemons() -> Json:
    """A DaemonSet's status with its pod ready on every node."""
    n = len(NODES)
    return {
        "observedGeneration": 1,
        "desiredNumberScheduled": n,
        "currentNumberScheduled": n,
        "numberReady": n,
        "updatedNumberScheduled": n,
        "numberAvailable": n,
        "numberMisscheduled": 0,
    }


def host_ip(node: str) -> str:
    """The node's InternalIP (a node outside ``NODES`` gets the next address)."""
    return f"10.224.0.{4 + (NODES.index(node) if node in NODES else len(NODES))}"


def pod(
    namespace: str,
    name: str,
    labels: dict[str, str],
    owner: Json | None,
    node: str,
    image: str,
    *,
    ip: str | None = None,
    host_network: bool = False,
    container: str = "main",
) -> Json:
    """A running, ready pod, with the status its kubelet would report.

    That status is what ``kubectl get -o wide`` and ``describe`` show; the emulator stamps the
    start times when the pod is created.
    """
    node_ip = host_ip(node)
    pod_ip = node_ip if host_network else ip or f"10.244.9.{2 + zlib.crc32(name.encode()) % 250}"
    spec: Json = {"nodeName": node, "containers": [{"name": container, "image": image}]}
    if host_network:
        spec["hostNetwork"] = True
    ready = [
        {"type": t, "status": "True"}
        for t in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        )
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(name, namespace, labels, f"uid-{namespace}-{name}", owner),
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": ready,
            "hostIP": node_ip,
            "hostIPs": [{"ip": node_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "qosClass": "BestEffort",
            "containerStatuses": [
                {
                    "name": container,
                    "image": image,
                    "imageID": "",
                    "containerID": "containerd://"
                    + hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest(),
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {}},
                }
            ],
        },
    }


class ClusterBuilder:
    """Builds objects and remembers the workloads, for the replay and the tests."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - names, not secrets
        self.objects: list[Json] = []
        self.workloads: list[SampleWorkload] = []
        self._namespaces: set[str] = set()
        #: pod IPs handed out per node (each node owns a /24 of the pod CIDR, as kubeadm's do)
        self._pod_ips: dict[str, int] = {}

    def _ip(self, node: str) -> str:
        self._pod_ips[node] = self._pod_ips.get(node, 1) + 1
        index = NODES.index(node) if node in NODES else len(NODES)
        return f"10.244.{index}.{self._pod_ips[node]}"

    def _pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        owner: Json | None,
        node: str,
        image: str,
        **kwargs: Any,
    ) -> None:
        ip = None if kwargs.get("host_network") else self._ip(node)
        self.objects.append(pod(namespace, name, labels, owner, node, image, ip=ip, **kwargs))

    def namespace(self, name: str) -> None:
        """Add a namespace once."""
        if name not in self._namespaces:
            self._namespaces.add(name)
            self.objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
                }
            )

    def deployment(self, namespace: str, name: str, replicas: int, image: str) -> SampleWorkload:
        """Deployment -> ReplicaSet -> pods."""
        self.namespace(namespace)
        labels = {"app.kubernetes.io/name": name}
        uid = f"uid-deploy-{namespace}-{name}"
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": _meta(name, namespace, labels, uid, None),
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": _template(labels, image),
                },
                "status": _replicas(replicas),
            }
        )
        template_hash = _suffix(self.rng, 10)
        rs_name = f"{name}-{template_hash}"
        rs_uid = f"uid-rs-{namespace}-{rs_name}"
        rs_labels = {**labels, "pod-template-hash": template_hash}
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": _meta(
                    rs_name,
                    namespace,
                    rs_labels,
                    rs_uid,
                    _owner("Deployment", name, uid, "apps/v1"),
                ),
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": rs_labels},
                    "template": _template(rs_labels, image),
                },
                "status": {**_replicas(replicas), "fullyLabeledReplicas": replicas},
            }
        )
        owner = _owner("ReplicaSet", rs_name, rs_uid, "apps/v1")
        pods = tuple(f"{rs_name}-{_suffix(self.rng, 5)}" for _ in range(replicas))
        for i, pod_name in enumerate(pods):
            self._pod(namespace, pod_name, rs_labels, owner, NODES[i % 2], image)
        return self._remember(SampleWorkload(namespace, "Deployment", name, pods, (image,)))

    def statefulset(self, namespace: str, name: str, replicas: int, image: str) -> SampleWorkload:
        """StatefulSet -> pods name-0..n."""
        self.namespace(namespace)
        labels = {"app.kubernetes.io/name": name}
        uid = f"uid-sts-{namespace}-{name}"
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": _meta(name, namespace, labels, uid, None),
                "spec": {
                    "replicas": replicas,
                    "serviceName": name,
                    "selector": {"matchLabels": labels},
                    "template": _template(labels, image),
                },
                "status": {**_replicas(replicas), "currentReplicas": replicas},
            }
        )
        owner = _owner("StatefulSet", name, uid, "apps/v1")
        pods = tuple(f"{name}-{i}" for i in range(replicas))
        for i, pod_name in enumerate(pods):
            self._pod(namespace, pod_name, labels, owner, NODES[i % 2], image)
        return self._remember(SampleWorkload(namespace, "StatefulSet", name, pods, (image,)))

    def daemonset(self, namespace: str, name: str, image: str) -> SampleWorkload:
        """DaemonSet -> one pod per node."""
        self.namespace(namespace)
        labels = {"app.kubernetes.io/name": name}
        uid = f"uid-ds-{namespace}-{name}"
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": _meta(name, namespace, labels, uid, None),
                "spec": {"selector": {"matchLabels": labels}, "template": _template(labels, image)},
                "status": _daemons(),
            }
        )
        owner = _owner("DaemonSet", name, uid, "apps/v1")
        pods = tuple(f"{name}-{_suffix(self.rng, 5)}" for _ in NODES)
        for node, pod_name in zip(NODES, pods, strict=True):
            self._pod(namespace, pod_name, labels, owner, node, image)
        return self._remember(SampleWorkload(namespace, "DaemonSet", name, pods, (image,)))

    def cronjob(self, namespace: str, name: str, image: str) -> SampleWorkload:
        """CronJob -> Job (named after its scheduled minute) -> pod."""
        self.namespace(namespace)
        labels = {"app.kubernetes.io/name": name}
        uid = f"uid-cj-{namespace}-{name}"
        self.objects.append(
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": _meta(name, namespace, labels, uid, None),
                "spec": {"schedule": "*/5 * * * *"},
            }
        )
        job = f"{name}-{29_000_000 + self.rng.randrange(900_000)}"
        job_uid = f"uid-job-{namespace}-{job}"
        job_labels = {**labels, "batch.kubernetes.io/job-name": job}
        self.objects.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": _meta(
                    job, namespace, job_labels, job_uid, _owner("CronJob", name, uid, "batch/v1")
                ),
                "spec": {},
            }
        )
        pod_name = f"{job}-{_suffix(self.rng, 5)}"
        self._pod(
            namespace,
            pod_name,
            job_labels,
            _owner("Job", job, job_uid, "batch/v1"),
            NODES[0],
            image,
        )
        return self._remember(SampleWorkload(namespace, "CronJob", name, (pod_name,), (image,)))

    def bare_pod(self, namespace: str, name: str, image: str) -> SampleWorkload:
        """A pod with no controller."""
        self.namespace(namespace)
        self._pod(namespace, name, {"run": name}, None, NODES[1], image)
        return self._remember(SampleWorkload(namespace, "Pod", name, (name,), (image,)))

    def retina(
        self,
        version: str = RETINA_VERSION,
        config: Json | None = None,
        *,
        env: dict[str, str] | None = None,
        operator: bool = True,
        namespace: str = "kube-system",
    ) -> None:
        """Retina's standard control plane, as its Helm chart installs it, with its pods.

        From microsoft/retina v1.2.6, ``deploy/standard/manifests/controller/helm/retina/
        templates/``: the agent DaemonSet ``retina-agent`` (``daemonset.yaml``: host network, the
        ``retina.labels`` of ``_helpers.tpl`` plus ``app.kubernetes.io/component: workload`` and
        ``k8s-app: retina``) mounting the ``retina-config`` ConfigMap, one agent pod per node,
        and the operator Deployment ``retina-operator`` (``operator.yaml``: pods labelled
        ``app``/``control-plane: retina-operator``). ``config`` changes keys of the agent's
        ``config.yaml`` (None removes one). The init container is left out.
        """
        self.namespace(namespace)
        chart = version.removeprefix("v")
        selector = {
            "app.kubernetes.io/name": "retina",
            "app.kubernetes.io/instance": "retina",
            "app.kubernetes.io/component": "workload",
        }
        labels = {
            "helm.sh/chart": f"retina-{chart}",
            **selector,
            "app.kubernetes.io/version": chart,
            "app.kubernetes.io/managed-by": "Helm",
            "app.kubernetes.io/part-of": "retina",
            "k8s-app": "retina",
        }
        # names of their own, so adding Retina never shifts the names of the other workloads
        rng = random.Random(f"retina/{namespace}/{version}")  # noqa: S311 - names, not secrets
        settings = {**RETINA_CONFIG, **(config or {})}
        self.objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "retina-config", "namespace": namespace, "labels": labels},
                "data": {
                    "config.yaml": yaml.safe_dump(
                        {k: v for k, v in settings.items() if v is not None}, sort_keys=False
                    )
                },
            }
        )
        agent_image = f"ghcr.io/microsoft/retina/retina-agent:{version}"
        container: Json = {
            "name": "retina",
            "image": agent_image,
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        }
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": _meta("retina-agent", namespace, labels, "uid-retina-agent", None),
                "spec": {
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "hostNetwork": True,
                            "containers": [container],
                            "volumes": [{"name": "config", "configMap": {"name": "retina-config"}}],
                            "nodeSelector": {"kubernetes.io/os": "linux"},
                        },
                    },
                },
                "status": _daemons(),
            }
        )
        agent_owner = _owner("DaemonSet", "retina-agent", "uid-retina-agent", "apps/v1")
        revision = {"controller-revision-hash": _suffix(rng, 10), "pod-template-generation": "1"}
        for node in NODES:
            self._pod(
                namespace,
                f"retina-agent-{_suffix(rng, 5)}",
                {**labels, **revision},
                agent_owner,
                node,
                agent_image,
                host_network=True,
                container="retina",
            )
        if operator:
            self._retina_operator(namespace, version, rng)

    def agent_daemonset(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        container: Json,
        volumes: list[Json],
    ) -> None:
        """A platform's host-network agent DaemonSet (as AKS runs its own), one pod per node.

        Its pods' names come from a generator of their own, so adding a platform never shifts
        the names of the other workloads.
        """
        self.namespace(namespace)
        uid = f"uid-ds-{namespace}-{name}"
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": _meta(name, namespace, labels, uid, None),
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "hostNetwork": True,
                            "containers": [container],
                            "volumes": volumes,
                            "nodeSelector": {"kubernetes.io/os": "linux"},
                        },
                    },
                },
                "status": _daemons(),
            }
        )
        rng = random.Random(f"{namespace}/{name}")  # noqa: S311 - names, not secrets
        owner = _owner("DaemonSet", name, uid, "apps/v1")
        revision = {"controller-revision-hash": _suffix(rng, 10), "pod-template-generation": "1"}
        for node in NODES:
            self._pod(
                namespace,
                f"{name}-{_suffix(rng, 5)}",
                {**labels, **revision},
                owner,
                node,
                str(container["image"]),
                host_network=True,
                container=str(container["name"]),
            )

    def _retina_operator(self, namespace: str, version: str, rng: random.Random) -> None:
        image = f"ghcr.io/microsoft/retina/retina-operator:{version}"
        name = "retina-operator"
        pod_labels = {"app": name, "control-plane": name}
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": _meta(
                    name,
                    namespace,
                    {
                        **pod_labels,
                        "app.kubernetes.io/name": "deployment",
                        "app.kubernetes.io/instance": name,
                        "app.kubernetes.io/component": name,
                        "app.kubernetes.io/created-by": "operator",
                        "app.kubernetes.io/part-of": "operator",
                        "app.kubernetes.io/managed-by": "kustomize",
                    },
                    "uid-retina-operator",
                    None,
                ),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"control-plane": name}},
                    "template": _template(pod_labels, image, name),
                },
                "status": _replicas(1),
            }
        )
        template_hash = _suffix(rng, 10)
        rs_name, rs_uid = f"{name}-{template_hash}", f"uid-rs-{namespace}-{name}"
        rs_labels = {**pod_labels, "pod-template-hash": template_hash}
        self.objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": _meta(
                    rs_name,
                    namespace,
                    rs_labels,
                    rs_uid,
                    _owner("Deployment", name, "uid-retina-operator", "apps/v1"),
                ),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": rs_labels},
                    "template": _template(rs_labels, image, name),
                },
                "status": {**_replicas(1), "fullyLabeledReplicas": 1},
            }
        )
        self._pod(
            namespace,
            f"{rs_name}-{_suffix(rng, 5)}",
            rs_labels,
            _owner("ReplicaSet", rs_name, rs_uid, "apps/v1"),
            NODES[0],
            image,
            container=name,
        )

    def _remember(self, workload: SampleWorkload) -> SampleWorkload:
        self.workloads.append(workload)
        return workload


def sample_cluster(seed: int = 7, *, retina: bool = True) -> ClusterBuilder:
    """Several namespaces with one of every workload kind streamproc knows, and Retina.

    Without ``retina`` the same workloads with no Retina, for a platform that brings its own
    (``platforms.py``).
    """
    b = ClusterBuilder(seed)
    b.deployment("shop", "frontend", 3, "ghcr.io/example/frontend:2.4.1")
    b.deployment("shop", "checkout", 2, "ghcr.io/example/checkout:1.9.0")
    b.statefulset("shop", "redis", 2, "redis:7.4")
    b.deployment("payments", "api", 3, "ghcr.io/example/payments-api:3.2.0")
    b.statefulset("payments", "postgres", 1, "postgres:16")
    b.daemonset("monitoring", "node-exporter", "quay.io/prometheus/node-exporter:v1.8.2")
    b.cronjob("batch", "report", "ghcr.io/example/report:0.7.3")
    b.bare_pod("default", "debug-shell", "busybox:1.36")
    b.deployment("kube-system", "coredns", 2, "registry.k8s.io/coredns/coredns:v1.11.3")
    if retina:
        b.retina()
    return b
