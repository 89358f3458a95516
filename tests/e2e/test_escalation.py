"""The windows stage climbs a workload's escalation ladder, and keeps it across a SIGKILL.

Tallies are published as the ingest stage would, with record times days apart (the windows are
Faust's, by record time), so a realistic ladder (15m, 1h, 6h, 24h; forget after 7 days) is
walked without waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streamproc.lab.broker import EmbeddedBroker
from streamproc.model.tallies import Tally, forget_tally, start_tally
from streamproc.model.workloads import WorkloadRef
from streamproc.settings import Topics
from tests.conftest import wait_for
from tests.e2e.conftest import Pipeline, consume_all

pytestmark = pytest.mark.e2e

LADDER = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: {name}
spec:
  window:
    size: 1m
    threshold: 1
  action:
    ttl: 15m
    escalation:
      ttls: [15m, 1h, 6h, 24h]
      forgetAfter: 7d
"""
FRONTEND = WorkloadRef("shop", "Deployment", "frontend", "api")
DAY_MS = 86_400_000
#: a minute boundary in the future, so the windows are new ones
T0 = 1_900_000_020_000
#: those offences lie years ahead: a tolerance of decades makes the windows stage believe them
#: (it refuses tallies stamped further ahead than that; docs/reliability.md, "Time and clocks")
BELIEVING = {"STREAMPROC_CLOCK_TOLERANCE": str(40 * 365 * 86_400)}


def tally(topology: str, at_ms: int) -> Tally:
    return start_tally(topology, FRONTEND, at_ms, at_ms, "Terminal shell in container", 4, "", "")


async def _publish(bootstrap: str, records: list[tuple[Tally, int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for record, at_ms in records:
            await producer.send_and_wait(
                Topics().tallies,
                key=record.workload_key.encode(),
                value=record.encode(),
                timestamp_ms=at_ms,
            )
    finally:
        await producer.stop()


class Ladder:
    """Offences for one workload, and the levels the windows stage gave them."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def levels(self) -> dict[str, int]:
        """Action id -> level, over every action emitted; a replay must not change a level."""
        found: dict[str, int] = {}
        for _, value, _ in consume_all(self.bootstrap, Topics().actions, idle_s=0.5):
            action = orjson.loads(value or b"{}")
            assert found.setdefault(action["id"], action["level"]) == action["level"]
        return found

    def offend(self, topology: str, at_ms: int) -> int:
        """One qualifying window at ``at_ms``; the level of its action."""
        record = tally(topology, at_ms)
        asyncio.run(_publish(self.bootstrap, [(record, at_ms)]))
        action_id = f"{record.workload_key}/{at_ms}"
        return wait_for(
            lambda: self.levels().get(action_id), timeout=90, what=f"the action {action_id}"
        )

    def forget(self, topology: str, at_ms: int) -> None:
        record = forget_tally(topology, "shop", "Deployment", "frontend")
        asyncio.run(_publish(self.bootstrap, [(record, at_ms)]))


def test_a_repeat_offender_climbs_the_ladder_across_a_kill_per_topology_until_forgotten(
    tmp_path: Path, env: dict[str, str], broker: EmbeddedBroker
) -> None:
    folder = tmp_path / "topologies"
    folder.mkdir()
    for name in ("ladder-a", "ladder-b"):
        (folder / f"{name}.yaml").write_text(LADDER.format(name=name))
    ladder = Ladder(broker.bootstrap)
    first = Pipeline("windows", {**env, **BELIEVING}, folder, tmp_path / "windows-1.log")
    try:
        assert ladder.offend("ladder-a", T0) == 1
        # a window inside the running observation (15m) extends it: same level
        assert ladder.offend("ladder-a", T0 + 5 * 60_000) == 1
        assert ladder.offend("ladder-a", T0 + DAY_MS) == 2
    finally:
        first.kill()  # SIGKILL between offences: the history comes back from the changelog
    second = Pipeline("windows", {**env, **BELIEVING}, folder, tmp_path / "windows-2.log")
    try:
        assert ladder.offend("ladder-a", T0 + 2 * DAY_MS) == 3
        assert ladder.offend("ladder-a", T0 + 3 * DAY_MS) == 4
        assert ladder.offend("ladder-a", T0 + 4 * DAY_MS) == 4  # the last step repeats
        # another topology keeps its own history of the same workload
        assert ladder.offend("ladder-b", T0 + 4 * DAY_MS + 60_000) == 1
        # eight quiet days: the old offences no longer count
        assert ladder.offend("ladder-a", T0 + 12 * DAY_MS) == 1
        assert ladder.offend("ladder-a", T0 + 13 * DAY_MS) == 2
        # ``release --forget``: the next observation starts at the bottom again
        ladder.forget("ladder-a", T0 + 14 * DAY_MS)
        assert ladder.offend("ladder-a", T0 + 14 * DAY_MS + 60_000) == 1
        assert ladder.offend("ladder-b", T0 + 5 * DAY_MS) == 2  # its own ladder, unforgotten
    finally:
        second.stop()


SHORT = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: short
spec:
  window:
    size: 2s
    threshold: 1
  action:
    ttl: 2s
    escalation:
      ttls: [2s, 4s]
      forgetAfter: 5s
"""


def test_a_running_stage_drops_histories_past_forget_after_and_shows_how_many_it_keeps(
    tmp_path: Path, env: dict[str, str], broker: EmbeddedBroker
) -> None:
    """Bounded while it runs: a sweep every tenth of ``forgetAfter`` (1 s at least) drops each
    workload whose observation and offences are over; ``streamproc_escalation_histories``
    says how many remain."""
    folder = tmp_path / "topologies"
    folder.mkdir()
    (folder / "short.yaml").write_text(SHORT)
    windows = Pipeline("windows", env, folder, tmp_path / "windows.log")
    try:
        wait_for(
            lambda: windows.metric("streamproc_assigned_partitions", stage="windows") > 0,
            timeout=90,
            what="the windows stage to hold its partitions",
        )
        now_ms = int(time.time() * 1000)
        records = [
            (
                start_tally(
                    "short",
                    WorkloadRef("shop", "Deployment", name, "api"),
                    now_ms,
                    now_ms,
                    "Terminal shell in container",
                    4,
                    "",
                    "",
                ),
                now_ms,
            )
            for name in ("frontend", "checkout", "cart")
        ]
        asyncio.run(_publish(broker.bootstrap, records))

        def histories() -> float:
            return windows.metric("streamproc_escalation_histories", topology="short")

        wait_for(lambda: histories() == 3, timeout=30, what="three workloads in the history")
        wait_for(lambda: histories() == 0, timeout=30, what="the history emptied after forgetAfter")
        assert windows.metric("streamproc_actions_emitted_total") == 3
    finally:
        windows.stop()
