"""A fleet on one Kafka: two clusters' detections on one topic, each acted on in its own cluster.

The fleet is declared (``--cluster``, ``--cluster-contexts``): a detection or a tally naming any
other cluster is dead-lettered and creates no topic.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload, sample_cluster
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model.tallies import start_tally
from streamproc.model.workloads import WorkloadRef
from streamproc.settings import DEFAULTS
from tests.conftest import annotated, wait_for, workload
from tests.e2e.conftest import Pipeline, consume_all, produce, topic_names, topology_file

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster_b(tmp_path: Path) -> Iterator[KubeEmulator]:
    """A second cluster, with the same workload names as the first."""
    emu = KubeEmulator()
    for obj in sample_cluster().objects:
        emu.create(obj)
    with emu.serve():
        emu.write_kubeconfig(tmp_path / "kubeconfig-b")
        yield emu


def fleet_kubeconfig(path: Path, servers: dict[str, str]) -> Path:
    """One kubeconfig with a context per cluster (named after it); the first is current."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": "streamproc", "user": {"token": "emulator"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "streamproc"}} for n in servers],
        "current-context": next(iter(servers)),
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def line(workload: SampleWorkload, rng: random.Random, cluster: str | None) -> bytes:
    doc = samples.detection(workload, workload.pods[0], samples.RULES[0], time.time(), rng)
    if cluster is not None:  # as Falcosidekick's CUSTOMFIELDS=cluster:NAME adds it
        doc["output_fields"]["cluster"] = cluster
    return orjson.dumps(doc)


def test_two_clusters_on_one_topic_never_act_on_each_other(
    tmp_path: Path,
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    cluster_b: KubeEmulator,
    pipelines: list[Pipeline],
) -> None:
    """Cluster a's detections observe a's pods only, b's only b's; any other cluster's nothing:
    its detections and tallies are dead-lettered, and no topic is made for it.
    """
    topologies = topology_file(tmp_path, "1s", "10m")
    kubeconfig = fleet_kubeconfig(tmp_path / "fleet", {"a": emulator.url, "b": cluster_b.url})
    base = {
        **os.environ,
        "STREAMPROC_BOOTSTRAP_SERVERS": broker.bootstrap,
        "STREAMPROC_LOG_LEVEL": "INFO",
    }
    central = {
        **base,
        "KUBECONFIG": str(kubeconfig),
        "STREAMPROC_CLUSTER": "a",
        "STREAMPROC_CLUSTER_CONTEXTS": "b=b",
    }
    pipelines.extend(
        Pipeline(stage, central, topologies, tmp_path / f"{stage}.log")
        for stage in ("ingest", "windows")
    )
    for name, config in (("a", tmp_path / "kubeconfig"), ("b", tmp_path / "kubeconfig-b")):
        pipelines.append(
            Pipeline(
                "annotate",
                {**base, "KUBECONFIG": str(config), "STREAMPROC_CLUSTER": name},
                topologies,
                tmp_path / f"annotate-{name}.log",
            )
        )
    rng = random.Random(5)
    frontend, checkout = workload(cluster, "frontend"), workload(cluster, "checkout")
    api, exporter = workload(cluster, "api"), workload(cluster, "node-exporter")
    produce(
        broker.bootstrap,
        "falco",
        [
            line(frontend, rng, "a"),
            line(checkout, rng, None),  # no cluster field: the central deployment's own, a
            line(api, rng, "b"),
            line(exporter, rng, "b"),  # a DaemonSet: resolved through b's API, not by its name
            line(workload(cluster, "redis"), rng, "c"),  # not in the fleet: dead-lettered
            line(frontend, rng, "Not a cluster!"),  # dead-lettered
            *(line(checkout, rng, f"made-up-{i}") for i in range(5)),  # dead-lettered, no topic
        ],
    )
    in_a = {*frontend.pods, *checkout.pods}
    in_b = {*api.pods, *exporter.pods}
    wait_for(lambda: annotated(emulator) == in_a, timeout=90, what="a's two workloads")
    wait_for(lambda: annotated(cluster_b) == in_b, timeout=60, what="b's two workloads")
    # a record on our own topic is no more trusted: a forged tally for c makes nothing either
    redis = WorkloadRef("shop", "StatefulSet", "redis", "api")
    forged = start_tally("retina-observe", redis, 0, 0, "forged", 4, "", "", cluster="c")
    produce(broker.bootstrap, DEFAULTS.topics.tallies, [forged.encode()])
    actions = DEFAULTS.topics.actions
    dead = wait_for(
        lambda: [
            r
            for r in consume_all(broker.bootstrap, DEFAULTS.topics.dead_letters, idle_s=0.5)
            if r[2].get("streamproc.stage") == b"windows"
        ],
        what="the forged tally dead-lettered",
    )
    assert [h["streamproc.reason"] for _, _, h in dead] == [b"unknown-cluster"]
    assert {t for t in topic_names(broker.bootstrap) if t.startswith(actions)} == {
        f"{actions}.a",
        f"{actions}.b",
    }
    to_b = consume_all(broker.bootstrap, f"{actions}.b")
    assert sorted(orjson.loads(v or b"")["name"] for _, v, _ in to_b) == ["api", "node-exporter"]
    assert {orjson.loads(v or b"")["resolved_by"] for _, v, _ in to_b} == {"api"}
    to_a = consume_all(broker.bootstrap, f"{actions}.a")
    assert sorted(orjson.loads(v or b"")["name"] for _, v, _ in to_a) == ["checkout", "frontend"]
    assert consume_all(broker.bootstrap, actions, idle_s=0.5) == []  # no cluster-less action
    # nothing crossed: each cluster holds exactly its own observations, c's went nowhere
    assert annotated(emulator) == in_a
    assert annotated(cluster_b) == in_b
    dead = consume_all(broker.bootstrap, DEFAULTS.topics.dead_letters)
    assert sorted((h["streamproc.stage"], h["streamproc.reason"]) for _, _, h in dead) == [
        (b"ingest", b"invalid-cluster"),
        *[(b"ingest", b"unknown-cluster")] * 6,
        (b"windows", b"unknown-cluster"),
    ]
    audit = [
        orjson.loads(v or b"") for _, v, _ in consume_all(broker.bootstrap, "streamproc.audit")
    ]
    warned = (tmp_path / "ingest.log").read_text()
    assert warned.count("cluster 'c' is not one of the fleet's (a, b)") == 1  # once, a WARNING
    assert {(r["cluster"], r["name"]) for r in audit if r["result"] == "applied"} == {
        ("a", "frontend"),
        ("a", "checkout"),
        ("b", "api"),
        ("b", "node-exporter"),
    }
