"""Every failure a person can act on is one line naming the cause and the fix, never a traceback.

Each test runs the real command in a subprocess, as a newcomer would, in a clean environment
(its own HOME, no KUBECONFIG, not in a pod), and reads what it printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamproc.lab.broker import free_port
from streamproc.lab.kubeemu import Fault, KubeEmulator

SHIPPED = Path(__file__).resolve().parents[1] / "topologies"


def streamproc(
    *args: str, home: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBECONFIG", "KUBERNETES_", "STREAMPROC_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env={**clean, "HOME": str(home), **(env or {})},
        cwd=cwd or home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], starts: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"streamproc: error: {starts}"), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [["status"], ["release", "shop/api"]])
def test_no_kubeconfig_and_not_in_a_pod_says_so(tmp_path: Path, command: list[str]) -> None:
    """Not the client's 'Service host/port is not set': what is missing and how to give it."""
    line = one_line(streamproc(*command, home=tmp_path), "no Kubernetes credentials")
    assert "--kubeconfig" in line


def test_a_kubeconfig_that_does_not_exist_is_named(tmp_path: Path) -> None:
    """--kubeconfig pointing at nothing: that path, not 'Expected key current-context'."""
    missing = tmp_path / "nowhere" / "config"
    line = one_line(
        streamproc("status", "--kubeconfig", str(missing), home=tmp_path),
        f"kubeconfig {missing} does not exist",
    )
    assert "KUBECONFIG" in line


def test_a_broken_kubeconfig_is_named_with_a_way_to_check_it(tmp_path: Path) -> None:
    """A file that is not a kubeconfig: which file, and the kubectl command that shows why."""
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nkind: Config\n")
    line = one_line(
        streamproc("status", env={"KUBECONFIG": str(broken)}, home=tmp_path),
        f"kubeconfig {broken} is not usable",
    )
    assert "kubectl --kubeconfig" in line


def test_an_unreachable_api_server_is_one_line(tmp_path: Path) -> None:
    """The kubeconfig's server is down: say so and what to check."""
    emulator = KubeEmulator()
    with emulator.serve():
        emulator.write_kubeconfig(tmp_path / "kubeconfig")
    line = one_line(
        streamproc("status", "--kubeconfig", str(tmp_path / "kubeconfig"), home=tmp_path),
        "cannot reach the Kubernetes API server",
    )
    assert "server address" in line


def test_a_forbidding_api_server_names_the_rbac_to_grant(
    tmp_path: Path, emulator: KubeEmulator, kubeconfig: Path
) -> None:
    """403 from the API server: the refusal and where streamproc's RBAC is."""
    emulator.faults.append(Fault(status=403, times=100))
    line = one_line(
        streamproc("status", "--kubeconfig", str(kubeconfig), home=tmp_path),
        "the Kubernetes API server refused",
    )
    assert "k8s/rbac.yaml" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """--debug is how a developer gets the full story of the same failure."""
    result = streamproc("--debug", "status", home=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ConfigError" in result.stderr


def test_send_without_a_broker_says_where_it_looked(tmp_path: Path) -> None:
    """No broker at the address: one line naming it and the option to fix."""
    source = tmp_path / "d.jsonl"
    source.write_text('{"rule":"x","priority":"Warning","time":"2026-01-01T00:00:00Z"}\n')
    line = one_line(
        streamproc(
            "send", "--bootstrap-servers", f"127.0.0.1:{free_port()}", str(source), home=tmp_path
        ),
        "cannot reach Kafka",
    )
    assert "--bootstrap-servers" in line


def test_every_command_falls_back_to_the_shipped_topology_outside_a_checkout(
    tmp_path: Path,
) -> None:
    """`check` with no argument in an empty folder validates the shipped topology."""
    result = streamproc("check", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok retina-observe:")


def test_check_reports_every_bad_file_and_suggests_a_close_field(tmp_path: Path) -> None:
    """Two bad files, two errors with file:line; a misspelt field gets 'did you mean'."""
    folder = tmp_path / "topologies"
    folder.mkdir()
    good = (SHIPPED / "retina-observe.yaml").read_text()
    (folder / "a.yaml").write_text(good.replace("threshold:", "treshold:"))
    (folder / "b.yaml").write_text(good.replace("name: retina-observe", "name: Bad_Name"))
    (folder / "c.yaml").write_text(good.replace("name: retina-observe", "name: fine"))
    result = streamproc("check", str(folder), home=tmp_path)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith(f"error {folder / 'a.yaml'}:")
    assert "treshold" in errors[0]
    assert "(did you mean 'threshold'?)" in errors[0]
    assert errors[1].startswith(f"error {folder / 'b.yaml'}:")
    assert "metadata.name" in errors[1]
    assert "ok fine:" in result.stdout


def test_help_shows_each_options_environment_variable_and_default(tmp_path: Path) -> None:
    """Defaults and variable names come from the one settings definition."""
    result = streamproc("run", "--help", home=tmp_path)
    text = " ".join(result.stdout.split())
    assert "env var: STREAMPROC_API_QPS; default: 20.0" in text
    assert "env var: STREAMPROC_SHUTDOWN_TIMEOUT; default: 10.0" in text
    assert "env var: STREAMPROC_KAFKA_SASL_MECHANISM; default: SCRAM-SHA-512" in text


def test_a_fleets_cluster_names_are_checked_and_its_annotators_must_name_theirs(
    tmp_path: Path,
) -> None:
    """--clusters with a bad name, or an annotator in a fleet without --cluster: refused at once."""
    bad = streamproc("ingest", "--clusters", "a,Not-A-Label", home=tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert "'Not-A-Label' is not a DNS-1123 label" in bad.stderr
    nameless = streamproc("annotate", "--clusters", "a,b", home=tmp_path)
    assert nameless.returncode == 2, nameless.stderr
    assert "name it with --cluster" in nameless.stderr
    assert "Traceback" not in bad.stderr + nameless.stderr


def last_line(result: subprocess.CompletedProcess[str], starts: str) -> str:
    """A stage logs its start first: its last line is the error, and no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"streamproc: error: {starts}"), line
    return line


@pytest.mark.parametrize("command", [["annotate"], ["status"], ["release", "shop/api"]])
def test_a_mark_key_file_that_cannot_be_read_or_is_too_short_is_named(
    tmp_path: Path, command: list[str]
) -> None:
    """--mark-key-file missing, or a key under 32 bytes: the file, and how to make a key."""
    missing = tmp_path / "nowhere" / "key"
    env = {"STREAMPROC_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    line = last_line(
        streamproc(*command, "--mark-key-file", str(missing), home=tmp_path, env=env),
        f"cannot read the mark key file {missing}",
    )
    assert "streamproc-mark-key" in line
    short = tmp_path / "key"
    short.write_text("secret\n")
    line = last_line(
        streamproc(*command, "--mark-key-file", str(short), home=tmp_path, env=env),
        f"{short}:1: a mark key must be at least 32 bytes",
    )
    assert "openssl rand -hex 32" in line
