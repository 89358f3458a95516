r"""Retina ``Capture`` objects for a workload: bounded packet captures on a stronger condition.

Fields follow Retina's Capture CRD as of microsoft/retina v1.2.6
(``deploy/standard/manifests/controller/helm/retina/crds/retina.sh_captures.yaml`` and
``docs/05-Concepts/CRDs/Capture.md``): ``apiVersion: retina.sh/v1alpha1``, namespaced, with
``spec.captureConfiguration`` (``captureOption``: duration matching
``^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$``, maxCaptureSize in MB, packetSize;
``captureTarget``; ``includeMetadata``), ``spec.outputConfiguration`` (hostPath, a *relative*
subpath since v1.2.1; blobUpload; persistentVolumeClaim; s3Upload) and
``spec.cleanUpAfterUpload``.

The target is ``captureTarget.podNames`` by default (Retina >= v1.1): exactly the workload's
pods, whatever labels they have. The CRD makes it exclusive with the selectors, so it stands
alone. ``target: podSelector`` keeps the selector form for older Retina: the labels every pod
of the workload shares, without per-pod or per-revision labels; a workload whose pods share no
label then gets no capture (an empty selector would capture the whole namespace).

The name is derived from the action id (topology, workload, window), so a replayed or repeated
action in the same window finds the capture already there instead of starting a second one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from streamproc.model import conventions
from streamproc.model.topologies import Capture

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


def target(capture: Capture, namespace: str, pods: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``captureTarget`` for the workload's pods; empty when the selector form finds no label."""
    if capture.target == "podNames":
        names = sorted(str((p.get("metadata") or {}).get("name") or "") for p in pods)
        return {"podNames": [n for n in names if n]}
    selector = shared_labels(pods)
    if not selector:
        return {}
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": selector},
    }


def body(
    *,
    action_id: str,
    namespace: str,
    capture_target: dict[str, Any],
    capture: Capture,
    topology: str,
    rule: str,
) -> dict[str, Any]:
    """The Capture object to create."""
    out = capture.output
    output: dict[str, Any] = {
        key: value
        for key, value in (
            ("hostPath", out.host_path),
            ("blobUpload", out.blob_upload),
            ("persistentVolumeClaim", out.persistent_volume_claim),
        )
        if value
    }
    if out.s3_upload is not None:
        output["s3Upload"] = out.s3_upload.model_dump(by_alias=True, exclude_none=True)
    spec: dict[str, Any] = {
        "captureConfiguration": {
            "captureOption": {
                "duration": f"{int(capture.duration)}s",
                "maxCaptureSize": capture.max_capture_size_mb,
                "packetSize": capture.packet_size,
            },
            "captureTarget": capture_target,
            "includeMetadata": True,
        },
        "outputConfiguration": output,
    }
    if capture.clean_up_after_upload:
        spec["cleanUpAfterUpload"] = True
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
        "spec": spec,
    }
