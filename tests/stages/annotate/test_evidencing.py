"""The evidence work's bounds: a full queue writes at once, a stop writes what is left, nothing is
lost; without a Prometheus every ending is written as it comes."""

from __future__ import annotations

from streamproc.clients import prometheus
from streamproc.model import evidence
from streamproc.stages.annotate.evidencing import Ending, Evidencer
from tests import doubles as testing
from tests.stages.annotate.test_evidence_faults import never, standin

TARGET = evidence.Target("shop", ("web-0",), 1_800_000_000.0, 1_800_000_600.0)


def ending(name: str) -> Ending:
    return Ending(current={}, message=name, records=[("expired", {"name": name})], target=TARGET)


async def _nothing() -> None:
    """A flush with nothing to wait for."""


async def test_a_full_queue_writes_at_once_and_a_stop_writes_the_rest() -> None:
    """Queue of one: the second ending is written ``overloaded``; the stop writes the first."""
    written: list[tuple[str, str | None]] = []

    def write(done: Ending, found: evidence.Evidence | None) -> None:
        written.append((done.message, found.missing if found is not None else None))

    before = testing.metric("streamproc_evidence_total", result="overloaded")
    async with standin(never) as url:
        client = prometheus.Prometheus(url, timeout_s=600)
        work = Evidencer(client, write, _nothing, total_s=1200, workers=1, queue=1, grace_s=0.2)
        try:
            work.submit(ending("first"))
            work.submit(ending("second"))  # the worker has not taken the first yet: no room
            assert written == [("second", "overloaded")]
            assert work.pending == 1
            await work.close()
        finally:
            await client.close()
    assert written == [("second", "overloaded"), ("first", "shutdown")]
    assert testing.metric("streamproc_evidence_total", result="overloaded") == before + 1
    work.submit(ending("late"))  # after the stop: written at once, never dropped
    assert written[-1] == ("late", "shutdown")


async def test_without_a_prometheus_every_ending_is_written_as_it_comes() -> None:
    """No --prometheus-url: no evidence, no queue, the Event and records as before."""
    written: list[tuple[str, object]] = []
    work = Evidencer(
        None, lambda done, found: written.append((done.message, found)), _nothing, total_s=1
    )
    work.submit(ending("now"))
    assert written == [("now", None)]
    assert not work.enabled
