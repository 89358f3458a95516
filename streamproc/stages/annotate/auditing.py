"""The audit trail: one JSON record per action outcome and per expiry, on ``streamproc.audit``.

Who (topology, rule, a sample of detection uuids), what (object, pods, annotations), when, and
the result (an ``outcomes.Outcome``; docs/operating.md lists them all).
Records are produced without waiting on each one; the annotator flushes them before it commits
a batch of actions (so a crash replays the batch rather than losing its records) and the expirer
after each round (an expiry's records that wait for its network evidence are flushed by the
evidence work once written, ``evidencing``). An audit that cannot be written is counted and
logged, never a reason to hold back an observation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import orjson

from streamproc.clients import metrics
from streamproc.model import conventions, outcomes

log = logging.getLogger("streamproc.audit")


def handled(result: outcomes.Handled) -> None:
    """Count an action the annotator is done with (``streamproc_actions_handled_total``)."""
    metrics.actions_handled.labels(result=result).inc()


class Auditor(Protocol):
    """Where audit records go."""

    def record(self, *, result: outcomes.Outcome, **fields: Any) -> None:
        """Write one record (``time`` is added)."""

    async def flush(self) -> None:
        """Return once every record so far is durable (or failed and counted)."""


class NullAuditor:
    """Keeps nothing (tests of other behaviour, tools that only read)."""

    def record(self, *, result: outcomes.Outcome, **fields: Any) -> None:
        """Drop the record."""

    async def flush(self) -> None:
        """Nothing to wait for."""


class KafkaAuditor:
    """Produces records to the audit topic through a started aiokafka producer."""

    def __init__(self, producer: Any, topic: str, *, cluster: str = "") -> None:
        self._producer = producer
        self._topic = topic
        #: every record names its cluster when many share one Kafka (and so one audit topic)
        self._cluster = {"cluster": cluster} if cluster else {}
        self._pending: set[asyncio.Task[Any]] = set()

    def record(self, *, result: outcomes.Outcome, **fields: Any) -> None:
        """Queue the record for sending; failures are counted, not raised."""
        now = conventions.format_time(time.time())
        doc = {"time": now, **self._cluster, "result": result, **fields}
        key = f"{fields.get('namespace', '')}/{fields.get('kind', '')}/{fields.get('name', '')}"
        task = asyncio.ensure_future(
            self._producer.send(self._topic, value=orjson.dumps(doc), key=key.encode())
        )
        self._pending.add(task)
        task.add_done_callback(self._queued)

    async def flush(self) -> None:
        """Wait until every record so far reached the broker (or failed)."""
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._producer.flush()

    def _queued(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            self._failed(task.exception())
            return
        task.result().add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._failed(future.exception())

    @staticmethod
    def _failed(exc: BaseException | None) -> None:
        metrics.stage_errors.labels(stage="audit", error=type(exc).__name__).inc()
        log.warning("audit record not written: %s", exc)
