"""Record times ingest does not believe are windowed at its arrival clock, counted, never lost."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab import samples
from streamproc.lab.cluster import sample_cluster
from streamproc.model import topologies
from streamproc.settings import Settings
from streamproc.stages.ingest import BatchResult, Ingestor, PartitionEnds
from tests.stages.ingest.test_batches import Record

ROOT = Path(__file__).resolve().parents[3]
#: the arrival clock of these tests: a fixed instant, one second into a minute
ARRIVAL_S = 1_796_534_401.0
ARRIVAL_MS = int(ARRIVAL_S * 1000)
YEAR_9999_MS = 253_402_300_800_000
MINUTE_MS = 60_000


@dataclass(frozen=True)
class _TopicPartition:
    topic: str
    partition: int


@dataclass
class _Consumer:
    """What ``PartitionEnds.note`` reads of an aiokafka consumer: ends and when they were seen."""

    ends: dict[int, tuple[int, int]] = field(default_factory=dict)

    def assignment(self) -> set[_TopicPartition]:
        return {_TopicPartition("falco", p) for p in self.ends}

    def highwater(self, tp: _TopicPartition) -> int:
        return self.ends[tp.partition][0]

    def last_poll_timestamp(self, tp: _TopicPartition) -> int:
        return self.ends[tp.partition][1]


def _ingestor() -> Ingestor:
    return Ingestor(
        Settings(),
        topologies.load_path(ROOT / "topologies"),
        WorkloadResolver(None, cache_size=100, ttl_s=60),
        clock=lambda: ARRIVAL_S,
    )


def _record(timestamp: int, offset: int = 0) -> Record:
    frontend = next(w for w in sample_cluster().workloads if w.name == "frontend")
    detection = samples.detection(frontend, frontend.pods[0], samples.RULES[0], 0, random.Random(1))
    return Record(orjson.dumps(detection), timestamp, offset=offset)


def _windows(result: BatchResult) -> list[int]:
    return sorted(t.window_start for t in result.tallies.values())


@pytest.mark.parametrize(
    ("timestamp", "why"),
    [
        (YEAR_9999_MS, "ahead"),
        (ARRIVAL_MS + 10 * MINUTE_MS, "ahead"),
        (-1, "absent"),
        (-(2**40), "absent"),
    ],
)
async def test_a_record_time_absent_or_far_ahead_is_windowed_at_its_arrival(
    timestamp: int, why: str
) -> None:
    """Year 9999 (what stalled the windows stage), ten minutes ahead, none: counted at arrival."""
    result = await _ingestor().process([_record(timestamp)])
    assert _windows(result) == [ARRIVAL_MS // MINUTE_MS * MINUTE_MS]
    assert result.retimed == {why: 1}
    assert result.latest_ms == ARRIVAL_MS


async def test_a_record_time_within_the_tolerance_is_kept() -> None:
    """Thirty seconds ahead or behind is ordinary skew and latency: the record's own time."""
    ahead, behind = ARRIVAL_MS + 30_000, ARRIVAL_MS - 30_000
    result = await _ingestor().process([_record(ahead), _record(behind)])
    assert _windows(result) == sorted({t // MINUTE_MS * MINUTE_MS for t in (ahead, behind)})
    assert not result.retimed


@pytest.mark.parametrize("behind_min", [10, 20])
async def test_a_fresh_record_from_a_clock_behind_is_windowed_at_its_arrival(
    behind_min: int,
) -> None:
    """Appended after ingest last saw the partition's end, yet stamped minutes before: skew."""
    ends = PartitionEnds()
    # aiokafka notes when it fetched by this host's clock; ingest moves it onto its arrival clock
    ends.note(_Consumer({0: (41, int(time.time() * 1000) - 200)}))  # type: ignore[arg-type]
    stamped = ARRIVAL_MS - behind_min * MINUTE_MS
    result = await _ingestor().process([_record(stamped, offset=41)], ends)
    assert _windows(result) == [ARRIVAL_MS // MINUTE_MS * MINUTE_MS]
    assert result.retimed == {"behind": 1}


async def test_a_backlog_keeps_its_record_times() -> None:
    """Records already there when ingest last looked are a backlog, not skew: their own windows."""
    ends = PartitionEnds()
    ends.note(_Consumer({0: (41, int(time.time() * 1000) - 200)}))  # type: ignore[arg-type]
    stamped = ARRIVAL_MS - 20 * MINUTE_MS
    result = await _ingestor().process([_record(stamped, offset=40)], ends)
    assert _windows(result) == [stamped // MINUTE_MS * MINUTE_MS]
    assert not result.retimed


def test_the_end_to_go_by_is_the_last_one_seen_below_the_record() -> None:
    """The fetch that brought a record moved the end past it before the batch was read."""
    ends = PartitionEnds()
    ends.note(_Consumer({0: (41, 1000)}))  # type: ignore[arg-type]
    ends.note(_Consumer({0: (41, 1500)}))  # type: ignore[arg-type]
    ends.note(_Consumer({0: (43, 2000)}))  # type: ignore[arg-type]
    assert ends.appended_after("falco", 0, 41) == 1500
    assert ends.appended_after("falco", 0, 42) == 1500
    assert ends.appended_after("falco", 0, 43) == 2000
    assert ends.appended_after("falco", 0, 40) is None
    assert ends.appended_after("falco", 1, 43) is None
    ends.note(_Consumer({0: (5, 3000)}))  # type: ignore[arg-type]  # the log was recreated
    assert ends.appended_after("falco", 0, 41) == 3000
    assert ends.appended_after("falco", 0, 4) is None
