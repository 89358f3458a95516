"""The ingest stage's batch logic without Kafka: tallies per workload window, and the gate."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab import samples
from streamproc.lab.cluster import sample_cluster
from streamproc.model import topologies
from streamproc.settings import Settings
from streamproc.stages.ingest import Ingestor, TallyGate

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Record:
    value: bytes
    timestamp: int
    topic: str = "falco"
    key: bytes | None = None
    partition: int = 0
    offset: int = 0


def ingestor() -> Ingestor:
    return Ingestor(
        Settings(),
        topologies.load_path(ROOT / "topologies"),
        WorkloadResolver(None, cache_size=100, ttl_s=60),
    )


async def test_a_flood_for_one_workload_becomes_one_tally_per_window() -> None:
    """10,000 detections from three pods of one Deployment make one tally counting all of them."""
    cluster = sample_cluster()
    frontend = next(w for w in cluster.workloads if w.name == "frontend")
    rng = random.Random(1)
    now_ms = int(time.time() * 1000) // 60_000 * 60_000 + 1000
    records = [
        Record(
            orjson.dumps(
                samples.detection(frontend, frontend.pods[i % 3], samples.RULES[0], 0, rng)
            ),
            now_ms + i,
        )
        for i in range(10_000)
    ]
    result = await ingestor().process(records)
    [tally] = result.tallies.values()
    assert (tally.kind, tally.name, tally.count) == ("Deployment", "frontend", 10_000)
    assert tally.first_append_ms == now_ms
    assert len(tally.uuids) == 5
    assert result.matched == {"retina-observe": 10_000}


async def test_host_events_bad_lines_and_unmatched_are_accounted_for() -> None:
    """Every record ends up counted somewhere: tallied, skipped, or dead-lettered."""
    cluster = sample_cluster()
    rng = random.Random(2)
    redis = next(w for w in cluster.workloads if w.name == "redis")
    notice = samples.RULES[5]
    lines = [
        orjson.dumps(samples.detection(redis, redis.pods[0], samples.RULES[0], 0, rng)),
        orjson.dumps(samples.detection(redis, redis.pods[0], notice, 0, rng)),
        orjson.dumps(samples.host_event(0, rng)),
        *(raw for raw, _ in samples.MALFORMED),
    ]
    result = await ingestor().process([Record(v, 1_000) for v in lines])
    assert sum(t.count for t in result.tallies.values()) == 1
    assert result.unmatched == 1
    assert result.host_events == 1
    assert sorted(reason for _, reason, _ in result.dead) == sorted(r for _, r in samples.MALFORMED)
    assert sum(result.consumed.values()) == 3


def test_the_gate_sends_until_the_threshold_then_holds_and_releases_merged() -> None:
    """Counts that can still open a window go at once; later ones wait and arrive merged."""
    [topology] = topologies.load_path(ROOT / "topologies")
    two = topology.model_copy(
        update={
            "spec": topology.spec.model_copy(
                update={"window": topology.spec.window.model_copy(update={"threshold": 2})}
            )
        }
    )
    gate = TallyGate([two], hold_s=60)
    from streamproc.model.tallies import Tally

    def tally(count: int) -> Tally:
        return Tally(
            "retina-observe",
            "shop",
            "Deployment",
            "web",
            "api",
            60_000,
            count,
            60_000,
            "r",
            4,
            "p",
            [],
        )

    slot = ("retina-observe", "shop/Deployment/web", 60_000)
    assert [t.count for t in gate.admit({slot: tally(1)})] == [1]  # 0 < 2: may open the window
    assert [t.count for t in gate.admit({slot: tally(1)})] == [1]  # 1 < 2: this one opens it
    assert gate.admit({slot: tally(5)}) == []  # qualified: held
    assert gate.admit({slot: tally(3)}) == []
    assert gate.holding
    assert not gate.due(time.monotonic())
    [released] = gate.release()
    assert released.count == 8
    assert not gate.holding
    # once the window is two windows in the past, its count is forgotten: a new tally for the
    # same slot (a very late detection) is urgent again rather than counted against old state
    gate.forget_ended(now_ms=60_000 + 3 * 3_600_000)
    assert [t.count for t in gate.admit({slot: tally(1)})] == [1]


def test_many_held_workloads_are_released_less_often_but_within_a_window() -> None:
    """A flood over 50,000 workloads: held tallies leave at about HELD_PER_S (1,000/s), never
    later than the shortest window, so the Faust stage is not buried and no count outlives its
    window."""
    from streamproc.model.tallies import Tally

    [topology] = topologies.load_path(ROOT / "topologies")  # 60 s windows, threshold 1
    gate = TallyGate([topology], hold_s=1.0)

    def slots(n: int) -> dict[tuple[str, str, int], Tally]:
        return {
            ("retina-observe", f"ns/Deployment/w{i}", 60_000): Tally(
                "retina-observe",
                "ns",
                "Deployment",
                f"w{i}",
                "name-shape",
                60_000,
                1,
                60_000,
                "r",
                4,
                "p",
                [],
            )
            for i in range(n)
        }

    gate.admit(slots(50_000))  # first detections: urgent, nothing held
    started = time.monotonic()
    assert gate.admit(slots(50_000)) == []  # later ones: 50,000 held
    assert not gate.due(started + 1.5)  # hold_s alone would release them now
    assert not gate.due(started + 45)
    assert gate.due(started + 55)  # 50,000 / 1,000 per second: 50 s after they were held
    gate.release()
    gate.admit(slots(500))
    assert gate.due(time.monotonic() + 1.1)  # few held: the usual second

    short = topology.model_copy(
        update={
            "spec": topology.spec.model_copy(
                update={"window": topology.spec.window.model_copy(update={"size": 5.0})}
            )
        }
    )
    capped = TallyGate([short], hold_s=1.0)
    capped.admit(slots(50_000))
    began = time.monotonic()
    capped.admit(slots(50_000))
    assert not capped.due(began + 4)
    assert capped.due(began + 10)  # never later than the shortest window (5 s)


def test_held_counts_leave_on_their_own_schedule_and_offsets_wait_for_them() -> None:
    """Each workload's held count leaves ``hold_s`` after it was first held, not all together
    (500 released at once queue a new workload's first tally behind them in the Faust stage);
    a batch's offsets are committable only once no count of it or before it is still held, and
    a release the broker refused is held again, oldest first."""
    from aiokafka import TopicPartition

    from streamproc.model.tallies import Tally
    from streamproc.stages.ingest import CommitPoint

    [topology] = topologies.load_path(ROOT / "topologies")  # threshold 1
    gate = TallyGate([topology], hold_s=1.0)
    commits = CommitPoint()
    tp = TopicPartition("falco", 0)

    def slot_and_tally(name: str) -> dict[tuple[str, str, int], Tally]:
        tally = Tally(
            "retina-observe", "ns", "Deployment", name, "api", 0, 1, 0, "r", 4, f"{name}-p", []
        )
        return {("retina-observe", f"ns/Deployment/{name}", 0): tally}

    assert len(gate.admit({**slot_and_tally("a"), **slot_and_tally("b")}, now=100.0)) == 2
    commits.handled(gate.batches, {tp: 10})
    assert gate.admit(slot_and_tally("a"), now=100.2) == []  # qualified: held
    commits.handled(gate.batches, {tp: 20})
    assert gate.admit(slot_and_tally("b"), now=100.7) == []
    commits.handled(gate.batches, {tp: 30})
    assert gate.admit(slot_and_tally("a"), now=100.9) == []  # merged into a's held count
    commits.handled(gate.batches, {tp: 40})

    assert commits.committable(gate.oldest_held_batch) == {tp: 10}  # batch 2 is still held
    assert not gate.due(101.1)
    assert gate.due(101.2)
    [a] = gate.release(101.2)  # a was held at 100.2; b only at 100.7
    assert (a.name, a.count) == ("a", 2)
    gate.settle(delivered=False)  # the broker refused: a is held again, ahead of b
    assert commits.committable(gate.oldest_held_batch) == {}
    [again] = gate.release(101.3)
    assert again is a
    gate.settle(delivered=True)
    assert commits.committable(gate.oldest_held_batch) == {tp: 20}  # b (batch 3) still held
    [b] = gate.release(101.7)
    gate.settle(delivered=True)
    assert b.name == "b"
    assert not gate.holding
    assert commits.committable(gate.oldest_held_batch) == {tp: 40}


async def test_a_protected_namespace_is_counted_as_excluded_not_as_unmatched() -> None:
    """kube-system matches the rule but is excluded: the metric says why it was not counted."""
    from streamproc.clients import metrics

    cluster = sample_cluster()
    system = next(w for w in cluster.workloads if w.namespace == "kube-system")
    rng = random.Random(4)
    raw = orjson.dumps(samples.detection(system, system.pods[0], samples.RULES[0], 0, rng))
    stage = ingestor()
    result = await stage.process([Record(raw, 1000), Record(raw, 1001)])
    assert not result.tallies
    assert (result.unmatched, result.excluded_detections) == (0, 2)
    assert result.excluded == {"retina-observe": 2}
    before = metrics.detections_skipped.labels(reason="namespace-excluded")._value.get()
    stage.record_metrics(result)
    after = metrics.detections_skipped.labels(reason="namespace-excluded")._value.get()
    assert after - before == 2


async def test_payload_time_windows_by_the_detection_time_and_refuses_impossible_dates() -> None:
    """For files (simulate): the payload's ``time`` places the window; Feb 30 is dead-lettered."""
    cluster = sample_cluster()
    frontend = next(w for w in cluster.workloads if w.name == "frontend")
    rng = random.Random(5)
    at = 1_900_000_030.5
    good = samples.detection(frontend, frontend.pods[0], samples.RULES[0], at, rng)
    bad = {**good, "time": "2030-02-30T10:00:00Z"}
    stage = Ingestor(
        Settings(),
        topologies.load_path(ROOT / "topologies"),
        WorkloadResolver(None, cache_size=100, ttl_s=60),
        payload_time=True,
    )
    result = await stage.process([Record(orjson.dumps(good), 0), Record(orjson.dumps(bad), 0)])
    [tally] = result.tallies.values()
    assert tally.first_append_ms == int(at * 1000)
    assert result.latest_ms == int(at * 1000)
    assert [reason for _, reason, _ in result.dead] == ["invalid-time"]
