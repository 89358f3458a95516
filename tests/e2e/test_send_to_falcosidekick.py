"""``streamproc send --falcosidekick URL``: the lab's detections through Falcosidekick's HTTP input.

The compose lab posts its replay there, so the real publisher (its customfields, its codec, its
key-less records) is in the loop. Here a stand-in that judges requests as Falcosidekick's
``handlers.go`` does (``tests/falcosidekick_standin.py``) receives them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streamproc.lab import samples
from streamproc.lab.broker import free_port
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import Pipeline, topology_file
from tests.falcosidekick_standin import BAD_BODY, BAD_METHOD, FalcosidekickStandIn
from tests.kafka_gate import KafkaGate

pytestmark = pytest.mark.e2e


@pytest.fixture
def sidekick() -> Iterator[FalcosidekickStandIn]:
    """A Falcosidekick stand-in with the compose lab's customfields."""
    with FalcosidekickStandIn(customfields={"cluster": "lab"}).serving() as standin:
        yield standin


@pytest.fixture
def detections(tmp_path: Path) -> Path:
    """The lab's sample detections, as ``streamproc samples`` prints them for the replay."""
    out = subprocess.run(
        [sys.executable, "-m", "streamproc", "samples", "--span", "5"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    path = tmp_path / "detections.jsonl"
    path.write_bytes(out)
    return path


def send(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", "send", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_send_posts_each_detection_as_falcos_http_output_does(
    tmp_path: Path, sidekick: FalcosidekickStandIn, detections: Path
) -> None:
    """One POST per line, JSON, in order; Falcosidekick takes every well-formed sample and adds
    the cluster field the compose lab configures."""
    judge = FalcosidekickStandIn().judge  # no customfields: as Falco's own detections pass
    lines = [line for line in detections.read_bytes().splitlines() if judge(line)]
    source = tmp_path / "valid.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = send(str(source), "--falcosidekick", sidekick.url)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"posted {len(lines)} detections to Falcosidekick at {sidekick.url}"
    )
    assert [r.body for r in sidekick.received] == lines
    assert {(r.method, r.path, r.content_type, r.status) for r in sidekick.received} == {
        ("POST", "/", "application/json", 200)
    }
    assert all(p["output_fields"]["cluster"] == "lab" for p in sidekick.published)
    assert [p["rule"] for p in sidekick.published] == [json.loads(line)["rule"] for line in lines]


def test_a_refused_detection_is_named_by_file_and_line_and_the_rest_still_go(
    tmp_path: Path, sidekick: FalcosidekickStandIn, detections: Path
) -> None:
    """A 400 is final for that line: one warning names file:line and Falcosidekick's answer,
    the next lines are still posted, and the summary counts the refusal."""
    first = detections.read_bytes().splitlines()[0]
    broken = json.loads(first)
    broken["rule"] = ""  # Check: no rule, no detection
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(first + b"\n" + json.dumps(broken).encode() + b"\n" + first + b"\n")
    result = send(str(source), "--falcosidekick", sidekick.url)
    assert result.returncode == 0
    assert result.stderr.startswith(f"streamproc: warning: {source}:2: Falcosidekick at ")
    assert f"refused it (HTTP 400 {BAD_BODY})" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout.strip().endswith("; it refused 1 (named above)")
    assert [r.status for r in sidekick.received] == [200, 400, 200]


def test_the_labs_malformed_samples_are_refused_and_every_other_one_posted(
    sidekick: FalcosidekickStandIn, detections: Path
) -> None:
    """The replay's deliberately broken lines never pass Falcosidekick (Falco sends none)."""
    lines = [line for line in detections.read_bytes().splitlines() if line.strip()]
    result = send(str(detections), "--falcosidekick", sidekick.url)
    refused = [r for r in sidekick.received if r.status == 400]
    assert refused
    assert result.returncode == 0
    assert len(result.stderr.strip().splitlines()) == len(refused), result.stderr
    assert len(sidekick.received) == len(lines)
    assert f"posted {len(lines) - len(refused)} detections" in result.stdout


def test_a_struggling_falcosidekick_is_retried_until_it_takes_the_detection(
    detections: Path,
) -> None:
    """5xx answers (outputs not ready yet) are retried; the detection gets in once."""
    with FalcosidekickStandIn(fail_first=2).serving() as standin:
        first = detections.read_bytes().splitlines()[0]
        source = detections.with_name("one.jsonl")
        source.write_bytes(first + b"\n")
        result = send(str(source), "--falcosidekick", standin.url)
    assert result.returncode == 0, result.stderr
    assert [r.status for r in standin.received] == [503, 503, 200]


def test_an_unreachable_falcosidekick_is_named_after_bounded_retries(detections: Path) -> None:
    """Nothing listens: a handful of tries, then one line with the cause and the fix."""
    url = f"http://127.0.0.1:{free_port()}/"
    result = send(str(detections), "--falcosidekick", url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"streamproc: error: {detections}:1: Falcosidekick at {url}")
    assert "was not reachable" in result.stderr
    assert "after 5 tries" in result.stderr
    assert "check that Falcosidekick listens there" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_url_that_is_not_http_is_a_usage_error(detections: Path) -> None:
    """No retries on a typo: exit 2 and the fix, before anything is read or sent."""
    result = send(str(detections), "--falcosidekick", "falcosidekick:2801")
    assert result.returncode == 2
    assert "is not an http(s) URL; e.g. http://falcosidekick:2801/" in result.stderr
    assert "Traceback" not in result.stderr


def test_send_stops_on_sigterm_while_retrying(detections: Path) -> None:
    """A signal ends the retries at once (exit 143, no traceback), well before they run out."""
    with FalcosidekickStandIn(fail_first=1000).serving() as standin:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "send", str(detections)],
            env={**os.environ, "STREAMPROC_FALCOSIDEKICK_URL": standin.url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: len(standin.received) >= 1, timeout=30, what="a first POST")
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=5)
        finally:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == "streamproc: interrupted", stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("GET", b"", 400),
        ("POST", b"", 400),
        ("POST", b"[]", 400),
        (
            "POST",
            b'{"priority":"Loud","rule":"r","time":"2026-01-01T00:00:00Z","output_fields":{"a":1}}',
            400,
        ),
        (
            "POST",
            b'{"priority":"info","rule":"r","time":"2026-01-01T00:00:00Z","output_fields":{"a":1}}',
            200,
        ),
        ("POST", b'{"priority":"Warning","rule":"r","time":5,"output_fields":{"a":1}}', 400),
        ("POST", b'{"priority":"Warning","rule":"r","time":"2026-01-01T00:00:00Z"}', 200),
    ],
    ids=[
        "get",
        "empty",
        "not-an-object",
        "unknown-priority",
        "info",
        "numeric-time",
        "only-customfields",
    ],
)
def test_the_stand_in_judges_requests_as_falcosidekick_does(
    sidekick: FalcosidekickStandIn, method: str, body: bytes, status: int
) -> None:
    """The double's own rules, so a lenient stand-in cannot hide a malformed request: without
    output_fields the customfields alone pass Check, as in newFalcoPayload."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(sidekick.url, data=body or None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            got, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        got, text = exc.code, exc.read().decode()
    assert got == status
    if status == 400:
        assert text.strip() in {BAD_BODY, BAD_METHOD}


def test_the_compose_labs_path_annotates_through_falcosidekick_on_kafka_4(
    tmp_path: Path,
    kafka4: KafkaGate,
    emulator: KubeEmulator,
    kubeconfig: Path,
    cluster: ClusterBuilder,
    detections: Path,
    pipelines: list[Pipeline],
) -> None:
    """send --falcosidekick -> Falcosidekick (stand-in: customfields, LZ4, key-less JSON as
    outputs/kafka.go) -> a Kafka 4.0 broker -> the three stages -> annotations.

    As in the compose lab, the stages are not told the cluster's name: a single cluster takes
    detections whatever cluster field Falcosidekick's customfields give them.
    """
    bootstrap = f"127.0.0.1:{kafka4.port}"
    env = {
        **os.environ,
        "STREAMPROC_BOOTSTRAP_SERVERS": bootstrap,
        "KUBECONFIG": str(kubeconfig),
    }
    pipeline = Pipeline("run", env, topology_file(tmp_path, "3s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    workload = next(w for w in cluster.workloads if w.name == "frontend")
    detection = samples.detection(
        workload, workload.pods[0], samples.RULES[0], time.time(), random.Random(5)
    )
    detection["output"] += " <&> "  # Go's encoder escapes these: the parser must not mind
    source = tmp_path / "one.jsonl"
    source.write_bytes(orjson.dumps(detection) + b"\n")
    standin = FalcosidekickStandIn(customfields={"cluster": "lab"}, publish_to=bootstrap)
    with standin.serving():
        result = send(str(source), "--falcosidekick", standin.url)
    assert result.returncode == 0, result.stderr
    assert standin.published[0]["output_fields"]["cluster"] == "lab"
    wait_for(lambda: annotated(emulator) >= set(workload.pods), timeout=90, what="annotations")
    assert pipeline.stop() == 0
    assert not kafka4.refused, kafka4.refused
