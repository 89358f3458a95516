"""Background commits: in batch order, after what must precede them, and never fatal."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from streamproc.clients import kafka
from tests.conftest import async_wait_for

TP = TopicPartition("streamproc.actions", 0)


class Consumer:
    """Stands in for the consumer's commit call only (what the committer drives)."""

    def __init__(self, failures: int, log: list[str], round_trip_s: float = 0.0) -> None:
        self.failures = failures
        self.log = log
        self.round_trip_s = round_trip_s
        self.in_flight = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.in_flight = True
        await asyncio.sleep(self.round_trip_s)  # a round trip: the next batch may run meanwhile
        self.in_flight = False
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError
        self.log.append(f"commit {offsets[TP]}")


def errors() -> float:
    value = REGISTRY.get_sample_value(
        "streamproc_stage_errors_total",
        {"stage": "annotate", "error": "KafkaConnectionError"},
    )
    return value or 0.0


async def test_commits_go_in_the_background_merged_after_their_audit_and_survive_a_refusal() -> (
    None
):
    """The stage goes on while a commit is in flight; offsets that arrive meanwhile go with one
    later commit (latest offset wins); the annotator's audit flush runs before each commit; a
    commit the broker refused is counted and logged and the next one covers it; stopping
    commits what is pending at once."""
    log: list[str] = []

    async def flush() -> None:
        log.append("flush")

    committer = kafka.Committer(
        Consumer(failures=1, log=log), "annotate", before=flush, interval_s=0.3
    )
    before = errors()
    committer.commit({TP: 10})  # will be refused by the broker
    log.append("batch 2 applied")  # not held up by batch 1's commit
    await async_wait_for(lambda: errors() == before + 1, timeout=5, what="the refusal counted")
    committer.commit({TP: 20})
    committer.commit({TP: 30})
    await async_wait_for(lambda: "commit 30" in log, timeout=5, what="the merged commit")
    assert log == ["batch 2 applied", "flush", "flush", "commit 30"]  # 20 went with 30
    committer.commit({TP: 40})
    await committer.close()  # within the interval: committed now rather than lost
    assert log[-2:] == ["flush", "commit 40"]


async def test_stopping_during_a_commit_still_commits_its_offsets() -> None:
    """A stage stopping while a commit is on its way does not drop those offsets."""
    log: list[str] = []
    consumer = Consumer(failures=0, log=log, round_trip_s=30)
    committer = kafka.Committer(consumer, "ingest")
    committer.commit({TP: 50})
    await async_wait_for(lambda: consumer.in_flight, timeout=5, what="the commit in flight")
    consumer.round_trip_s = 0
    await committer.close()
    assert log == ["commit 50"]
