"""``streamproc status`` and ``streamproc release`` against the emulated cluster."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from streamproc.clients import kafka, kube
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import Fault, KubeEmulator
from streamproc.model import conventions
from streamproc.model.tallies import Tally
from streamproc.settings import Settings
from tests.conftest import action_for, make, topology, workload


def cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def marked(emulator: KubeEmulator) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in emulator.list("Pod")
        if conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
    }


async def test_status_lists_workloads_and_release_removes_exactly_one(
    kubeconfig: Path, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Two observations show in status; releasing one leaves the other and foreign marks alone."""
    client = await kube.Kube.connect(str(kubeconfig))
    try:
        annotator, _ = make(client)
        start = int(time.time()) - 5
        await annotator.apply(action_for(workload(cluster, "frontend"), window_start=start))
        await annotator.apply(action_for(workload(cluster, "redis"), window_start=start))
    finally:
        await client.close()
    emulator.update("Pod", "shop", "redis-0", {"metadata": {"annotations": {"team": "cache"}}})

    table = cli(kubeconfig, "status")
    assert table.returncode == 0, table.stderr
    assert "Deployment/frontend" in table.stdout
    assert "StatefulSet/redis" in table.stdout
    # Retina's per-node budget: how many observed pods each node carries
    frontend_pods = len(workload(cluster, "frontend").pods)
    assert "observed pods per node (busiest; --node-budget 200): node-a " in table.stdout
    listed = json.loads(cli(kubeconfig, "status", "--output", "json").stdout)
    by_name = {o["workload"]: o for o in listed}
    assert sorted(by_name["frontend"]["pods"]) == sorted(workload(cluster, "frontend").pods)
    assert by_name["redis"]["topology"] == "retina-observe"
    assert len(by_name["frontend"]["nodes"]) == frontend_pods
    assert set(by_name["frontend"]["nodes"]) <= {"node-a", "node-b"}
    assert 0 < by_name["redis"]["expires_in_s"] <= 600

    released = cli(kubeconfig, "release", "shop/StatefulSet/redis")
    assert released.returncode == 0, released.stderr
    assert marked(emulator) == set(workload(cluster, "frontend").pods)
    redis0 = (emulator.get("Pod", "shop", "redis-0") or {})["metadata"]["annotations"]
    assert redis0 == {"team": "cache"}

    missing = cli(kubeconfig, "release", "shop/redis")
    assert missing.returncode != 0
    assert "not under observation" in missing.stderr


async def test_release_rereads_and_retries_when_a_pod_changed_under_it(
    kubeconfig: Path, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A 409 (another replica extended the pod meanwhile) is re-read and retried, as expiry is."""
    client = await kube.Kube.connect(str(kubeconfig))
    try:
        annotator, _ = make(client)
        frontend = workload(cluster, "frontend")
        await annotator.apply(action_for(frontend, window_start=int(time.time()) - 5))
    finally:
        await client.close()
    emulator.faults.append(Fault(method="PATCH", path=f"/pods/{frontend.pods[0]}$", status=409))

    released = cli(kubeconfig, "release", "shop/frontend")

    assert released.returncode == 0, released.stderr
    assert marked(emulator) == set()
    assert emulator.faults[0].times == 0  # the 409 was met, and retried past


async def test_status_shows_the_level_and_release_forget_asks_windows_to_drop_the_history(
    kubeconfig: Path,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    broker: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    """A level-2 observation shows "2/4"; ``--forget`` sends the windows stage its record."""
    laddered = topology(ttl="15m", escalation={"ttls": ["15m", "1h", "6h", "24h"]})
    folder = tmp_path / "topologies"
    folder.mkdir()
    (folder / "ladder.yaml").write_text(
        yaml.safe_dump(laddered.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    client = await kube.Kube.connect(str(kubeconfig))
    try:
        annotator, _ = make(client)
        annotator.topologies = {laddered.name: laddered}
        frontend = workload(cluster, "frontend")
        action = action_for(frontend, window_start=int(time.time()) - 5)
        await annotator.apply(dataclasses.replace(action, level=2))
    finally:
        await client.close()
    listed = json.loads(cli(kubeconfig, "status", "--output", "json").stdout)
    assert [o["level"] for o in listed] == ["2/4"]
    assert " 2/4 " in cli(kubeconfig, "status").stdout

    forgot = cli(
        kubeconfig,
        *("release", "shop/frontend", "--forget", "--topology", str(folder)),
        *("--bootstrap-servers", broker.bootstrap),
    )
    assert forgot.returncode == 0, forgot.stderr
    assert "released shop/frontend" in forgot.stdout
    assert "forgot the escalation history of shop/Deployment/frontend" in forgot.stdout
    settings = Settings(bootstrap_servers=broker.bootstrap)
    records = await kafka.read_topic(settings, settings.topics.tallies, idle_ms=500)
    mine = [Tally.decode(r.value or b"") for r in records if r.key == key(laddered.name)]
    # (other tests' pipelines publish tallies for this workload on the shared broker)
    assert [t.workload_key.encode() for t in mine if t.forget] == [key(laddered.name)]

    # an unobserved workload can be forgotten by its full name, not guessed
    guess = cli(kubeconfig, "release", "shop/redis", "--forget", "--topology", str(folder))
    assert guess.returncode != 0
    assert "NAMESPACE/KIND/WORKLOAD" in guess.stderr


def key(topology_name: str) -> bytes:
    return f"{topology_name}/shop/Deployment/frontend".encode()


async def test_release_by_hand_leaves_a_key_a_person_changed(
    kubeconfig: Path, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """`release` reads the topologies: a retina.sh a person set to another value stays theirs."""
    frontend = workload(cluster, "frontend")
    client = await kube.Kube.connect(str(kubeconfig))
    try:
        annotator, _ = make(client)
        await annotator.apply(action_for(frontend, window_start=int(time.time()) - 5))
    finally:
        await client.close()
    changed, *others = sorted(frontend.pods)
    emulator.update("Pod", "shop", changed, {"metadata": {"annotations": {"retina.sh": "off"}}})

    released = cli(kubeconfig, "release", "shop/Deployment/frontend")
    assert released.returncode == 0, released.stderr
    assert not marked(emulator)
    kept = (emulator.get("Pod", "shop", changed) or {})["metadata"].get("annotations") or {}
    assert kept == {"retina.sh": "off"}
    for name in others:
        left = (emulator.get("Pod", "shop", name) or {})["metadata"].get("annotations") or {}
        assert "retina.sh" not in left
