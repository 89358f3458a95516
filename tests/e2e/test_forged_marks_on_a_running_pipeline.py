"""A tenant's forged ``expires-at`` on its own pods stops nothing (issue 24, item 1).

``streamproc.io/expires-at: 9999-12-31T23:59:59-14:00`` on a pod used to stop ``streamproc
run`` within seconds of its start (``ValueError: year 10000 is out of range``), and again after
every restart, and on the detect path too. Marks on pods are now read through one validating
decoder: the forgery is refused (once, counted), the labelled one is ended, work goes on.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from tests.conftest import annotated, wait_for, workload
from tests.e2e.conftest import Pipeline, produce, topology_file

pytestmark = pytest.mark.e2e
FOREVER = "9999-12-31T23:59:59-14:00"


def test_forged_far_expiries_neither_stop_run_at_start_nor_on_the_detect_path(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Forged with label, action id and owned keys, and bare: run stays up and applies both."""
    frontend, checkout, redis = (workload(cluster, n) for n in ("frontend", "checkout", "redis"))
    full = {
        conventions.EXPIRES_AT: FOREVER,
        conventions.TOPOLOGY: "retina-observe",
        conventions.ACTION_ID: "retina-observe/shop/Deployment/frontend/1000",
        conventions.OWNED_KEYS: "retina.sh",
        "retina.sh": "observe",
    }
    labels = {conventions.OBSERVED_LABEL: "true"}
    meta = {"annotations": full, "labels": labels}
    emulator.update("Pod", "shop", frontend.pods[0], {"metadata": meta})
    bare = {"annotations": {conventions.EXPIRES_AT: FOREVER}}
    emulator.update("Pod", "shop", checkout.pods[0], {"metadata": bare})
    pipeline = Pipeline("run", env, topology_file(tmp_path, "2s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    wait_for(
        lambda: "running: ingest, windows, annotate" in pipeline.log.read_text(),
        timeout=60,
        what="the pipeline to start",
    )
    wait_for(
        lambda: (
            not (emulator.get("Pod", "shop", frontend.pods[0]) or {})["metadata"]["labels"].get(
                conventions.OBSERVED_LABEL
            )
        ),
        timeout=60,
        what=f"the labelled forgery to be ended; log: {pipeline.log}",
    )
    rng = random.Random(2)
    produce(
        broker.bootstrap,
        "falco",
        [
            orjson.dumps(samples.detection(w, w.pods[0], samples.RULES[1], time.time(), rng))
            for w in (redis, checkout)
        ],
    )
    wait_for(
        lambda: {redis.pods[0], checkout.pods[0]} <= annotated(emulator),
        timeout=90,
        what=f"the detection elsewhere and on the forged pod applied; log: {pipeline.log}",
    )
    written = (emulator.get("Pod", "shop", checkout.pods[0]) or {})["metadata"]["annotations"]
    until = conventions.parse_time(written[conventions.EXPIRES_AT])
    assert until is not None
    assert until <= time.time() + 60 + 5  # the topology's TTL, not the year 10000
    assert pipeline.process.poll() is None
    assert pipeline.metric("streamproc_marks_refused_total") >= 2  # two forgeries
    log = pipeline.log.read_text()
    assert "Traceback" not in log
    assert "marks refused" in log
