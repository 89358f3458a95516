"""The docker-compose lab, checked without a Docker engine: spec-valid, files present, consistent.

What is *not* run here (no engine on CI machines): pulling images, building the Dockerfile and
starting the services. See README "docker-compose lab".
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import compose
import pytest
import yaml

from streamproc.model import topologies
from streamproc.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(next(iter(compose.__path__))) / "docker-compose"


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The compose file as the Compose v2 binary normalises it (no daemon involved)."""
    result = subprocess.run(
        [str(BINARY), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_compose_file_passes_the_compose_spec_validation() -> None:
    """`docker compose config --quiet` with the real Compose v2 binary exits 0."""
    result = subprocess.run(
        [str(BINARY), "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_validation_can_fail(tmp_path: Path) -> None:
    """A broken depends_on condition is refused by the same binary."""
    broken = (
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace("condition: service_healthy", "condition: service_happy", 1)
    )
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = subprocess.run(
        [str(BINARY), "-f", str(tmp_path / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_every_referenced_file_exists(model: dict[str, Any]) -> None:
    """Bind mounts and build contexts point at files in the repository."""
    for name, service in model["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"].get("dockerfile", "Dockerfile")).exists()


def test_services_agree_on_topics_addresses_and_ports(model: dict[str, Any]) -> None:
    """Falcosidekick writes where the topology reads; stages use the advertised Kafka address;
    Prometheus scrapes the services' metrics ports; everything comes up in order."""
    services = model["services"]
    kafka_address = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    sidekick = services["falcosidekick"]["environment"]
    assert sidekick["KAFKA_HOSTPORT"] == kafka_address
    assert sidekick["KAFKA_REQUIREDACKS"] == "ALL"
    source_topics = {t.spec.source.topic for t in topologies.load_path(ROOT / "topologies")}
    assert source_topics == {sidekick["KAFKA_TOPIC"]}
    stages = {n: s for n, s in services.items() if n.startswith("streamproc-")}
    assert {s["command"][0] for s in stages.values()} == {"ingest", "windows", "annotate"}
    for service in stages.values():
        assert service["environment"]["STREAMPROC_BOOTSTRAP_SERVERS"] == kafka_address
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service["healthcheck"]["test"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t for c in scrape["scrape_configs"] for s in c["static_configs"] for t in s["targets"]
    }
    assert targets == {
        f"{n}:{s['environment']['STREAMPROC_METRICS_PORT']}" for n, s in stages.items()
    }
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_the_dockerfile_fetches_nothing_at_run_time() -> None:
    """Dependencies install at build time; the entrypoint is streamproc, run as non-root."""
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert not re.search(r"^\s*ADD\s+https?://", text, re.MULTILINE)
    assert "--no-index" in final  # the runtime stage installs only the wheels built before
    assert re.search(r"^USER 10001", final, re.MULTILINE)
    assert 'ENTRYPOINT ["streamproc"]' in final
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (ROOT / copied).exists(), copied


def test_the_replay_goes_through_falcosidekick_on_kafka_4(model: dict[str, Any]) -> None:
    """The replay posts to Falcosidekick's HTTP input (never straight to Kafka), Falcosidekick
    names the cluster in the field streamproc reads, and the broker is an Apache Kafka 4."""
    services = model["services"]
    replay, sidekick = services["replay"], services["falcosidekick"]
    url = urllib.parse.urlsplit(replay["environment"]["STREAMPROC_FALCOSIDEKICK_URL"])
    published = {p["target"] for p in sidekick.get("ports", [])}
    assert (url.scheme, url.hostname, url.port) == ("http", "falcosidekick", 2801)
    assert url.port in published
    assert "streamproc send" in " ".join(replay["entrypoint"])
    assert "STREAMPROC_BOOTSTRAP_SERVERS" not in replay["environment"]
    assert replay["depends_on"]["falcosidekick"]["condition"] == "service_healthy"
    assert sidekick["healthcheck"]["test"]
    # CUSTOMFIELDS=key:value,... (falcosidekick config.go); the key is streamproc's cluster field
    fields = dict(pair.split(":", 1) for pair in sidekick["environment"]["CUSTOMFIELDS"].split(","))
    assert fields.get(Settings().cluster_field), fields
    image, _, tag = services["kafka"]["image"].partition(":")
    assert image == "apache/kafka"
    assert int(tag.split(".")[0]) >= 4, tag


def test_grafana_provisions_every_generated_dashboard(model: dict[str, Any]) -> None:
    """Each deploy/grafana/*.json lands in the folder the file provider reads (evidence too)."""
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/streamproc.yml").read_text()
    )
    folder = Path(provider["providers"][0]["options"]["path"])
    mounted = {
        Path(v["source"]).resolve(): Path(v["target"])
        for v in model["services"]["grafana"]["volumes"]
        if v["type"] == "bind"
    }
    boards = sorted((ROOT / "deploy/grafana").glob("*.json"))
    assert {b.name for b in boards} >= {"streamproc.json", "evidence.json"}
    for board in boards:
        assert mounted.get(board.resolve()) == folder / board.name, board.name
