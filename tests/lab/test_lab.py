"""``streamproc lab`` as a newcomer runs it: a subprocess without a terminal."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def lab(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamproc", "lab", "--metrics-port", "0", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def summary_value(output: str, label: str) -> int:
    match = re.search(rf"^\s+{label}\s+(\d+)$", output, re.MULTILINE)
    assert match, f"no '{label}' in summary:\n{output}"
    return int(match[1])


#: a progress line without a terminal: ``lab 12s: 411 detections, ..., replay 411/659``
PROGRESS = re.compile(r"^lab \d+s: (\d+ detections?, .*)$", re.MULTILINE)
#: a count of 1 with a plural noun, or another count with a singular one
MISCOUNTED = re.compile(
    r"\b1 (pods|actions|workloads|detections|dead letters|patches|API requests|observations)\b"
    r"|\b(?!1\b)\d+ (pod|action|workload|detection|dead letter|patch|API request|observation)\b"
)


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_the_lab_runs_end_to_end_and_cleans_up_after_itself(tmp_path: Path) -> None:
    """The README's command: detections flow, observations open and all expire within the run."""
    process = lab("--duration", "20", "--speed", "30", cwd=tmp_path)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert summary_value(output, "detections in") > 500
    assert summary_value(output, "dead letters") == 5
    assert summary_value(output, "actions") >= 3
    annotated = summary_value(output, "pods observed")
    assert annotated >= 3
    assert summary_value(output, "expired") == annotated
    assert summary_value(output, "still active") == 0
    assert "ok: every expired observation was removed" in output
    assert "✔ annotations: enableAnnotations: true" in output  # doctor's report, shown
    assert re.search(r"^  doctor\s+\d+ passed, 0 warnings, 0 failed$", output, re.MULTILINE)
    broker = re.search(r"^broker: (\S+)$", output, re.MULTILINE)
    assert broker
    assert not listening(broker[1])
    # the story: the malformed lines explained, and which workloads were observed
    assert "5 dead letters are the replay's deliberately malformed lines" in output
    assert re.search(r"detection to first patch: p50 \d+ ms, p99 \d+ ms", output), output
    assert re.search(r"^  observed payments/Deployment/api: \d+ pods for", output, re.MULTILINE)
    assert not MISCOUNTED.search(output), MISCOUNTED.search(output)
    # without a terminal: a short line only when something changed
    progress = PROGRESS.findall(output)
    assert progress, output
    assert all(len(line) < 120 for line in progress), progress
    states = [re.sub(r"^\d+ detections?, ", "", line) for line in progress]
    assert all(a != b for a, b in itertools.pairwise(states)), progress
    assert progress[-1].endswith("replay done")
    assert re.search(r"^  replay\s+(\d+) of \1 detections sent$", output, re.MULTILINE)
    assert "did not finish" not in output
    # and what to try next, with the lab's own servers gone
    steps = output.split("What to try next:", 1)[1]
    assert "streamproc simulate falco.jsonl" in steps
    assert "streamproc doctor --bootstrap-servers" in steps
    assert "python -m streamproc.lab.kubeemu --kubeconfig" in steps


def test_the_lab_summary_as_json(tmp_path: Path) -> None:
    """--output json: the same summary, one document on stdout, for scripts."""
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamproc",
            "lab",
            "--metrics-port",
            "0",
            "--output",
            "json",
            "--duration",
            "20",
            "--speed",
            "30",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads(process.stdout)
    assert summary["clean"] is True
    assert summary["interrupted"] is False
    assert summary["dead_letter_reasons"] == {
        "invalid-json": 1,
        "invalid-namespace": 1,
        "invalid-priority": 1,
        "missing-rule": 1,
        "not-an-object": 1,
    }
    assert summary["latency_p50_s"] > 0
    assert summary["api_requests"] > 0
    observed = {(o["namespace"], o["kind"], o["name"]) for o in summary["observed"]}
    assert ("payments", "Deployment", "api") in observed
    assert summary["expired"] == summary["pods_annotated"] >= 3
    # doctor ran as the stages started, against the lab's own broker and cluster: all ready
    doctor = summary["doctor"]
    assert {c["area"] for c in doctor} == {
        "Topologies",
        "Kafka",
        "Kubernetes",
        "Platform",
        "Retina",
        "Marks",  # the lab seals its marks with a key of its own, as a deployment should
    }
    assert [c for c in doctor if c["status"] != "ok"] == []


def test_the_lab_on_aks_with_acns_on_cilium_watches_the_container_network_metric(
    tmp_path: Path,
) -> None:
    """--platform aks-acns-cilium: the shape is built, doctor names the mechanism, CNM is read."""
    process = subprocess.run(
        [
            *(sys.executable, "-m", "streamproc", "lab", "--metrics-port", "0"),
            *("--platform", "aks-acns-cilium", "--output", "json"),
            # 30 s: room for the last observation to expire on a loaded machine (20 s was not)
            *("--duration", "30", "--speed", "30"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads(process.stdout)
    assert (summary["platform"], summary["backend"]) == ("aks-acns-cilium", "acns-metric-filters")
    checks = {(c["area"], c["name"]): c for c in summary["doctor"]}
    assert "Cilium dataplane on 2 of 2 nodes" in checks["Platform", "platform"]["detail"]
    mechanism = checks["Platform", "mechanism"]
    assert mechanism["detail"] == "works here: ACNS ContainerNetworkMetric filters"
    assert checks["Platform", "backend"]["status"] == "ok"
    assert ("Retina", "annotations") not in checks
    # the user's own filter (the docs' coredns exclude) is there from the start and stays
    assert summary["user_filters_start"] == summary["user_filters_end"] == 1
    assert summary["metric_filters_end"] == 0, "streamproc's filters go with their observations"
    # each observed workload is a from and a to filter under each of the four metrics
    assert summary["metric_filters_peak"] >= 8
    assert "+ 1 the user's" in process.stderr


def test_ctrl_c_midway_stops_everything_cleanly(tmp_path: Path) -> None:
    """SIGINT ends the run with a summary, and neither broker nor API server keeps listening."""
    process = lab("--duration", "120", "--speed", "30", cwd=tmp_path)
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if re.search(r"observing [1-9]\d* pods?", line):
            break
    else:
        process.kill()
        pytest.fail("the lab never observed a pod:\n" + "".join(lines))
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    output = "".join(lines) + rest
    assert "streamproc lab summary (interrupted)" in output
    assert process.returncode == 130, output
    # stopped at the first observation, seconds into its TTL: every one is still open, and
    # the summary says for how long so far, not the TTL it was given
    observed = re.findall(r"^  observed \S+: \d+ pods? (.*)$", output, re.MULTILINE)
    assert observed, output
    assert all(re.match(r"still open, \d+s so far", o) for o in observed), observed
    assert re.search(r"still open went away with the emulated cluster", output)
    assert re.search(
        r"The replay did not finish: \d+ of \d+ detections were sent \(Ctrl-C stopped it\)",
        output,
    )
    assert "streamproc lab --duration 120 --speed 30" in output.split("What to try next:", 1)[1]
    for name in ("broker", "api server"):
        match = re.search(rf"^{name}: (?:http://)?(\S+)", output, re.MULTILINE)
        assert match, output
        wait_for(
            lambda address=match[1]: not listening(address), timeout=10, what=f"{name} to close"
        )


def test_the_lab_can_use_a_broker_it_did_not_start(tmp_path: Path) -> None:
    """--broker points the lab at an existing Kafka; the lab leaves that broker running."""
    from streamproc.lab.broker import EmbeddedBroker

    with EmbeddedBroker(log=tmp_path / "tansu.log").running() as external:
        process = lab(
            "--duration", "20", "--speed", "30", "--broker", external.bootstrap, cwd=tmp_path
        )
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
        assert f"broker: {external.bootstrap}" in output
        assert summary_value(output, "actions") >= 3
        assert listening(external.bootstrap)


def test_a_run_too_short_for_the_replay_says_so(tmp_path: Path) -> None:
    """A run that ends before the replay is done says the counts cover only part of it."""
    process = lab("--duration", "2", "--speed", "30", cwd=tmp_path)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert re.search(r"The replay (never started|did not finish)", output), output
    assert "streamproc lab --duration 60 --speed 30" in output.split("What to try next:", 1)[1]
