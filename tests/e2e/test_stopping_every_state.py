"""Every command stops within seconds of SIGINT or SIGTERM, whatever state it is in.

Each test starts streamproc as a real process in its own process group, waits for a log line
that says it reached the state under test, signals it (SIGINT to the whole group, as a
terminal's Ctrl-C does, or SIGTERM, as Kubernetes does) and asserts how it ended: within the
bound, with the expected exit status, one plain line, no traceback, no child left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import wait_for
from tests.e2e.conftest import TOPOLOGY

pytestmark = pytest.mark.e2e

#: --shutdown-timeout given to every process here; the bound checked adds start-up slack
GRACE_S = 5
BOUND_S = GRACE_S + 3


class Streamproc:
    """``python -m streamproc ...`` in its own process group, its output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamproc", *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 60) -> None:
        wait_for(
            lambda: re.search(pattern, self.output) or self.process.poll() is not None,
            timeout=timeout,
            what=f"a line matching {pattern!r}",
        )
        assert self.process.poll() is None, f"exited early:\n{self.output}"

    def children(self) -> set[int]:
        """Processes whose parent is this one (read from /proc)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.add(int(entry.name))
        return found

    def signal(self, sig: int, *, group: bool = False) -> float:
        """Send ``sig``; return when it was sent (monotonic)."""
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        return time.monotonic()

    def ended(self, sent: float) -> tuple[int, float]:
        """Exit status and how long after ``sent`` it came (killed and failed if too long)."""
        try:
            code = self.process.wait(BOUND_S * 3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            self._out.close()
            pytest.fail(f"still running {BOUND_S * 3}s after the signal:\n{self.output}")
        took = time.monotonic() - sent
        self._out.close()
        return code, took

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._out.close()


def stage_args(command: str, bootstrap: str, tmp_path: Path, kubeconfig: Path | None) -> list[str]:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY.format(window="2s", ttl="10s"))
    args = [
        command,
        "--bootstrap-servers",
        bootstrap,
        "--topology",
        str(topology),
        "--session-timeout",
        "6",
        "--metrics-port",
        "0",
        "--shutdown-timeout",
        str(GRACE_S),
    ]
    if kubeconfig is not None:
        args += ["--kubeconfig", str(kubeconfig)]
    return args


def assert_plain(output: str) -> None:
    assert "Traceback" not in output, output
    assert "never awaited" not in output, output
    # a client left open or a task left pending: Python says so at exit, in lines of repr
    assert "Unclosed" not in output, output
    assert "Task was destroyed" not in output, output


@pytest.fixture
def processes() -> list[Streamproc]:
    return []


@pytest.fixture(autouse=True)
def _kill_leftovers(processes: list[Streamproc]) -> object:
    yield
    for process in processes:
        process.kill()


def test_sigterm_while_the_broker_was_never_reachable_stops_at_once(
    tmp_path: Path, kubeconfig: Path, processes: list[Streamproc]
) -> None:
    """Waiting for a missing broker: reported every few seconds, and SIGTERM ends the wait."""
    args = stage_args("run", f"127.0.0.1:{free_port()}", tmp_path, kubeconfig)
    proc = Streamproc(args, tmp_path / "run.log")
    processes.append(proc)
    proc.wait_for_line(r"Kafka not reachable at 127\.0\.0\.1:\d+ for \d+s .*retrying")
    proc.wait_for_line(r"Kafka not reachable .* for [1-9]\d*s", timeout=30)  # said again
    code, took = proc.ended(proc.signal(signal.SIGTERM))
    assert code == 0, proc.output
    assert took < BOUND_S, proc.output
    assert_plain(proc.output)


def test_ctrl_c_to_the_process_group_stops_a_running_pipeline(
    tmp_path: Path, broker: EmbeddedBroker, kubeconfig: Path, processes: list[Streamproc]
) -> None:
    """Ctrl-C reaches every process of the group; the pipeline stops cleanly and quickly."""
    proc = Streamproc(stage_args("run", broker.bootstrap, tmp_path, kubeconfig), tmp_path / "l")
    processes.append(proc)
    proc.wait_for_line(r"running: ingest, windows, annotate")
    code, took = proc.ended(proc.signal(signal.SIGINT, group=True))
    assert code == 0, proc.output
    assert took < BOUND_S, proc.output
    assert "SIGINT received, stopping" in proc.output
    assert_plain(proc.output)


def test_sigterm_after_the_broker_went_away_stops_within_the_bound(
    tmp_path: Path, kubeconfig: Path, processes: list[Streamproc]
) -> None:
    """Broker gone under a running pipeline (Faust's thread included): still a bounded stop."""
    broker = EmbeddedBroker(log=tmp_path / "tansu.log")
    broker.start()
    try:
        proc = Streamproc(
            stage_args("run", broker.bootstrap, tmp_path, kubeconfig), tmp_path / "run.log"
        )
        processes.append(proc)
        proc.wait_for_line(r"running: ingest, windows, annotate")
    finally:
        broker.stop()
    proc.wait_for_line(r"Kafka unreachable", timeout=30)
    code, took = proc.ended(proc.signal(signal.SIGTERM))
    assert code in (0, 128 + signal.SIGTERM), proc.output
    assert took < BOUND_S, proc.output
    assert_plain(proc.output)


def test_sigterm_while_the_api_server_is_down_stops_the_annotator(
    tmp_path: Path, broker: EmbeddedBroker, processes: list[Streamproc]
) -> None:
    """An annotator whose API server never answers stops on SIGTERM like any other."""
    emulator = KubeEmulator()
    with emulator.serve():
        emulator.write_kubeconfig(tmp_path / "kubeconfig")
    # the emulator is stopped: its kubeconfig now points at a closed port
    proc = Streamproc(
        stage_args("annotate", broker.bootstrap, tmp_path, tmp_path / "kubeconfig"),
        tmp_path / "annotate.log",
    )
    processes.append(proc)
    proc.wait_for_line(r"streamproc 0\.\d+\.\d+: annotate")
    code, took = proc.ended(proc.signal(signal.SIGTERM))
    assert code in (0, 1), proc.output
    assert took < BOUND_S, proc.output
    assert_plain(proc.output)


def test_sigint_while_the_consumer_group_is_forming_stops_a_stage(
    tmp_path: Path, broker: EmbeddedBroker, processes: list[Streamproc]
) -> None:
    """Mid-join (the broker holds a first join for half the session timeout): still prompt."""
    proc = Streamproc(
        stage_args("windows", broker.bootstrap, tmp_path, None), tmp_path / "windows.log"
    )
    processes.append(proc)
    proc.wait_for_line(r"streamproc 0\.\d+\.\d+: windows")
    code, took = proc.ended(proc.signal(signal.SIGINT, group=True))
    assert code in (0, 128 + signal.SIGINT), proc.output
    assert took < BOUND_S, proc.output
    assert_plain(proc.output)


def test_the_lab_interrupted_prints_its_summary_exits_130_and_leaves_no_child(
    tmp_path: Path, processes: list[Streamproc]
) -> None:
    """Ctrl-C on the lab: its broker survives the group's SIGINT until the lab stops it."""
    proc = Streamproc(
        ["lab", "--duration", "120", "--speed", "30", "--metrics-port", "0"],
        tmp_path / "lab.log",
    )
    processes.append(proc)
    proc.wait_for_line(r"\b[1-9][0-9]* actions?\b")
    children = proc.children()
    assert children, "the lab runs its broker as a child process"
    code, took = proc.ended(proc.signal(signal.SIGINT, group=True))
    output = proc.output
    assert code == 130, output
    assert took < 10, output
    assert "streamproc lab summary (interrupted)" in output
    assert "Interrupted before the end" in output
    assert "similar messages" not in output  # no flood from a broker that died under it
    assert_plain(output)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived the lab"
