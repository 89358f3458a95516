"""Every ``streamproc`` command of the simulate page runs, as a reader would run it.

The commands are read from ``docs/simulate.md`` itself (its ``sh`` blocks and the ``$``-lines of
its session), so an example that names a file the repository does not ship, or an option that no
longer exists, fails here. They run in a scratch folder holding copies of ``topologies/`` and
``examples/``, through a ``streamproc`` on PATH, against the embedded broker for ``--topic``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamproc.lab.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "simulate.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def page() -> str:
    """The simulate page's text."""
    return PAGE.read_text(encoding="utf-8")


def commands(text: str) -> list[str]:
    """The ``streamproc`` commands of a page, in order, each once."""
    found: list[str] = []
    for kind, body in _BLOCK.findall(text):
        for line in body.splitlines():
            if kind == "text":
                if not line.startswith("$ "):
                    continue
                line = line[2:]  # noqa: PLW2901 - the prompt is not part of the command
            elif kind != "sh":
                continue
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command.startswith("streamproc ") and command not in found:
                found.append(command)
    return found


def test_the_simulate_page_names_its_commands() -> None:
    """The extraction finds the page's commands: a rewrite of it cannot silence the test."""
    found = commands(page())
    assert len(found) >= 6, found
    assert any("--compare examples/strict" in c for c in found)
    assert any("--pods examples/pods.json" in c for c in found)
    assert any("--topic" in c for c in found)
    assert any("--plot" in c for c in found)


@pytest.fixture
def scratch(tmp_path: Path, broker: EmbeddedBroker) -> dict[str, str]:
    """A folder like a checkout's, ``streamproc`` on PATH, and the broker with detections."""
    shutil.copytree(ROOT / "topologies", tmp_path / "topologies")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "streamproc"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m streamproc "$@"\n')
    shim.chmod(0o755)
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBECONFIG", "KUBERNETES_", "STREAMPROC_"))
    }
    env = {
        **clean,
        "HOME": str(tmp_path),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "STREAMPROC_BOOTSTRAP_SERVERS": broker.bootstrap,
    }
    # what `--topic falco` reads: the lab's detections, published as Falcosidekick would
    run("streamproc samples --span 600 > published.jsonl", tmp_path, env)
    run("streamproc send published.jsonl", tmp_path, env)
    return env


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["/bin/bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"{command}\n{result.stderr}"
    return result


def test_every_simulate_command_of_the_readme_runs(tmp_path: Path, scratch: dict[str, str]) -> None:
    """Each command exits 0 with the files the repository ships; the plot and report appear."""
    outputs = {}
    for command in commands(page()):
        outputs[command] = run(command, tmp_path, scratch).stdout
    assert (tmp_path / "falco.jsonl.gz").stat().st_size > 0
    assert (tmp_path / "timeline.png").stat().st_size > 0
    topic = next(out for command, out in outputs.items() if "--topic" in command)
    assert "windows from Kafka record time" in topic
    compared = next(
        out for command, out in outputs.items() if "--pods examples/pods.json" in command
    )
    assert "snapshot 0," not in compared  # the shipped snapshot named the pods' owners
    assert "ambiguous identities" not in compared
