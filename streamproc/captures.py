"""Retina ``Capture`` objects for a workload: bounded packet captures on a stronger condition.

Fields follow Retina's Capture CRD (microsoft/retina ``docs/05-Concepts/CRDs/Capture.md`` and
``retina.sh_captures.yaml``): ``apiVersion: retina.sh/v1alpha1``, namespaced, with
``spec.captureConfiguration`` (``captureOption``: duration, maxCaptureSize in MB, packetSize;
``captureTarget``: namespaceSelector and podSelector; ``includeMetadata``) and
``spec.outputConfiguration`` (hostPath, blobUpload, persistentVolumeClaim).

The name is derived from the action id (topology, workload, window), so a replayed or repeated
action in the same window finds the capture already there instead of starting a second one.
The pod selector is the labels every pod of the workload shares, without per-pod or
per-revision labels; a workload whose pods share no label gets no capture (an empty selector
would capture the whole namespace).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from streamproc import conventions
from streamproc.topologies import Capture

API_VERSION = "retina.sh/v1alpha1"
_VOLATILE_LABELS = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/controller-uid",
        "controller-uid",
        "pod-template-generation",
        conventions.OBSERVED_LABEL,
    }
)


def name_for(action_id: str) -> str:
    """A DNS-1123 name that is the same for every replay of one action."""
    return "streamproc-" + hashlib.sha256(action_id.encode()).hexdigest()[:16]


def shared_labels(pods: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Labels with the same value on every pod, minus per-pod and per-revision ones."""
    label_sets = [dict((p.get("metadata") or {}).get("labels") or {}) for p in pods]
    if not label_sets:
        return {}
    common = {k: v for k, v in label_sets[0].items() if k not in _VOLATILE_LABELS}
    for labels in label_sets[1:]:
        common = {k: v for k, v in common.items() if labels.get(k) == v}
    return common


def body(
    *,
    action_id: str,
    namespace: str,
    selector: dict[str, str],
    capture: Capture,
    topology: str,
    rule: str,
) -> dict[str, Any]:
    """The Capture object to create."""
    output = {
        key: value
        for key, value in (
            ("hostPath", capture.output.host_path),
            ("blobUpload", capture.output.blob_upload),
            ("persistentVolumeClaim", capture.output.persistent_volume_claim),
        )
        if value
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "Capture",
        "metadata": {
            "name": name_for(action_id),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "streamproc"},
            "annotations": {
                conventions.TOPOLOGY: topology,
                conventions.RULE: rule[:253],
                conventions.ACTION_ID: action_id[:253],
            },
        },
        "spec": {
            "captureConfiguration": {
                "captureOption": {
                    "duration": f"{int(capture.duration)}s",
                    "maxCaptureSize": capture.max_capture_size_mb,
                    "packetSize": capture.packet_size,
                },
                "captureTarget": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "podSelector": {"matchLabels": selector},
                },
                "includeMetadata": True,
            },
            "outputConfiguration": output,
        },
    }
