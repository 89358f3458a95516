"""The whole flow with the acns-metric-filters backend: detections become ContainerNetworkMetric
include filters beside a user's own, and leave it as it was when the observations expire."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from streamproc.model import metric_filters as projection
from tests.conftest import annotated, wait_for, workload
from tests.e2e.conftest import Pipeline, consume_all, produce, topology_file

pytestmark = pytest.mark.e2e
USERS: dict[str, Any] = {
    "apiVersion": "acn.azure.com/v1alpha1",
    "kind": "ContainerNetworkMetric",
    "metadata": {"name": "container-network-metric"},
    "spec": {
        "filters": [
            {
                "metric": "drop",
                "excludeFilters": [{"from": {"namespacedPod": ["kube-system/"]}}],
            }
        ]
    },
}


def in_filters(emulator: KubeEmulator) -> set[str]:
    found = emulator.list("ContainerNetworkMetric")
    return projection.named_pods(found[0]["spec"]) if found else set()


def test_detections_become_metric_filters_and_leave_the_users_object_as_it_was(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Observed pods appear as ns/pod in the user's singleton, no retina.sh; at expiry they go."""
    emulator.create(copy.deepcopy(USERS))
    before = emulator.list("ContainerNetworkMetric")[0]
    rng = random.Random(5)
    observed = [workload(cluster, "frontend"), workload(cluster, "redis")]
    lines = [
        orjson.dumps(samples.detection(w, w.pods[0], samples.RULES[0], time.time(), rng))
        for w in observed
    ]
    pipeline = Pipeline(
        "run",
        {**env, "STREAMPROC_OBSERVATION_BACKEND": "acns-metric-filters"},
        topology_file(tmp_path, "3s", "15s"),
        tmp_path / "run.log",
    )
    pipelines.append(pipeline)
    produce(broker.bootstrap, "falco", lines)

    expected = {f"{w.namespace}/{pod}" for w in observed for pod in w.pods}
    wait_for(lambda: in_filters(emulator) == expected, timeout=60, what="the pods in filters")
    assert not annotated(emulator)  # Hubble ignores retina.sh: none is written
    labelled = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in emulator.list("Pod")
        if (p["metadata"].get("labels") or {}).get(conventions.OBSERVED_LABEL) == "true"
    }
    assert labelled == expected  # the marks stay the truth

    def ended() -> bool:
        return not in_filters(emulator) and not any(
            conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
            for p in emulator.list("Pod")
        )

    wait_for(ended, timeout=60, what="every observation and its filters to end")
    assert pipeline.metric("streamproc_metric_filters_writes_total", result="replaced") >= 2
    assert pipeline.stop() == 0
    after = emulator.list("ContainerNetworkMetric")
    assert [a["spec"] for a in after] == [before["spec"]]
    audit = [
        orjson.loads(v or b"") for _, v, _ in consume_all(broker.bootstrap, "streamproc.audit")
    ]
    assert {r["name"] for r in audit if r["result"] == "applied"} == {w.name for w in observed}
    assert {f"shop/{r['name']}" for r in audit if r["result"] == "expired"} == expected
