"""Shared pieces of the benchmarks: compact events, a broker, loading a topic, a results table."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamproc.lab.cluster import SampleWorkload
from streamproc.model.actions import Action

#: where results go; the test suite's smoke runs set BENCH_RESULTS to keep the committed ones
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).parent / "results")


def topology_yaml(
    *, window_s: int, threshold: int, max_observations: int = 100_000, ttl: str = "1h"
) -> str:
    """The benchmarks' topology: every Warning-or-worse detection, one-hour TTL by default."""
    return f"""\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: bench
spec:
  match:
    priority: ">=Warning"
  window:
    size: {window_s}s
    threshold: {threshold}
  action:
    ttl: {ttl}
    maxObservations: {max_observations}
"""


def compact_event(rng: random.Random, namespace: str, pod: str, now: float) -> bytes:
    """A ~430-byte Falcosidekick payload (the size the performance targets are stated for)."""
    doc = {
        "uuid": f"{rng.getrandbits(128):032x}",
        "output": "Warning Sensitive file opened for reading | file=/etc/shadow",
        "priority": "Warning",
        "rule": "Read sensitive file untrusted",
        "time": "2026-11-28T02:03:16.349478045Z",
        "output_fields": {
            "evt.time": int(now * 1e9),
            "fd.name": "/etc/shadow",
            "k8s.ns.name": namespace,
            "k8s.pod.name": pod,
            "proc.name": "cat",
        },
        "source": "syscall",
        "tags": ["container", "filesystem", "mitre_credential_access"],
        "hostname": "node-a",
    }
    return orjson.dumps(doc)


def workload_pods(count: int) -> list[tuple[str, str]]:
    """(namespace, pod) for ``count`` Deployments, with names Kubernetes would generate."""
    return [(f"ns-{i % 50}", f"app-{i}-7d4b9c8f5x-x2x7k") for i in range(count)]


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def load_topic(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    partitions: int,
    keys: list[bytes] | None = None,
) -> float:
    """Produce every value (round-robin over partitions, or by ``keys`` as the producer's
    partitioner puts them); returns seconds taken."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = []
        for i, value in enumerate(values):
            if keys is None:
                futures.append(await producer.send(topic, value, partition=i % partitions))
            else:
                futures.append(await producer.send(topic, value, key=keys[i]))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def report(name: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
    """Print a table (ours next to the baseline of the same run) and write JSON results."""
    width = max(len(r["name"]) for r in rows)
    print(f"\n{name}")
    print(f"{'measurement':<{width}}  {'value':>14}  {'baseline':>14}  {'ratio':>7}  unit")
    for row in rows:
        baseline = row.get("baseline")
        ratio = f"{row['value'] / baseline:7.2f}" if baseline else "       "
        base_text = f"{baseline:14,.1f}" if baseline else " " * 14
        print(f"{row['name']:<{width}}  {row['value']:14,.1f}  {base_text}  {ratio}  {row['unit']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": name,
                "machine": platform.machine(),
                "python": platform.python_version(),
                "rows": rows,
                **extra,
            },
            indent=2,
        )
    )
    print(f"results: {path}")
    return path


def bench_action(
    workload: SampleWorkload, window_start: int, window: int, *, first_append_ms: int | None = None
) -> Action:
    """An action of the benchmarks' topology ("bench") for one Deployment's window."""
    return Action(
        id=f"bench/{workload.namespace}/Deployment/{workload.name}/{window_start * 1000}",
        topology="bench",
        namespace=workload.namespace,
        kind="Deployment",
        name=workload.name,
        pod=workload.pods[0],
        resolved_by="api",
        rule="Terminal shell in container",
        priority=4,
        window_start=window_start,
        window_end=window_start + window,
        count=1,
        first_append_ms=window_start * 1000 if first_append_ms is None else first_append_ms,
        uuids=[],
    )
