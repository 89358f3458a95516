"""SIGKILL at random points of each stage, repeated under steady traffic: nothing lost, no window
acted on twice, every annotation removed at expiry.

The three stages run as separate processes (``streamproc ingest | windows | annotate``) against
the embedded broker and the emulated API server. Detections, host events and malformed lines
flow the whole time; a stage chosen in turn is SIGKILLed at a random moment (sometimes again
while it is still starting) and started anew. Afterwards:

- every (workload, window) that received a detection was acted on: its action id reached the
  workload's pods, or the audit trail shows it handled (``actions lost`` must be 0). An action
  that could only be handled after its observation would already have ended (window end + TTL;
  when kills in a row keep a stage down that long) is audited ``expired-before-apply`` and
  counted apart;
- no pod was patched twice for the same action (``duplicate patches``);
- every malformed record is in the dead-letter topic, and the ingest group's committed offset is
  the end of the input: every record was consumed and its outcome made durable before commit;
- every annotation was removed at expiry, though the annotator that applied it may have died.

``STREAMPROC_CRASH_KILLS`` (default 6) and ``STREAMPROC_CRASH_SEED`` choose the run; the figures
are printed (``-s``) and, with ``STREAMPROC_CRASH_REPORT=path``, written as JSON for
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from tests.conftest import wait_for
from tests.e2e.conftest import Pipeline, consume_all, topology_file

pytestmark = pytest.mark.e2e
KILLS = int(os.environ.get("STREAMPROC_CRASH_KILLS", "6"))
SEED = int(os.environ.get("STREAMPROC_CRASH_SEED", "11"))
STAGES = ("ingest", "windows", "annotate")
WINDOW_MS, TTL = 3000, "30s"
RATE = 40  # records per second
HANDLED = ("applied", "extended", "extension-not-due", "already-applied", "expired-before-apply")


class Traffic(threading.Thread):
    """Falcosidekick at a steady rate: detections, host events, malformed lines; until stopped."""

    def __init__(self, bootstrap: str, workloads: list[SampleWorkload], seed: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.workloads = workloads
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.sent: Counter[str] = Counter()
        #: input offset -> what was sent there
        self.kinds: dict[int, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    async def _send(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                if n % 50 == 0:
                    raw, _ = samples.MALFORMED[n // 50 % len(samples.MALFORMED)]
                    kind = "malformed"
                elif n % 30 == 0:
                    raw = orjson.dumps(samples.host_event(time.time(), self.rng))
                    kind = "host"
                else:
                    workload = self.rng.choice(self.workloads)
                    pod = self.rng.choice(workload.pods)
                    rule = samples.RULES[0]
                    raw = orjson.dumps(
                        samples.detection(workload, pod, rule, time.time(), self.rng)
                    )
                    kind = "detection"
                metadata = await producer.send_and_wait("falco", raw)
                self.kinds[metadata.offset] = kind
                self.sent[kind] += 1
                await asyncio.sleep(1 / RATE)
        finally:
            await producer.stop()


async def _records(bootstrap: str) -> list[tuple[int, int, bytes]]:
    consumer = AIOKafkaConsumer(
        "falco", bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[tuple[int, int, bytes]] = []
    try:
        while batch := await consumer.getmany(timeout_ms=2000):
            for records in batch.values():
                out += [(r.offset, r.timestamp, r.value or b"") for r in records]
    finally:
        await consumer.stop()
    return out


async def _committed(bootstrap: str, group: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition("falco", 0))
    finally:
        await consumer.stop()


async def _create_input(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("falco", 1, 1)])
    finally:
        await admin.close()


def _action_ids(emulator: KubeEmulator) -> Counter[tuple[str, str]]:
    """(pod, action id) of every successful PATCH that set an action id."""
    seen: Counter[tuple[str, str]] = Counter()
    for r in list(emulator.requests):
        if r.method != "PATCH" or r.status != 200 or not r.path.startswith("/api/v1/"):
            continue
        body: Any = orjson.loads(r.body)
        action = isinstance(body, dict) and (body.get("metadata", {}).get("annotations") or {})
        if action and action.get(conventions.ACTION_ID):
            seen[(r.path.rsplit("/", 1)[-1], action[conventions.ACTION_ID])] += 1
    return seen


def test_random_sigkills_of_each_stage_lose_nothing_and_act_once(
    tmp_path: Path,
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
    env: dict[str, str],
) -> None:
    asyncio.run(_create_input(broker.bootstrap))
    observable = [w for w in cluster.workloads if w.namespace != "kube-system"]
    by_pod = {pod: w for w in observable for pod in w.pods}
    topology = topology_file(tmp_path, f"{WINDOW_MS // 1000}s", TTL)
    procs: dict[str, Pipeline] = {}
    for stage in STAGES:
        procs[stage] = Pipeline(stage, env, topology, tmp_path / f"{stage}-0.log")
        pipelines.append(procs[stage])
    traffic = Traffic(broker.bootstrap, observable, SEED)
    for stage in STAGES:
        wait_for(
            lambda s=stage: procs[s].metric("streamproc_build_info") > 0,  # type: ignore[misc]
            timeout=60,
            what=f"{stage} to serve metrics",
        )
    traffic.start()

    rng = random.Random(SEED)
    order = [STAGES[n % len(STAGES)] for n in range(KILLS)]
    rng.shuffle(order)
    recoveries: list[dict[str, Any]] = []
    try:
        for n, stage in enumerate(order, start=1):
            time.sleep(rng.uniform(0.5, 4.0))  # a random point in the stage's life, not a sync
            procs[stage].kill()
            killed_at = time.monotonic()
            if rng.random() < 0.3:  # and sometimes again while it is still starting
                restarted = Pipeline(stage, env, topology, tmp_path / f"{stage}-{n}a.log")
                pipelines.append(restarted)
                time.sleep(rng.uniform(0.2, 2.0))
                restarted.kill()
            procs[stage] = Pipeline(stage, env, topology, tmp_path / f"{stage}-{n}.log")
            pipelines.append(procs[stage])
            wait_for(
                lambda s=stage: procs[s].metric("streamproc_records_consumed_total", stage=s) > 0,  # type: ignore[misc]
                timeout=90,
                what=f"{stage} to work again after kill {n}",
            )
            recoveries.append({"stage": stage, "seconds": round(time.monotonic() - killed_at, 1)})
        time.sleep(2 * WINDOW_MS / 1000)  # traffic goes on for two more windows
    finally:
        traffic.stop.set()
        traffic.join(30)
    assert traffic.error is None, traffic.error

    records = asyncio.run(_records(broker.bootstrap))
    assert len(records) == sum(traffic.sent.values())
    expected: set[str] = set()
    malformed = {offset for offset, kind in traffic.kinds.items() if kind == "malformed"}
    for offset, timestamp, raw in records:
        if traffic.kinds[offset] == "detection":
            w = by_pod[orjson.loads(raw)["output_fields"]["k8s.pod.name"]]
            start = timestamp - timestamp % WINDOW_MS
            expected.add(f"retina-observe/{w.namespace}/{w.kind}/{w.name}/{start}")

    def audited() -> dict[str, set[str]]:
        results: dict[str, set[str]] = {}
        for _, value, _ in consume_all(broker.bootstrap, "streamproc.audit", idle_s=1.0):
            record = orjson.loads(value or b"")
            if record.get("action"):
                results.setdefault(record["result"], set()).add(record["action"])
        return results

    def acted() -> set[str]:
        handled = audited()
        return {action for _, action in _action_ids(emulator)} | set().union(
            *(handled.get(r, set()) for r in HANDLED)
        )

    try:
        wait_for(lambda: expected <= acted(), timeout=120, interval=2, what="every window acted on")
    except AssertionError:
        missing = sorted(expected - acted())
        raise AssertionError(f"{len(missing)} windows never acted on: {missing[:5]}") from None

    def all_released() -> bool:
        return not any(
            conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
            for p in emulator.list("Pod")
        )

    wait_for(all_released, timeout=120, what="every observation to expire")
    patches = _action_ids(emulator)
    duplicates = sum(count - 1 for count in patches.values())
    committed = asyncio.run(_committed(broker.bootstrap, "streamproc-ingest"))
    dead = consume_all(broker.bootstrap, "streamproc.dlq")
    dead_offsets = Counter(int(h["streamproc.source.offset"]) for _, _, h in dead)
    for stage in STAGES:
        assert procs[stage].stop() == 0, f"{stage} did not stop cleanly"

    figures = {
        "kills": KILLS,
        "seed": SEED,
        "records_in": len(records),
        "detections": traffic.sent["detection"],
        "host_events": traffic.sent["host"],
        "malformed": len(malformed),
        "dead_lettered_unique": len(set(dead_offsets) & malformed),
        "dead_letter_replays": sum(c - 1 for c in dead_offsets.values()),
        "windows_expected": len(expected),
        "windows_acted": len(expected & acted()),
        "actions_lost": len(expected - acted()),
        "expired_before_apply": len(expected & audited().get("expired-before-apply", set())),
        "patches": sum(patches.values()),
        "duplicate_patches": duplicates,
        "ingest_committed_offset": committed,
        "recovery_seconds": recoveries,
        "recovery_p50_s": statistics.median(r["seconds"] for r in recoveries) if recoveries else 0,
        "recovery_max_s": max((r["seconds"] for r in recoveries), default=0),
    }
    print(json.dumps(figures, indent=2))
    if report := os.environ.get("STREAMPROC_CRASH_REPORT"):
        Path(report).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    assert figures["actions_lost"] == 0
    assert duplicates == 0
    assert set(dead_offsets) >= malformed  # every malformed record dead-lettered
    assert committed == len(records)  # every record consumed and accounted for before commit
