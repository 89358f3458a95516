"""``streamproc run`` with ``--mark-key-file``: every part of the annotate stage uses the key.

The annotator seals what it opens, the follower what it follows, and the expirer ends marks in
streamproc's exact form that carry no seal: one key, one policy, from one setting.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from streamproc.cluster import marking
from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions, marks
from tests.conftest import wait_for, workload
from tests.e2e.conftest import Pipeline, produce, topology_file
from tests.stages.annotate.test_following import new_frontend_pod

pytestmark = pytest.mark.e2e
KEY = "0123456789abcdef" * 4


def sealed_marks(emulator: KubeEmulator, pod: str, policy: marks.Policy) -> bool:
    """Whether the pod carries marks whose seal the key verifies."""
    found = emulator.get("Pod", "shop", pod) or {}
    if conventions.SEAL not in (found.get("metadata", {}).get("annotations") or {}):
        return False
    return isinstance(marking.read(found, now=time.time(), policy=policy), marks.Marks)


def test_run_with_a_key_seals_what_it_opens_and_follows_and_ends_unsealed_marks(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """A tenant's unsealed copy is ended; a detection's pods and a followed pod are sealed."""
    key_file = tmp_path / "mark-key"
    key_file.write_text(f"{KEY}\n")
    policy = marks.Policy(sealer=marking.sealer(key_file))
    frontend, redis = workload(cluster, "frontend"), workload(cluster, "redis")
    forged = {
        conventions.EXPIRES_AT: conventions.format_time(time.time() + 60),
        conventions.TOPOLOGY: "retina-observe",
        conventions.ACTION_ID: "retina-observe/shop/StatefulSet/redis/1000",
        conventions.OWNED_KEYS: "retina.sh",
        "retina.sh": "observe",
    }
    labels = {conventions.OBSERVED_LABEL: "true"}
    emulator.update(
        "Pod", "shop", redis.pods[0], {"metadata": {"annotations": forged, "labels": labels}}
    )
    topologies = topology_file(tmp_path, "2s", "60s")
    keyed = {**env, "STREAMPROC_MARK_KEY_FILE": str(key_file)}
    pipeline = Pipeline("run", keyed, topologies, tmp_path / "run.log")
    pipelines.append(pipeline)
    wait_for(
        lambda: (
            not (emulator.get("Pod", "shop", redis.pods[0]) or {})["metadata"]["labels"].get(
                conventions.OBSERVED_LABEL
            )
        ),
        timeout=60,
        what=f"the unsealed copy to be ended; log: {pipeline.log}",
    )
    rng = random.Random(3)
    detection = samples.detection(frontend, frontend.pods[0], samples.RULES[1], time.time(), rng)
    produce(broker.bootstrap, "falco", [orjson.dumps(detection)])
    wait_for(
        lambda: all(sealed_marks(emulator, p, policy) for p in frontend.pods),
        timeout=90,
        what=f"the detection's pods to be sealed; log: {pipeline.log}",
    )
    new_frontend_pod(emulator, "frontend-ngq2cd9wfp-e2e00")
    wait_for(
        lambda: sealed_marks(emulator, "frontend-ngq2cd9wfp-e2e00", policy),
        timeout=60,
        what=f"the followed pod to be sealed; log: {pipeline.log}",
    )
    assert pipeline.metric("streamproc_marks_refused_total", reason="unsealed") == 1
    assert pipeline.metric("streamproc_marks_refused_total", reason="bad-seal") == 0
    assert pipeline.process.poll() is None
    assert "Traceback" not in pipeline.log.read_text()
