"""What the emulated API server serves, and the small rules every handler shares."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from aiohttp import web

Json = dict[str, Any]

# (group, version, plural) -> (kind, namespaced)
RESOURCES: dict[tuple[str, str, str], tuple[str, bool]] = {
    ("", "v1", "pods"): ("Pod", True),
    ("", "v1", "namespaces"): ("Namespace", False),
    ("", "v1", "events"): ("Event", True),
    ("", "v1", "configmaps"): ("ConfigMap", True),
    ("apps", "v1", "deployments"): ("Deployment", True),
    ("apps", "v1", "replicasets"): ("ReplicaSet", True),
    ("apps", "v1", "statefulsets"): ("StatefulSet", True),
    ("apps", "v1", "daemonsets"): ("DaemonSet", True),
    ("batch", "v1", "jobs"): ("Job", True),
    ("batch", "v1", "cronjobs"): ("CronJob", True),
    ("retina.sh", "v1alpha1", "captures"): ("Capture", True),
    ("retina.sh", "v1alpha1", "metricsconfigurations"): ("MetricsConfiguration", False),
    ("acn.azure.com", "v1alpha1", "containernetworkmetrics"): ("ContainerNetworkMetric", False),
    ("", "v1", "nodes"): ("Node", False),
    ("", "v1", "services"): ("Service", True),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): (
        "CustomResourceDefinition",
        False,
    ),
}
PLURAL_OF = {kind: key for key, (kind, _) in RESOURCES.items()}
#: what ``kubectl get ds`` and ``kubectl get all`` resolve through discovery: the short names
#: and categories the real API server (v1.31) and Retina's CRDs (v1.2.6) declare
SHORT_NAMES: dict[str, tuple[str, ...]] = {
    "pods": ("po",),
    "namespaces": ("ns",),
    "events": ("ev",),
    "configmaps": ("cm",),
    "deployments": ("deploy",),
    "replicasets": ("rs",),
    "statefulsets": ("sts",),
    "daemonsets": ("ds",),
    "cronjobs": ("cj",),
    "nodes": ("no",),
    "services": ("svc",),
    "customresourcedefinitions": ("crd", "crds"),
}
IN_ALL = {"pods", "deployments", "replicasets", "statefulsets", "daemonsets", "jobs", "cronjobs"}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def api_status(code: int, reason: str, message: str) -> web.Response:
    """A failure as the API server answers one: a ``Status`` object with its HTTP code."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code, dumps=lambda o: orjson.dumps(o).decode())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def rbac_verb(method: str, named: bool, watch: str) -> str:
    """The RBAC verb the API server would authorise a request as."""
    if method == "GET":
        if named:
            return "get"
        return "watch" if watch.lower() in ("true", "1") else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
        method, method.lower()
    )
