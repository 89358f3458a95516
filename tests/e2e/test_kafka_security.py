"""TLS and SASL on every Kafka connection, negotiated by the real clients against a real peer.

The peer is ``tests/kafka_gate.py`` in front of tansu (this tansu build offers neither a working
TLS listener nor SCRAM users on memory storage: a broker limit, not ours). Each stage (the
aiokafka ingest and annotator, Faust's windows stage, the admin client that creates topics)
must get through it, or no annotation would ever appear.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trustme

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import Pipeline, topology_file
from tests.kafka_gate import KafkaGate

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
USERS = {
    mechanism: {"falco-reader": PASSWORD}
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
}


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    """A throwaway CA; its certificate is what the clients are told to trust."""
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return authority


@pytest.fixture
def gate(tmp_path: Path, ca: trustme.CA) -> Iterator[KafkaGate]:
    """tansu behind a TLS + SASL front; tansu tells clients to connect to the front."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    front = KafkaGate(port=free_port(), upstream_port=free_port(), tls=context, users=USERS)
    broker = EmbeddedBroker(
        port=front.upstream_port, advertised_port=front.port, log=tmp_path / "tansu.log"
    )
    with broker.running(), front.serving():
        yield front


def secure_env(tmp_path: Path, gate: KafkaGate, mechanism: str, password: str) -> dict[str, str]:
    secret = tmp_path / "sasl-password"
    secret.write_text(password + "\n")  # as a mounted Secret often is
    return {
        **os.environ,
        "STREAMPROC_BOOTSTRAP_SERVERS": f"127.0.0.1:{gate.port}",
        "STREAMPROC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMPROC_KAFKA_SASL_MECHANISM": mechanism,
        "STREAMPROC_KAFKA_SASL_USERNAME": "falco-reader",
        "STREAMPROC_KAFKA_SASL_PASSWORD_FILE": str(secret),
        "STREAMPROC_KAFKA_SSL_CAFILE": str(tmp_path / "ca.pem"),
    }


def send(
    env: dict[str, str], tmp_path: Path, lines: list[bytes]
) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "detections.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    return subprocess.run(
        [sys.executable, "-m", "streamproc", "send", str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_send_authenticates_with_each_mechanism_over_tls(
    tmp_path: Path, gate: KafkaGate, cluster: ClusterBuilder, mechanism: str
) -> None:
    workload = cluster.workloads[0]
    lines = [
        orjson.dumps(
            samples.detection(
                workload, workload.pods[0], samples.RULES[0], time.time(), random.Random(1)
            )
        )
    ]
    result = send(secure_env(tmp_path, gate, mechanism, PASSWORD), tmp_path, lines)
    assert result.returncode == 0, result.stderr
    assert "sent 1 detections" in result.stdout
    assert "falco-reader" in gate.authenticated
    assert not gate.refused


def test_a_wrong_password_is_refused_and_never_printed(tmp_path: Path, gate: KafkaGate) -> None:
    wrong = "not-the-password-4711"
    result = send(secure_env(tmp_path, gate, "SCRAM-SHA-512", wrong), tmp_path, [b"{}"])
    assert result.returncode == 1
    assert result.stderr.startswith("streamproc: error: Kafka refused the credentials")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert wrong not in result.stdout + result.stderr
    assert not gate.authenticated
    assert gate.refused


def test_a_stage_refused_its_credentials_stops_with_one_line_instead_of_waiting(
    tmp_path: Path, gate: KafkaGate
) -> None:
    """Refused credentials are not an outage: a stage says so once and exits 1, no retry loop.

    `ingest` needs no cluster, so Kafka's refusal is the first thing it meets (`run` and
    `annotate` check the cluster's credentials first).
    """
    env = secure_env(tmp_path, gate, "SCRAM-SHA-512", "not-the-password")
    result = subprocess.run(
        [sys.executable, "-m", "streamproc", "ingest", "--metrics-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("streamproc: error: Kafka refused the credentials"), result.stderr
    assert "Traceback" not in result.stderr
    assert "not reachable" not in result.stderr


def test_an_untrusted_broker_certificate_is_refused(tmp_path: Path, gate: KafkaGate) -> None:
    env = secure_env(tmp_path, gate, "SCRAM-SHA-512", PASSWORD)
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    env["STREAMPROC_KAFKA_SSL_CAFILE"] = str(tmp_path / "other-ca.pem")
    result = send(env, tmp_path, [b"{}"])
    assert result.returncode == 1
    assert result.stderr.startswith("streamproc: error: TLS with Kafka failed"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not gate.authenticated  # TLS failed before any credentials were sent


def test_sasl_without_credentials_is_refused_at_start(tmp_path: Path, gate: KafkaGate) -> None:
    env = secure_env(tmp_path, gate, "SCRAM-SHA-512", PASSWORD)
    del env["STREAMPROC_KAFKA_SASL_PASSWORD_FILE"]
    env.pop("STREAMPROC_KAFKA_SASL_PASSWORD", None)
    result = send(env, tmp_path, [b"{}"])
    assert result.returncode == 2
    assert "SASL_SSL needs a SASL username and password" in result.stderr


def test_the_whole_pipeline_runs_over_sasl_ssl(
    tmp_path: Path,
    gate: KafkaGate,
    emulator: KubeEmulator,
    kubeconfig: Path,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Ingest, Faust's windows stage and the annotator all authenticate; the flow works."""
    env = {
        **secure_env(tmp_path, gate, "SCRAM-SHA-512", PASSWORD),
        "KUBECONFIG": str(kubeconfig),
        "STREAMPROC_LOG_LEVEL": "DEBUG",
    }
    pipeline = Pipeline("run", env, topology_file(tmp_path, "3s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    workload = next(w for w in cluster.workloads if w.name == "frontend")
    detection = samples.detection(
        workload, workload.pods[0], samples.RULES[0], time.time(), random.Random(2)
    )
    assert send(env, tmp_path, [orjson.dumps(detection)]).returncode == 0
    wait_for(lambda: annotated(emulator) >= set(workload.pods), timeout=60, what="annotations")
    assert pipeline.stop() == 0
    assert len(gate.authenticated) >= 4  # one connection per client at the very least
    assert not gate.refused
    assert PASSWORD not in pipeline.log.read_text()


def test_doctor_checks_kafka_over_sasl_ssl_and_names_refused_credentials(
    tmp_path: Path, gate: KafkaGate, kubeconfig: Path
) -> None:
    """doctor uses the same TLS and SASL as the stages: ✔ brokers with the right password,
    ✘ brokers with the cause and fix (never the password) with a wrong one."""

    def doctor(password: str) -> dict[str, dict[str, str]]:
        env = {
            **secure_env(tmp_path, gate, "SCRAM-SHA-512", password),
            "KUBECONFIG": str(kubeconfig),
        }
        result = subprocess.run(
            [sys.executable, "-m", "streamproc", "doctor", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert password not in result.stdout + result.stderr
        return {c["name"]: c for c in json.loads(result.stdout)["checks"] if c["area"] == "Kafka"}

    good = doctor(PASSWORD)
    assert good["brokers"]["status"] == "ok"
    assert "SASL_SSL" in good["brokers"]["detail"]
    bad = doctor("not-the-password-4711")
    assert list(bad) == ["brokers"]
    assert bad["brokers"]["status"] == "fail"
    assert "refused the credentials" in bad["brokers"]["fix"]
