"""``streamproc simulate`` decides as the live pipeline does, on the same detections.

The detections go to the lab broker with record times days apart (and the same ``time`` in each
payload), so a laddered topology escalates without waiting. The live pipeline (ingest, windows,
annotate as one process, against the emulated cluster) emits its actions; ``simulate`` then reads
the same detections twice, from a file with a ``kubectl get pods -A -o json`` snapshot and from
the topic with read-only API lookups, and must find the same (topology, workload, window, level)
set, nothing more or less.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.model import conventions
from streamproc.settings import Topics
from tests.conftest import wait_for
from tests.e2e.conftest import Pipeline, consume_all

pytestmark = pytest.mark.e2e

TOPOLOGIES = {
    "ladder": """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: ladder
spec:
  match:
    priority: ">=Warning"
  window:
    size: 1m
    threshold: 2
  action:
    ttl: 15m
    escalation:
      ttls: [15m, 1h, 6h, 24h]
      forgetAfter: 7d
""",
    "critical": """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: critical
spec:
  match:
    priority: ">=Critical"
  window:
    size: 5m
    threshold: 1
  action:
    ttl: 10m
""",
}
DAY_S = 86_400
#: a minute boundary years ahead, so every window is new to the broker's topics
T0 = 1_900_000_020.0
WARNING, CRITICAL = samples.RULES[0], samples.RULES[1]


def detections(cluster: ClusterBuilder) -> list[tuple[str, float, bytes]]:
    """(workload, time, payload): offences on days 0, 1, 2, 9 and a few single ones."""
    rng = random.Random(5)
    found = []
    by_name = {w.name: w for w in cluster.workloads}
    plan = {
        "frontend": [0, 1, 2, 9],  # climbs 1, 2, 3, then forgotten: 1 again
        "redis": [0, 0.5],
        "node-exporter": [1],
        "report": [2],
        "debug-shell": [0, 3],
    }
    for name, days in plan.items():
        workload = by_name[name]
        for day in days:
            at = T0 + day * DAY_S
            for i, pod in enumerate((workload.pods[0], workload.pods[-1])):
                rule = CRITICAL if name == "debug-shell" and i == 0 else WARNING
                payload = samples.detection(workload, pod, rule, at + i, rng)
                found.append((name, at + i, orjson.dumps(payload)))
    found.append(("-", T0 + 5, b"{not json"))
    return sorted(found, key=lambda d: d[1])


async def _publish(bootstrap: str, records: list[tuple[str, float, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, at, value in records:
            # keyed by workload, as a partition keeps order: a backlog is read in order
            await producer.send("falco", value, key=key.encode(), timestamp_ms=int(at * 1000))
        await producer.flush()
    finally:
        await producer.stop()


def decided(actions: list[dict[str, object]]) -> set[tuple[object, ...]]:
    return {
        (a["topology"], a["namespace"], a["kind"], a["name"], a["window_start"], a["level"])
        for a in actions
    }


def simulate(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "streamproc", "simulate", "-o", "json", *args],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_simulate_decides_the_same_observations_as_the_live_pipeline(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    cluster: ClusterBuilder,
    kubeconfig: Path,
    pipelines: list[Pipeline],
) -> None:
    folder = tmp_path / "topologies"
    folder.mkdir()
    for name, text in TOPOLOGIES.items():
        (folder / f"{name}.yaml").write_text(text)
    records = detections(cluster)
    (tmp_path / "falco.jsonl").write_bytes(b"".join(value + b"\n" for _, _, value in records))
    snapshot = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "pods", "-A", "-o", "json"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    (tmp_path / "pods.json").write_bytes(snapshot)
    offline = {k: v for k, v in env.items() if k != "KUBECONFIG"}

    from_file = simulate(
        offline,
        "--topology",
        str(folder),
        "--pods",
        str(tmp_path / "pods.json"),
        str(tmp_path / "falco.jsonl"),
    )
    expected = decided(from_file["actions"])  # type: ignore[arg-type]
    levels = {(a[0], a[3]): set() for a in expected}
    for a in expected:
        levels[(a[0], a[3])].add(a[5])
    assert levels[("ladder", "frontend")] == {1, 2, 3}  # climbed, then forgotten after 7 days
    assert ("critical", "debug-shell") in levels
    assert from_file["dead_letters"] == {"invalid-json": 1}
    assert from_file["identities"]["snapshot"] > 0
    assert from_file["windows_from"] == "payload time"

    # record times years ahead, as simulate believes them: a tolerance of decades makes the live
    # stages believe them too (docs/reliability.md, "Time and clocks")
    believing = {**env, "STREAMPROC_CLOCK_TOLERANCE": str(40 * 365 * 86_400)}
    pipeline = Pipeline("run", believing, folder, tmp_path / "run.log")
    pipelines.append(pipeline)
    asyncio.run(_publish(broker.bootstrap, records))

    def live() -> set[tuple[object, ...]]:
        return decided(
            [
                orjson.loads(v or b"{}")
                for _, v, _ in consume_all(broker.bootstrap, Topics().actions, idle_s=0.5)
            ]
        )

    wait_for(lambda: len(live()) >= len(expected), timeout=120, what="the live actions")
    pipeline.stop()
    assert live() == expected

    since = conventions.format_time(T0 - 60)
    until = conventions.format_time(T0 + 30 * DAY_S)
    from_topic = simulate(
        env, "--topology", str(folder), "--topic", "falco", "--since", since, "--until", until
    )
    assert decided(from_topic["actions"]) == expected  # type: ignore[arg-type]
    assert from_topic["windows_from"] == "Kafka record time"
    assert from_topic["identities"]["api"] > 0
