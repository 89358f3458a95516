"""A fleet on one Kafka: two clusters' detections on one topic, each acted on in its own cluster."""

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
from streamproc.settings import DEFAULTS
from tests.conftest import annotated, wait_for, workload
from tests.e2e.conftest import Pipeline, consume_all, produce, topology_file

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
    """Cluster a's detections observe a's pods only, b's only b's; an unknown cluster's none."""
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
            line(workload(cluster, "redis"), rng, "c"),  # no annotator, no context for c
            line(frontend, rng, "Not a cluster!"),  # dead-lettered
        ],
    )
    in_a = {*frontend.pods, *checkout.pods}
    in_b = {*api.pods, *exporter.pods}
    wait_for(lambda: annotated(emulator) == in_a, timeout=90, what="a's two workloads")
    wait_for(lambda: annotated(cluster_b) == in_b, timeout=60, what="b's two workloads")
    actions = DEFAULTS.topics.actions
    to_c = wait_for(lambda: consume_all(broker.bootstrap, f"{actions}.c"), what="c's action")
    assert [orjson.loads(v or b"")["cluster"] for _, v, _ in to_c] == ["c"]
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
    assert [h.get("streamproc.reason") for _, _, h in dead] == [b"invalid-cluster"]
    audit = [
        orjson.loads(v or b"") for _, v, _ in consume_all(broker.bootstrap, "streamproc.audit")
    ]
    assert {(r["cluster"], r["name"]) for r in audit if r["result"] == "applied"} == {
        ("a", "frontend"),
        ("a", "checkout"),
        ("b", "api"),
        ("b", "node-exporter"),
    }
