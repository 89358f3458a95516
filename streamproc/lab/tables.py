"""What ``kubectl get`` prints for the emulator's objects: server-side ``Table`` answers.

kubectl asks every list and get for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``
and prints the columns the server sends; given a plain list it can only print NAME and AGE. The
real API server's printers live in kubernetes ``pkg/printers/internalversion/printers.go``
(v1.32: ``printPod``, ``printDeployment``, ``printDaemonSet``, ``printReplicaSet``,
``printStatefulSet``, ``printEvent``, ``printNamespace``, ``printConfigMap``); the columns and
cell rules here follow them for what the sample cluster holds (no init containers, no
sidecars). Ages are apimachinery's ``duration.HumanDuration`` (``pkg/util/duration``), as
kubectl shows them. Jobs and CronJobs still go as lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]
#: ``includeObject`` values (meta.k8s.io/v1 ``TableOptions``); ``Metadata`` is the default
INCLUDE = ("None", "Metadata", "Object")


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a meta.k8s.io/v1 Table (kubectl get always does)."""
    for entry in accept.split(","):
        params = {
            key.strip(): value.strip()
            for key, _, value in (p.partition("=") for p in entry.split(";")[1:])
        }
        if (params.get("as"), params.get("g"), params.get("v")) == ("Table", "meta.k8s.io", "v1"):
            return True
    return False


def _seconds(stamp: object) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def human_duration(seconds: float) -> str:  # noqa: C901 - one branch per unit, as upstream
    """Kubernetes' ``HumanDuration``: ``45s``, ``3m20s``, ``4h5m``, ``3d2h``, ``2y15d``."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes, hours = whole // 60, whole // 3600
    if minutes < 10:
        return f"{minutes}m{whole % 60}s" if whole % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    days = hours // 24
    if hours < 24 * 365 * 8:
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{days // 365}y"


def age(obj: Json, now: float) -> str:
    """The AGE cell: time since ``creationTimestamp``, ``<unknown>`` without one."""
    created = _seconds((obj.get("metadata") or {}).get("creationTimestamp"))
    return "<unknown>" if created is None else human_duration(now - created)


def _column(name: str, description: str, *, priority: int = 0, fmt: str = "") -> Json:
    numbers = ("Desired", "Current", "Up-to-date", "Available", "Count", "Data")
    kind = "integer" if name in numbers else "string"
    return {
        "name": name,
        "type": kind,
        "format": fmt,
        "description": description,
        "priority": priority,
    }


_NAME = _column("Name", "Name must be unique within a namespace.", fmt="name")
_AGE = _column("Age", "CreationTimestamp is when the object was created.")

_POD_COLUMNS = [
    _NAME,
    _column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    _column("Status", "The aggregate status of the containers in this pod."),
    _column("Restarts", "The number of times the containers in this pod have been restarted."),
    _AGE,
    _column("IP", "IP address allocated to the pod.", priority=1),
    _column("Node", "Name of the node this pod runs on.", priority=1),
    _column("Nominated Node", "Name of the node nominated for this pod.", priority=1),
    _column("Readiness Gates", "Pod readiness gates.", priority=1),
]


def _pod_cells(pod: Json, now: float) -> list[object]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    reason = str(status.get("reason") or status.get("phase") or "")
    ready = restarts = 0
    last_restart: float | None = None
    running = False
    for container in reversed(status.get("containerStatuses") or []):
        restarts += int(container.get("restartCount") or 0)
        finished = _seconds(
            ((container.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
        )
        if finished is not None and (last_restart is None or finished > last_restart):
            last_restart = finished
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason"):
            reason = str(waiting["reason"])
        elif terminated is not None:
            reason = str(terminated.get("reason") or f"ExitCode:{terminated.get('exitCode', 0)}")
        elif container.get("ready") and "running" in state:
            running = True
            ready += 1
    if reason == "Completed" and running:
        reason = "Running"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    shown = str(restarts)
    if restarts and last_restart is not None:
        shown = f"{restarts} ({human_duration(now - last_restart)} ago)"
    gates = spec.get("readinessGates") or []
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    gates_ready = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        shown,
        age(pod, now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{gates_ready}/{len(gates)}" if gates else "<none>",
    ]


def _images(obj: Json) -> tuple[str, str]:
    containers = ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers")
    names = ",".join(str(c.get("name", "")) for c in containers or [])
    images = ",".join(str(c.get("image", "")) for c in containers or [])
    return names or "<none>", images or "<none>"


def _selector(obj: Json) -> str:
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "<none>"


#: the wide columns every workload kind shows of its pod template (``_images``, ``_selector``)
_TEMPLATE_COLUMNS = [
    _column("Containers", "Names of each container in the template.", priority=1),
    _column("Images", "Images referenced by each container in the template.", priority=1),
]
_SELECTOR_COLUMN = _column("Selector", "Label selector for pods.", priority=1)


_DEPLOYMENT_COLUMNS = [
    _NAME,
    _column("Ready", "Number of the pod with ready state"),
    _column("Up-to-date", "Total number of non-terminated pods targeted by this deployment."),
    _column("Available", "Total number of available pods (ready for at least minReadySeconds)."),
    _AGE,
    *_TEMPLATE_COLUMNS,
    _SELECTOR_COLUMN,
]


def _deployment_cells(obj: Json, now: float) -> list[object]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        f"{int(status.get('readyReplicas') or 0)}/{int(spec.get('replicas') or 0)}",
        int(status.get("updatedReplicas") or 0),
        int(status.get("availableReplicas") or 0),
        age(obj, now),
        *_images(obj),
        _selector(obj),
    ]


_DAEMONSET_COLUMNS = [
    _NAME,
    _column("Desired", "The desired number of nodes that should be running the daemon pod."),
    _column("Current", "The number of nodes running at least one daemon pod."),
    _column("Ready", "The number of nodes running the daemon pod and ready."),
    _column("Up-to-date", "The number of nodes running the updated daemon pod."),
    _column("Available", "The number of nodes running the daemon pod and available."),
    _column("Node Selector", "Only nodes matching this selector run the daemon pod."),
    _AGE,
    *_TEMPLATE_COLUMNS,
    _SELECTOR_COLUMN,
]


def _daemonset_cells(obj: Json, now: float) -> list[object]:
    status = obj.get("status") or {}
    template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    nodes = ",".join(f"{k}={v}" for k, v in (template.get("nodeSelector") or {}).items())
    return [
        obj["metadata"]["name"],
        int(status.get("desiredNumberScheduled") or 0),
        int(status.get("currentNumberScheduled") or 0),
        int(status.get("numberReady") or 0),
        int(status.get("updatedNumberScheduled") or 0),
        int(status.get("numberAvailable") or 0),
        nodes or "<none>",
        age(obj, now),
        *_images(obj),
        _selector(obj),
    ]


_REPLICASET_COLUMNS = [
    _NAME,
    _column("Desired", "Number of desired pods."),
    _column("Current", "Number of actual replicas."),
    _column("Ready", "The number of ready replicas for this replica set."),
    _AGE,
    *_TEMPLATE_COLUMNS,
    _SELECTOR_COLUMN,
]


def _replicaset_cells(obj: Json, now: float) -> list[object]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        int(spec.get("replicas") or 0),
        int(status.get("replicas") or 0),
        int(status.get("readyReplicas") or 0),
        age(obj, now),
        *_images(obj),
        _selector(obj),
    ]


_STATEFULSET_COLUMNS = [
    _NAME,
    _column("Ready", "Number of the pod with ready state"),
    _AGE,
    *_TEMPLATE_COLUMNS,
]


def _statefulset_cells(obj: Json, now: float) -> list[object]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ready = f"{int(status.get('readyReplicas') or 0)}/{int(spec.get('replicas') or 0)}"
    return [obj["metadata"]["name"], ready, age(obj, now), *_images(obj)]


_EVENT_COLUMNS = [
    _column("Last Seen", "Time since the most recent occurrence of this event."),
    _column("Type", "Type of this event (Normal, Warning)."),
    _column("Reason", "Why the action was taken, in UpperCamelCase."),
    _column("Object", "The object this event is about."),
    _column("Subobject", "The part of the object this event is about.", priority=1),
    _column("Source", "The component reporting this event.", priority=1),
    _column("Message", "A human-readable description of the status of this operation."),
    _column("First Seen", "Time since the first occurrence of this event.", priority=1),
    _column("Count", "The number of times this event has occurred.", priority=1),
    _column("Name", "Name must be unique within a namespace.", priority=1, fmt="name"),
]


def _since(stamp: object, now: float) -> str:
    at = _seconds(stamp)
    return "<unknown>" if at is None else human_duration(now - at)


def _event_cells(event: Json, now: float) -> list[object]:
    involved = event.get("involvedObject") or {}
    last = event.get("lastTimestamp") or event.get("eventTime")
    first = event.get("firstTimestamp") or event.get("eventTime")
    count = int(event.get("count") or 1)
    last_seen = _since(last, now)
    if count > 1:
        last_seen = f"{last_seen} (x{count} over {_since(first, now)})"
    source = event.get("source") or {}
    return [
        last_seen,
        event.get("type", ""),
        event.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        involved.get("fieldPath", ""),
        str(source.get("component") or event.get("reportingComponent") or ""),
        str(event.get("message", "")).strip(),
        _since(first, now),
        count,
        event["metadata"]["name"],
    ]


_NAMESPACE_COLUMNS = [
    _NAME,
    _column("Status", "The status of the namespace"),
    _AGE,
]


def _namespace_cells(obj: Json, now: float) -> list[object]:
    phase = (obj.get("status") or {}).get("phase", "")
    return [obj["metadata"]["name"], phase, age(obj, now)]


_CONFIGMAP_COLUMNS = [
    _NAME,
    _column("Data", "Number of keys in the config map."),
    _AGE,
]


def _configmap_cells(obj: Json, now: float) -> list[object]:
    keys = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [obj["metadata"]["name"], keys, age(obj, now)]


_PRINTERS: dict[str, tuple[list[Json], Callable[[Json, float], list[object]]]] = {
    "Namespace": (_NAMESPACE_COLUMNS, _namespace_cells),
    "ConfigMap": (_CONFIGMAP_COLUMNS, _configmap_cells),
    "Pod": (_POD_COLUMNS, _pod_cells),
    "Deployment": (_DEPLOYMENT_COLUMNS, _deployment_cells),
    "DaemonSet": (_DAEMONSET_COLUMNS, _daemonset_cells),
    "ReplicaSet": (_REPLICASET_COLUMNS, _replicaset_cells),
    "StatefulSet": (_STATEFULSET_COLUMNS, _statefulset_cells),
    "Event": (_EVENT_COLUMNS, _event_cells),
}


def printable(kind: str) -> bool:
    """Whether the emulator prints this kind as a Table (others go as lists: NAME and AGE)."""
    return kind in _PRINTERS


def table(kind: str, objects: Sequence[Json], list_meta: Json, include: str) -> Json:
    """A ``meta.k8s.io/v1`` Table of ``objects``; each row carries the object as asked.

    ``include`` is ``includeObject``: kubectl's ``-L``/``--show-labels`` read the labels from
    the row's PartialObjectMetadata, ``--sort-by`` asks for the whole object.
    """
    columns, cells = _PRINTERS[kind]
    now = time.time()
    rows = []
    for obj in objects:
        row: Json = {"cells": cells(obj, now)}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata") or {},
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }
