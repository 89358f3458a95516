"""A newcomer's first mistakes with the cluster: one plain line each, or one line and a wait.

Each test runs the real command in a subprocess with its own HOME and no KUBECONFIG, as
tests/test_plain_errors.py does, and reads what it printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import wait_for
from tests.test_plain_errors import one_line, streamproc

#: a kubeconfig a hand edit broke: an unclosed flow sequence
MALFORMED = "apiVersion: v1\nclusters: [\n  - {name: lab\n  :::: oops\n"


@pytest.mark.parametrize("command", [["status"], ["release", "shop/api"]])
def test_a_malformed_kubeconfig_is_one_line_naming_file_and_line(
    tmp_path: Path, command: list[str]
) -> None:
    """YAML that does not parse: the file, the line and the kubectl command, not a traceback."""
    broken = tmp_path / "config"
    broken.write_text(MALFORMED)
    line = one_line(
        streamproc(*command, "--kubeconfig", str(broken), home=tmp_path),
        f"kubeconfig {broken} is not usable (not YAML:",
    )
    assert "at line 3" in line
    assert f"kubectl --kubeconfig {broken} config view" in line


def test_doctor_shows_a_malformed_kubeconfig_as_a_failed_check(tmp_path: Path) -> None:
    """Doctor lists every check: the kubeconfig is one ✘ line with its fix, and exit 1."""
    broken = tmp_path / "config"
    broken.write_text(MALFORMED)
    result = streamproc(
        "doctor",
        "--kubeconfig",
        str(broken),
        "--bootstrap-servers",
        f"127.0.0.1:{free_port()}",
        home=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr == ""
    failed = [line for line in result.stdout.splitlines() if "✘" in line]
    assert "✘ credentials: no usable credentials" in [line.strip() for line in failed]
    assert f"fix: kubeconfig {broken} is not usable (not YAML:" in result.stdout


@pytest.fixture
def started_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker for `run` to reach, stopped after the test."""
    instance = EmbeddedBroker(log=tmp_path / "tansu.log")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def start_run(
    tmp_path: Path, broker: EmbeddedBroker, *extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """`streamproc run` in the background, its output going to a file the test reads."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBECONFIG", "KUBERNETES_", "STREAMPROC_"))
    }
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamproc",
                "run",
                "--bootstrap-servers",
                broker.bootstrap,
                "--metrics-port",
                "0",
                *extra,
            ],
            env={**clean, "HOME": str(tmp_path)},
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return process, log


def warnings_in(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " WARNING " in line]


def test_run_waits_for_an_unreachable_api_server_saying_so_once(
    tmp_path: Path, started_broker: EmbeddedBroker
) -> None:
    """No API server yet: one 'waiting for the API server at URL' line, then it starts once
    the server answers, with no other warning in between."""
    emulator = KubeEmulator()
    with emulator.serve():
        emulator.write_kubeconfig(tmp_path / "kubeconfig")
    server = yaml.safe_load((tmp_path / "kubeconfig").read_text())["clusters"][0]["cluster"][
        "server"
    ]
    process, log = start_run(tmp_path, started_broker, "--kubeconfig", str(tmp_path / "kubeconfig"))
    try:
        waiting = f"waiting for the API server at {server} ("
        wait_for(lambda: waiting in log.read_text(), timeout=60, what="the waiting line")
        assert process.poll() is None, log.read_text()
        with emulator.serve(port=urlsplit(server).port or 0):
            wait_for(
                lambda: "running: ingest, windows, annotate" in log.read_text(),
                timeout=60,
                what="the stages starting once the API server answers",
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    found = warnings_in(log)
    assert len(found) == 1, "\n".join(found)
    assert waiting in found[0]
    assert "Traceback" not in log.read_text()


def test_run_stops_within_seconds_while_waiting_for_the_api_server(
    tmp_path: Path, started_broker: EmbeddedBroker
) -> None:
    """SIGTERM during the wait for the API server ends the process at once, cleanly."""
    emulator = KubeEmulator()
    with emulator.serve():
        emulator.write_kubeconfig(tmp_path / "kubeconfig")
    process, log = start_run(tmp_path, started_broker, "--kubeconfig", str(tmp_path / "kubeconfig"))
    try:
        wait_for(
            lambda: "waiting for the API server at" in log.read_text(),
            timeout=60,
            what="the waiting line",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text()


def test_run_without_a_kubeconfig_says_one_thing(
    tmp_path: Path, started_broker: EmbeddedBroker
) -> None:
    """No kubeconfig and not in a pod: the one error, not first a warning that it will manage."""
    process, log = start_run(tmp_path, started_broker)
    try:
        assert process.wait(60) == 1, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert warnings_in(log) == []
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, output
    assert errors[0].startswith("streamproc: error: no Kubernetes credentials")
    assert "--kubeconfig" in errors[0]
