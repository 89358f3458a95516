"""A real Prometheus (Debian's package) scrapes a running pipeline with the repo's config."""

from __future__ import annotations

import json
import random
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
import yaml

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import Pipeline, produce, topology_file
from tests.prometheus_server import running_prometheus

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")


def query(base: str, expr: str) -> dict[str, object]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_prometheus_scrapes_key_series_and_loads_the_rules(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Throughput, dead-letter, action and patch series reach Prometheus; rules are healthy."""
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    pipeline = Pipeline("run", env, topology_file(tmp_path, "2s", "30s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ROOT / "deploy/prometheus/rules.yml")]
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{pipeline.metrics_port}"]}
    ]
    with running_prometheus(tmp_path, {}, config=config) as prometheus:
        base = prometheus.url
        rng = random.Random(2)
        redis = next(w for w in cluster.workloads if w.name == "redis")
        produce(
            broker.bootstrap,
            "falco",
            [
                orjson.dumps(
                    samples.detection(redis, redis.pods[0], samples.RULES[0], time.time(), rng)
                ),
                samples.MALFORMED[0][0],
            ],
        )
        wait_for(lambda: annotated(emulator), timeout=60, what="an observation")

        def has(expr: str) -> bool:
            try:
                return bool(query(base, expr)["data"]["result"])  # type: ignore[index]
            except OSError:
                return False

        for expr in (
            'streamproc_records_consumed_total{stage="ingest"} > 0',
            'streamproc_dead_letters_total{reason="invalid-json"} > 0',
            "streamproc_actions_emitted_total > 0",
            'streamproc_patches_total{op="observe",result="ok"} > 0',
            "streamproc_observations_active > 0",
            "streamproc_build_info",
            'streamproc_consumer_lag_records{stage="ingest"}',
            'streamproc_consumer_lag_records{stage="windows"}',
            'streamproc_consumer_lag_records{stage="annotate"}',
            'up{job="streamproc"} == 1',
        ):
            wait_for(lambda expr=expr: has(expr), timeout=30, what=f"series {expr}")

        board = json.loads((ROOT / "deploy/grafana/streamproc.json").read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                assert query(base, target["expr"])["status"] == "success", target["expr"]

        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {g["name"] for g in groups} == {"streamproc.recording", "streamproc.alerts"}
        wait_for(
            lambda: all(r.get("health") == "ok" for r in rules_now(base)),
            timeout=15,
            what="every rule evaluated healthy",
        )
        # every rule of the file is loaded (the file's own count, so a new alert needs no edit here)
        written = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
        assert len(rules) == sum(len(g["rules"]) for g in written["groups"]) >= 9


def rules_now(base: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as response:
        groups = json.loads(response.read())["data"]["groups"]
    return [r for g in groups for r in g["rules"]]
