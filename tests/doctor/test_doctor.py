"""``streamproc doctor`` against the embedded broker and the emulated cluster, good and bad."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamproc.clients import kafka
from streamproc.doctor import diagnosing
from streamproc.doctor.checks import Check
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import ClusterBuilder, sample_cluster
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import topologies
from streamproc.settings import Settings
from tests.conftest import topology

ROOT = Path(__file__).resolve().parents[2]
PLAIN = topologies.load_path(ROOT / "topologies")
CAPTURING = [topology("10m", name="capturing", capture={"duration": "30s"})]


@contextlib.contextmanager
def emulated(
    tmp_path: Path, builder: ClusterBuilder, tweak: Callable[[KubeEmulator], None] | None = None
) -> Iterator[Path]:
    """An emulated cluster of ``builder``'s objects, changed by ``tweak``; yields a kubeconfig."""
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    if tweak is not None:
        tweak(emulator)
    with emulator.serve():
        yield emulator.write_kubeconfig(tmp_path / "kubeconfig")


def cluster_with(**retina: Any) -> ClusterBuilder:
    builder = ClusterBuilder()
    builder.deployment("shop", "frontend", 2, "nginx:1.27")
    if retina.pop("installed", True):
        builder.retina(**retina)
    return builder


def by_name(found: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in found}


def _metrics_configuration(emulator: KubeEmulator) -> None:
    emulator.create(
        {
            "apiVersion": "retina.sh/v1alpha1",
            "kind": "MetricsConfiguration",
            "metadata": {"name": "all-pods"},
            "spec": {"contextOptions": [{"metricName": "drop_count"}]},
        }
    )


def _hubble(emulator: KubeEmulator) -> None:
    emulator.update(
        "ConfigMap",
        "kube-system",
        "retina-config",
        {"data": {"config.yaml": None, "enable-hubble": "true", "cluster-name": "c"}},
    )


BAD_SHAPES: dict[str, tuple[dict[str, Any], Callable[[KubeEmulator], None] | None, Any, str]] = {
    # shape: (ClusterBuilder.retina arguments, emulator tweak, topologies, failing check(s))
    "no Retina at all": ({"installed": False}, None, PLAIN, "mechanism"),
    "Retina 1.1": ({"version": "v1.1.0"}, None, PLAIN, "agent version"),
    "annotations off": ({"config": {"enableAnnotations": False}}, None, PLAIN, "annotations"),
    "pod level off": ({"config": {"enablePodLevel": False}}, None, PLAIN, "pod-level metrics"),
    "IP lookup bypassed": (
        {"config": {"bypassLookupIPOfInterest": True}},
        None,
        PLAIN,
        "IP lookup",
    ),
    "annotations off by env": (
        {"env": {"RETINA_ENABLEANNOTATIONS": "false"}},
        None,
        PLAIN,
        "annotations",
    ),
    "small filter map": ({"config": {"filterMapMaxEntries": 150}}, None, PLAIN, "node budget"),
    "Hubble control plane": ({}, _hubble, PLAIN, "mechanism"),
    "MetricsConfiguration in use": ({}, _metrics_configuration, PLAIN, "MetricsConfiguration"),
    "no Capture CRD": (
        {},
        lambda e: e.uninstalled.add(("retina.sh", "captures")),
        CAPTURING,
        "Capture CRD",
    ),
    "no operator for captures": ({"operator": False}, None, CAPTURING, "operator"),
    "no operator for remoteContext": (
        {"operator": False, "config": {"remoteContext": True}},
        None,
        PLAIN,
        "operator",
    ),
    "may not patch pods": (
        {},
        lambda e: e.denied.add(("", "pods", "patch")),
        PLAIN,
        "annotate permissions",
    ),
    "may not get replicasets": (
        {},
        lambda e: e.denied.add(("apps", "replicasets", "get")),
        PLAIN,
        ("ingest permissions", "annotate permissions"),
    ),
    "may not create captures": (
        {},
        lambda e: e.denied.add(("retina.sh", "captures", "create")),
        CAPTURING,
        "annotate permissions",
    ),
}


async def test_a_good_retina_install_passes_every_cluster_check(
    tmp_path: Path,
) -> None:
    """Retina as its chart installs it with the two flags on: every cluster check is ✔."""
    with emulated(tmp_path, sample_cluster()) as kubeconfig:
        found = await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), CAPTURING)
    assert {c.status for c in found} == {"ok"}, [c for c in found if c.status != "ok"]
    names = by_name(found)
    for name in (
        "API server",
        "ingest permissions",
        "annotate permissions",
        "agent version",
        "annotations",
        "pod-level metrics",
        "node budget",
        "MetricsConfiguration",
        "Capture CRD",
        "operator",
    ):
        assert name in names


@pytest.mark.parametrize("shape", sorted(BAD_SHAPES))
async def test_each_bad_retina_or_rbac_shape_fails_its_own_check(
    tmp_path: Path, shape: str
) -> None:
    """Every way the cluster can silently ignore streamproc is one ✘ line with a fix."""
    retina_args, tweak, loaded, failing = BAD_SHAPES[shape]
    with emulated(tmp_path, cluster_with(**retina_args), tweak) as kubeconfig:
        found = await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), loaded)
    failed = [c for c in found if c.status == "fail"]
    wanted = [failing] if isinstance(failing, str) else list(failing)
    assert [c.name for c in failed] == wanted, found
    assert all(c.fix for c in failed)


async def test_a_missing_permission_for_an_unused_feature_is_not_a_failure(
    tmp_path: Path,
) -> None:
    """No topology captures: lacking create captures is noted, not failed."""
    with emulated(
        tmp_path, cluster_with(), lambda e: e.denied.add(("retina.sh", "captures", "create"))
    ) as kubeconfig:
        found = by_name(
            await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), PLAIN)
        )
    assert found["annotate permissions"].status == "ok"
    assert "create captures.retina.sh" in found["annotate permissions"].detail


async def test_a_doctor_without_rights_to_read_retina_warns_instead_of_guessing(
    tmp_path: Path,
) -> None:
    """A forbidden DaemonSet list is a ⚠ saying what could not be checked, not a ✘."""
    with emulated(
        tmp_path, cluster_with(), lambda e: e.denied.add(("apps", "daemonsets", "list"))
    ) as kubeconfig:
        found = by_name(
            await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), PLAIN)
        )
    assert found["agent"].status == "warn"
    assert "daemonsets" in found["agent"].fix


async def test_an_unreachable_api_server_is_one_failed_line(tmp_path: Path) -> None:
    """Nothing listens at the kubeconfig's address: ✘ API server, no further cluster checks."""
    emulator = KubeEmulator()
    with emulator.serve():
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    found = await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), PLAIN)
    assert [(c.name, c.status) for c in found] == [("API server", "fail")]
    assert "cannot reach" in found[0].fix


# ---- Kafka ---------------------------------------------------------------------------------


async def _create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, count in per_partition.items():
            for _ in range(count):
                await producer.send(topic, b"{}", partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def _state(bootstrap: str) -> tuple[set[str], list[Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics()), sorted(await admin.list_consumer_groups())
    finally:
        await admin.close()


async def test_detections_hashed_to_one_partition_are_a_warning(broker: EmbeddedBroker) -> None:
    """The Falcosidekick crc32/murmur2 case: nearly all recent records on one partition."""
    await _create(broker.bootstrap, "falco", 4)
    await _produce(broker.bootstrap, "falco", {2: 150})
    found = by_name(
        await diagnosing.kafka_checks(Settings(bootstrap_servers=broker.bootstrap), PLAIN)
    )
    assert found["topic falco"].status == "ok"
    assert "4 partitions" in found["topic falco"].detail
    spread = found["topic falco spread"]
    assert spread.status == "warn"
    assert "partition 2" in spread.detail
    assert "round_robin" in spread.fix


async def test_detections_spread_over_partitions_pass(broker: EmbeddedBroker) -> None:
    """round_robin's spread is ✔, with the busiest partition's share."""
    await _create(broker.bootstrap, "falco", 4)
    await _produce(broker.bootstrap, "falco", {0: 40, 1: 40, 2: 40, 3: 40})
    found = by_name(
        await diagnosing.kafka_checks(Settings(bootstrap_servers=broker.bootstrap), PLAIN)
    )
    assert found["topic falco spread"].status == "ok"
    assert "25%" in found["topic falco spread"].detail


async def test_tallies_partitions_unlike_the_setting_fail(broker: EmbeddedBroker) -> None:
    """Faust refuses tables whose partitions differ from their source topic's: say so first."""
    await _create(broker.bootstrap, "streamproc.tallies", 3)
    settings = Settings(bootstrap_servers=broker.bootstrap, partitions=1)
    found = by_name(await diagnosing.kafka_checks(settings, PLAIN))
    check = found["topic streamproc.tallies"]
    assert check.status == "fail"
    assert "--partitions 3" in check.fix
    assert found["topic streamproc.actions"].status == "warn"  # not created yet


async def test_a_groups_lag_is_its_end_offsets_minus_its_commits(broker: EmbeddedBroker) -> None:
    """Committed 2 of 7 records: 5 behind; a group that never committed says so."""
    await _create(broker.bootstrap, "streamproc.actions", 1)
    await _produce(broker.bootstrap, "streamproc.actions", {0: 7})
    tp = TopicPartition("streamproc.actions", 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="streamproc-annotate", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: 2})
    finally:
        await consumer.stop()
    found = by_name(
        await diagnosing.kafka_checks(Settings(bootstrap_servers=broker.bootstrap), PLAIN)
    )
    assert found["group streamproc-annotate"].detail == "5 records behind"
    assert found["group streamproc-windows"].detail == "no committed offsets yet"


async def test_actions_that_no_annotator_ever_read_fail_naming_the_command(
    broker: EmbeddedBroker,
) -> None:
    """Actions for prod-eu nobody read are ✘; read ones ✔; an unrouted cluster's topic is ⚠."""
    for topic, records in (
        ("streamproc.actions.prod-eu", 3),
        ("streamproc.actions", 2),
        ("streamproc.actions.gone", 0),
    ):
        await _create(broker.bootstrap, topic, 1)
        await _produce(broker.bootstrap, topic, {0: records})
    tp = TopicPartition("streamproc.actions", 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="streamproc-annotate", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: 2})
    finally:
        await consumer.stop()
    found = by_name(
        await diagnosing.kafka_checks(Settings(bootstrap_servers=broker.bootstrap), PLAIN)
    )
    unread = found["actions in streamproc.actions.prod-eu"]
    assert unread.status == "fail"
    assert "3 action(s) that no annotator has read" in unread.detail
    assert "streamproc annotate --cluster prod-eu" in unread.fix
    assert "delete it" in unread.fix  # one cluster: nothing routes there any more
    assert found["actions in streamproc.actions"].status == "ok"
    assert found["actions in streamproc.actions.gone"].status == "warn"
    fleet = Settings(bootstrap_servers=broker.bootstrap, cluster="prod-eu", clusters="gone")
    found = by_name(await diagnosing.kafka_checks(fleet, PLAIN))
    unread = found["actions in streamproc.actions.prod-eu"]
    assert unread.status == "fail"  # still unread
    assert unread.fix == "run `streamproc annotate --cluster prod-eu` in cluster prod-eu"
    assert "actions in streamproc.actions.gone" not in found  # routed, and holds nothing yet


async def test_detections_naming_a_cluster_the_fleet_does_not_route_fail(
    broker: EmbeddedBroker,
) -> None:
    """The latest detections' cluster field: its own in one cluster, ✘ for a fleet without it."""
    fixture = json.loads((ROOT / "tests" / "fixtures" / "falcosidekick.json").read_text())
    fixture["output_fields"]["cluster"] = "prod-eu"
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for value in (json.dumps(fixture).encode(), b"not json"):
            await producer.send_and_wait("falco", value)
    finally:
        await producer.stop()
    single = Settings(bootstrap_servers=broker.bootstrap)
    named = by_name(await diagnosing.kafka_checks(single, PLAIN))["clusters in falco"]
    assert named.status == "ok"
    assert "'prod-eu'" in named.detail
    assert "one cluster" in named.detail
    fleet = dataclasses.replace(single, cluster="prod-us", clusters="prod-ap")
    refused = by_name(await diagnosing.kafka_checks(fleet, PLAIN))["clusters in falco"]
    assert refused.status == "fail"
    assert "1 of the latest 1 detections" in refused.detail
    assert "'prod-eu'" in refused.detail
    assert "--clusters" in refused.fix


async def test_no_broker_is_one_failed_line_naming_the_fix() -> None:
    """Nothing listens at the address: ✘ brokers with the cause and what to check."""
    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    found = await diagnosing.kafka_checks(settings, PLAIN)
    assert [(c.name, c.status) for c in found] == [("brokers", "fail")]
    assert "--bootstrap-servers" in found[0].fix


# ---- the command ---------------------------------------------------------------------------


def doctor(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
    )


def test_doctor_reports_a_ready_setup_and_writes_nothing(
    tmp_path: Path, broker: EmbeddedBroker, emulator: KubeEmulator, kubeconfig: Path
) -> None:
    """Exit 0, a line per check, JSON alike; no write reached the broker or the API server."""
    asyncio.run(
        kafka.ensure_topics(
            Settings(bootstrap_servers=broker.bootstrap),
            [kafka.TopicSpec(t, 1) for t in ("falco", *dataclasses.astuple(Settings().topics)[1:])],
        )
    )
    before = asyncio.run(_state(broker.bootstrap))
    env = {"STREAMPROC_BOOTSTRAP_SERVERS": broker.bootstrap, "KUBECONFIG": str(kubeconfig)}
    text = doctor(env=env, cwd=ROOT)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "✘" not in text.stdout
    assert "✔ annotations: enableAnnotations: true" in text.stdout
    assert text.stdout.rstrip().endswith("0 failed: ready, with warnings")  # no Prometheus
    assert "Traceback" not in text.stderr

    as_json = doctor("--output", "json", env=env, cwd=ROOT)
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["summary"]["fail"] == 0
    assert {c["area"] for c in report["checks"]} == {
        "Topologies",
        "Marks",
        "Kafka",
        "Kubernetes",
        "Platform",
        "Retina",
        "Evidence",
    }
    assert "⚠ prometheus: no --prometheus-url" in text.stdout
    assert "⚠ seal: marks are not sealed" in text.stdout

    assert asyncio.run(_state(broker.bootstrap)) == before  # no topic, no group
    writes = {
        (r.method, r.path)
        for r in emulator.requests
        if r.method != "GET" and not r.path.endswith("/selfsubjectaccessreviews")
    }
    assert not writes


def test_doctor_exits_1_on_a_failure_with_the_fix_under_it(
    tmp_path: Path, emulator: KubeEmulator, kubeconfig: Path
) -> None:
    """No broker and a forbidding RBAC: ✘ lines, each followed by its fix, exit status 1."""
    emulator.denied.add(("", "pods", "patch"))
    env = {
        "STREAMPROC_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "KUBECONFIG": str(kubeconfig),
    }
    result = doctor(env=env, cwd=ROOT)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if "✘" in line]
    assert [lines[i].split(":")[0].strip() for i in failed] == [
        "✘ brokers",
        "✘ annotate permissions",
    ]
    assert all(lines[i + 1].strip().startswith("fix: ") for i in failed)
    assert "Traceback" not in result.stderr


def test_a_broken_topology_is_a_failed_check_with_file_and_line(
    tmp_path: Path, broker: EmbeddedBroker, kubeconfig: Path
) -> None:
    """The topology check is `streamproc check`'s: the error names file, line and field."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: streamproc/v1\nkind: Topology\nmetadata:\n  name: bad\nspec:\n"
        "  window:\n    sise: 10s\n",
        encoding="utf-8",
    )
    env = {"STREAMPROC_BOOTSTRAP_SERVERS": broker.bootstrap, "KUBECONFIG": str(kubeconfig)}
    result = doctor("--topology", str(bad), "-o", "json", env=env, cwd=tmp_path)
    assert result.returncode == 1
    failed = [c for c in json.loads(result.stdout)["checks"] if c["status"] == "fail"]
    assert [c["area"] for c in failed] == ["Topologies"]
    assert f"{bad}:7" in failed[0]["detail"]


@pytest.mark.parametrize("chosen_by", ["settings", "topology"])
async def test_the_acns_backend_needs_its_opt_in_permissions(
    tmp_path: Path, chosen_by: str
) -> None:
    """With acns-metric-filters (configured or a topology's), no update on the CNM is a ✘."""
    settings_backend = "acns-metric-filters" if chosen_by == "settings" else "retina-annotation"
    loaded = PLAIN if chosen_by == "settings" else [topology(backend="acns-metric-filters")]
    denied = ("acn.azure.com", "containernetworkmetrics", "update")
    with emulated(tmp_path, cluster_with(), lambda e: e.denied.add(denied)) as kubeconfig:
        settings = Settings(kubeconfig=str(kubeconfig), observation_backend=settings_backend)
        found = by_name(await diagnosing.cluster_checks(settings, loaded))
        plain = by_name(
            await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), PLAIN)
        )
    check = found["annotate permissions"]
    assert check.status == "fail"
    assert "update containernetworkmetrics.acn.azure.com" in check.detail
    assert "k8s/components/acns-metric-filters" in check.fix
    # the annotation backend neither needs nor mentions them
    assert plain["annotate permissions"].status == "ok"
    assert "containernetworkmetrics" not in plain["annotate permissions"].detail
