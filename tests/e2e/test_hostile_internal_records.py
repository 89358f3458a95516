"""Records on streamproc's own topics are input like any other.

A mistaken tool or a bad replay writing to ``streamproc.tallies`` or ``streamproc.actions`` used
to stop a stage (TypeError in the windows stage, in the annotator's DNS check) and stop it
again on every restart, since the record was never committed. Now every stage dead-letters
such records with a reason and the source position, and good work keeps flowing. A record that
decodes but that the annotator's own topology would never make (``kube-system``, streamproc's
own namespace, a Capture there) is refused as well: the annotator is the last line.
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
from tests.conftest import annotated, wait_for, workload
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


CAPTURING = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: capture-all
spec:
  action:
    ttl: 60s
    capture:
      priority: ">=Debug"
"""


def _forged(topology: str, namespace: str, kind: str, name: str, pod: str) -> bytes:
    """An action that decodes, for a workload no topology here may observe; current window."""
    start = int(time.time())
    return orjson.dumps(
        {
            **ACTION,
            "id": f"{topology}/{namespace}/{kind}/{name}/{start * 1000}",
            "topology": topology,
            "namespace": namespace,
            "kind": kind,
            "name": name,
            "pod": pod,
            "window_start": start,
            "window_end": start + 60,
            "first_append_ms": start * 1000,
        }
    )


def test_forged_actions_on_protected_namespaces_are_refused_and_dead_lettered(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Pods in kube-system and in streamproc's own namespace get no mark and no Capture."""
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "streamproc"}})
    emulator.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "annotator", "namespace": "streamproc", "labels": {}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.0.9.9"},
        }
    )
    topologies = topology_file(tmp_path, "2s", "60s")
    (topologies / "capture-all.yaml").write_text(CAPTURING)
    pipeline = Pipeline("run", env, topologies, tmp_path / "run.log")
    pipelines.append(pipeline)
    wait_for(
        lambda: "running: ingest, windows, annotate" in pipeline.log.read_text(),
        timeout=60,
        what="the pipeline to start",
    )
    coredns = workload(cluster, "coredns")
    forged = [
        _forged(name, "kube-system", "Deployment", "coredns", coredns.pods[0])
        for name in ("retina-observe", "capture-all")
    ] + [
        _forged(name, "streamproc", "Pod", "annotator", "annotator")
        for name in ("retina-observe", "capture-all")
    ]
    produce(broker.bootstrap, "streamproc.actions", forged)
    good = cluster.workloads[0]
    rule = samples.RULES[1]
    detection = samples.detection(good, good.pods[0], rule, time.time(), random.Random(2))
    produce(broker.bootstrap, "falco", [orjson.dumps(detection)])
    wait_for(
        lambda: good.pods[0] in annotated(emulator),
        timeout=90,
        what=f"the good detection applied; log: {pipeline.log}",
    )
    wait_for(
        lambda: pipeline.metric("streamproc_actions_refused_total") >= len(forged),
        timeout=30,
        what="every forged action refused",
    )
    assert not annotated(emulator) & {*coredns.pods, "annotator"}
    assert emulator.list("Capture", "kube-system") == []
    assert emulator.list("Capture", "streamproc") == []
    letters = consume_all(broker.bootstrap, "streamproc.dlq", idle_s=1.0)
    assert [h["streamproc.reason"] for _, _, h in letters] == [b"protected-namespace"] * 4
    assert pipeline.process.poll() is None
