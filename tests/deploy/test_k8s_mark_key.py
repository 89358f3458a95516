"""The opt-in mark-key component: the annotator reads its sealing key from the Secret."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamproc.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.31.0"


def rendered(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of one directory of the repository."""
    if KUBECTL is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed; .ci/run installs it")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / overlay)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def annotate_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "streamproc-annotate"
    )


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return next(
        d["data"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("streamproc-config")
    )


def test_the_mark_key_component_mounts_the_secret_where_the_setting_points() -> None:
    """Valid objects; the Secret's ``key`` is the file STREAMPROC_MARK_KEY_FILE names."""
    docs = rendered("deploy/k8s-mark-key")
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pod = annotate_pod(docs)
    volume = next(v for v in pod["volumes"] if v["name"] == "mark-key")
    assert volume["secret"] == {"secretName": "streamproc-mark-key"}  # required: no unsealed run
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "mark-key")
    assert mount["readOnly"]
    env = Settings.__dataclass_fields__["mark_key_file"].metadata["env"]
    assert config(docs)[env] == f"{mount['mountPath']}/key"


def test_the_base_seals_nothing_and_needs_no_secret() -> None:
    """Without the component: no key setting, no mark-key volume (marks as they always were)."""
    docs = rendered("k8s")
    assert "STREAMPROC_MARK_KEY_FILE" not in config(docs)
    assert all(v["name"] != "mark-key" for v in annotate_pod(docs)["volumes"])
