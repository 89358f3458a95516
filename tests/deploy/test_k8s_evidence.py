"""The opt-in evidence component: the annotator reaches an in-cluster Prometheus and knows where.

The base's NetworkPolicy allows DNS, Kafka and the API server only, so the docs' in-cluster
Prometheus (``http://prometheus.monitoring:9090``) would be unreachable without it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.31.0"


def rendered_with_component() -> list[dict[str, Any]]:
    """deploy/k8s-evidence: the base with the component."""
    if KUBECTL is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed; .ci/run installs it")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "deploy" / "k8s-evidence")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_evidence_component_opens_port_9090_to_the_annotator_and_sets_the_url() -> None:
    """Valid objects; egress 9090 for annotate only; the URL in the config; the optional token."""
    docs = rendered_with_component()
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    policy = next(d for d in docs if d["metadata"]["name"] == "streamproc-prometheus")
    assert policy["metadata"]["namespace"] == "streamproc"
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/component": "annotate"}
    }
    assert policy["spec"]["egress"] == [{"ports": [{"port": 9090, "protocol": "TCP"}]}]
    config = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("streamproc-config")
    )
    assert config["data"]["STREAMPROC_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    annotate = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "streamproc-annotate"
    )
    pod = annotate["spec"]["template"]["spec"]
    token = next(v for v in pod["volumes"] if v["name"] == "prometheus-token")
    assert token["secret"] == {"secretName": "streamproc-prometheus-token", "optional": True}
    mounts = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert "prometheus-token" in mounts
