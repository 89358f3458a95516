"""The deploying page's key commands make a Secret the annotator accepts, where it looks for it."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamproc.model import seals

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "deploying.md"
COMPONENT = ROOT / "k8s" / "components" / "mark-key" / "kustomization.yaml"


def shown() -> list[str]:
    """The commands of the page's "Sealed marks" section, one a line."""
    section = PAGE.read_text(encoding="utf-8").split("## Sealed marks", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the section shows its commands"
    return [line for line in block[1].splitlines() if line.strip()]


def test_the_page_s_commands_make_a_key_the_annotator_accepts(tmp_path: Path) -> None:
    """openssl's key passes ``seals.parse``; kubectl (client-side) puts it under ``key``."""
    openssl, kubectl = shutil.which("openssl"), shutil.which("kubectl")
    if openssl is None or kubectl is None:
        pytest.skip("openssl and kubectl are needed; .ci/run installs kubectl")
    make, create = shown()
    assert make.startswith("openssl ")
    subprocess.run(make, shell=True, cwd=tmp_path, check=True)  # the page's line, as written
    assert seals.parse((tmp_path / "mark-key").read_text(), source="mark-key").keys
    # the page's kubectl line, kept on this side of a cluster: the Secret it would create
    rendered = subprocess.run(
        [*create.split(), "--dry-run=client", "-o", "yaml"],
        cwd=tmp_path,
        env={"PATH": str(Path(kubectl).parent), "KUBECONFIG": "/dev/null"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    secret = yaml.safe_load(rendered)
    assert secret["metadata"] == {
        "name": "streamproc-mark-key",
        "namespace": "streamproc",
        "creationTimestamp": None,
    }
    key = base64.b64decode(secret["data"]["key"]).decode()
    assert key == (tmp_path / "mark-key").read_text()
    component = COMPONENT.read_text(encoding="utf-8")
    assert "secretName: streamproc-mark-key" in component
    assert "STREAMPROC_MARK_KEY_FILE=/var/run/secrets/streamproc/mark-key/key" in component
