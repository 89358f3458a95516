"""``streamproc run --prometheus-url``: a detection opens an observation, Prometheus scrapes the
pipeline's observed-pod gauge and a Retina-shaped exporter, and the expiry's audit record on
``streamproc.audit`` carries the evidence."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.retina_exporter import ExportedPod, RetinaExporter, annotated_in
from streamproc.model import conventions
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import Pipeline, consume_all, produce, topology_file
from tests.prometheus_server import running_prometheus

pytestmark = pytest.mark.e2e


def test_a_running_pipeline_writes_each_expirys_evidence_into_its_audit_record(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """The knob reaches the expirer: gauge scraped while observed, evidence in every record."""
    redis = next(w for w in cluster.workloads if w.name == "redis")
    exporter = RetinaExporter(
        [ExportedPod(redis.namespace, p, "10.0.0.9", "StatefulSet", "redis") for p in redis.pods],
        observed=annotated_in(lambda: emulator.list("Pod")),
    )
    listen = f"127.0.0.1:{free_port()}"
    with exporter:
        pipeline = Pipeline(
            "run",
            {
                **env,
                "STREAMPROC_PROMETHEUS_URL": f"http://{listen}",
                "STREAMPROC_EVIDENCE_DELAY": "1",
            },
            topology_file(tmp_path, "2s", "8s"),
            tmp_path / "run.log",
        )
        pipelines.append(pipeline)
        targets = {"retina": exporter.target, "streamproc": f"127.0.0.1:{pipeline.metrics_port}"}
        with running_prometheus(tmp_path, targets, listen=listen) as prom:
            rng = random.Random(3)
            detection = samples.detection(redis, redis.pods[0], samples.RULES[0], time.time(), rng)
            produce(broker.bootstrap, "falco", [orjson.dumps(detection)])
            wait_for(lambda: annotated(emulator), timeout=60, what="an observation")
            gauge = 'streamproc_observed_pod_since_seconds{workload_name="redis"}'
            wait_for(lambda: prom.has(gauge), timeout=30, what="the observed-pod gauge scraped")

            def released() -> bool:
                return not any(
                    conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
                    for p in emulator.list("Pod")
                )

            wait_for(released, timeout=60, what="the observation to expire")

            def expired() -> list[dict[str, object]]:
                records = [
                    orjson.loads(v or b"")
                    for _, v, _ in consume_all(broker.bootstrap, "streamproc.audit", idle_s=1.0)
                ]
                return [r for r in records if r["result"] == "expired" and "evidence" in r]

            wait_for(lambda: len(expired()) == len(redis.pods), timeout=60, what="the records")
            wait_for(lambda: not prom.has(gauge), timeout=30, what="the gauge to go")
        assert pipeline.stop() == 0
    for record in expired():
        found = record["evidence"]
        assert isinstance(found, dict)
        assert found["source"] == "networkobservability_adv_*", found
        assert found["forward"]["egress"]["packets"] > 0
        assert found["dns"][0]["query"] == "evil.example.com."
