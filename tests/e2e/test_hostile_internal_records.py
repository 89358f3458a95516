"""Records on streamproc's own topics are input like any other.

A mistaken tool or a bad replay writing to ``streamproc.tallies`` or ``streamproc.actions`` used
to stop a stage (TypeError in the windows stage, in the annotator's DNS check) and stop it
again on every restart, since the record was never committed. Now every stage dead-letters
such records with a reason and the source position, and good work keeps flowing.
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
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import Pipeline, consume_all, produce, topology_file

pytestmark = pytest.mark.e2e

TALLY = {
    "topology": "retina-observe",
    "namespace": "shop",
    "kind": "Deployment",
    "name": "frontend",
    "resolved_by": "api",
    "window_start": 0,
    "count": 1,
    "first_append_ms": 0,
    "rule": "r",
    "priority": 4,
    "pod": "frontend-x",
    "uuids": [],
}
ACTION = {
    "id": "retina-observe/shop/Deployment/frontend/0",
    "topology": "retina-observe",
    "namespace": "shop",
    "kind": "Deployment",
    "name": "frontend",
    "resolved_by": "api",
    "pod": "frontend-x",
    "window_start": 0,
    "window_end": 60,
    "rule": "r",
    "priority": 4,
    "count": 1,
    "first_append_ms": 0,
    "uuids": [],
}
# complete records with one wrong type each: what used to stop a stage, and again on restart
HOSTILE_TALLIES = [
    b"not json",
    b"[]",
    orjson.dumps({**TALLY, "topology": []}),
    orjson.dumps({**TALLY, "count": True}),
]
HOSTILE_ACTIONS = [
    b"{",
    orjson.dumps({**ACTION, "namespace": 5}),
    orjson.dumps({**ACTION, "name": ["x"]}),
]


def test_hostile_records_on_both_internal_topics_are_dead_lettered_while_work_goes_on(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Hostile first, traffic after: the stages stay up and the good detection lands."""
    pipeline = Pipeline("run", env, topology_file(tmp_path, "2s", "60s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    wait_for(
        lambda: "running: ingest, windows, annotate" in pipeline.log.read_text(),
        timeout=60,
        what="the pipeline to start",
    )
    produce(broker.bootstrap, "streamproc.tallies", HOSTILE_TALLIES)
    produce(broker.bootstrap, "streamproc.actions", HOSTILE_ACTIONS)
    workload = cluster.workloads[0]
    detection = samples.detection(
        workload, workload.pods[0], samples.RULES[1], time.time(), random.Random(2)
    )
    produce(broker.bootstrap, "falco", [orjson.dumps(detection)])
    wait_for(
        lambda: workload.pods[0] in annotated(emulator),
        timeout=90,
        what=f"the good detection applied; log: {pipeline.log}",
    )
    wait_for(
        lambda: (
            pipeline.metric("streamproc_dead_letters_total")
            >= len(HOSTILE_TALLIES) + len(HOSTILE_ACTIONS)
        ),
        timeout=30,
        what="every hostile record dead-lettered",
    )
    assert pipeline.process.poll() is None
    letters = consume_all(broker.bootstrap, "streamproc.dlq", idle_s=1.0)
    reasons: dict[bytes, int] = {}
    for _, _, headers in letters:
        reason = headers["streamproc.reason"]
        reasons[reason] = reasons.get(reason, 0) + 1
        # every stage's dead letters say where the record came from
        assert headers["streamproc.source.topic"] in (b"streamproc.tallies", b"streamproc.actions")
        assert headers["streamproc.source.offset"].isdigit()
    assert reasons == {
        b"invalid-tally": len(HOSTILE_TALLIES),
        b"invalid-action": len(HOSTILE_ACTIONS),
    }
    assert "Traceback" not in pipeline.log.read_text()
