"""An ended observation's Event and audit record, with its network evidence, written afterwards.

The expirer ends an observation on time whatever Prometheus does: it writes the release, then
hands the Event and the audit records to :class:`Evidencer`, which reads the evidence in bounded
background work (``workers`` at once, at most ``queue`` waiting) and then has the expirer write
them, with the evidence or with why it is missing. It first waits ``delay_s`` (the last scrape
before the end, and a managed Prometheus's ingestion, must land first; the queries still
evaluate at the end). Each ending has a deadline, ``delay_s + total_s`` after it was handed
over: what has not been read by then is written at once (``overloaded``), so a record never
waits longer than that whatever the backlog (and a crash loses at most that much). A full queue
writes at once too (``overloaded``), and at the stop what is still waiting gets ``grace_s``,
then is written without evidence (``shutdown``). Records carry the ending's time, not the
write's (the expirer stamps them). Records written here are flushed here (bounded, in the
background so a slow broker never holds up the next read), as the expirer flushes its own after
each round.
Without a Prometheus (``--prometheus-url`` unset) it writes at once, as before evidence existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from streamproc.clients import kube, metrics, prometheus
from streamproc.cluster import evidencing
from streamproc.model import evidence, outcomes

log = logging.getLogger("streamproc.evidence")
#: evidence reads at once, and ended observations waiting for one, per process (what waits
#: longer than its deadline is written without evidence anyway: the bound is time, not this)
WORKERS = 4
QUEUE = 1_000
#: how long evidence work may go on after the stop before records are written without it
GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class Ending:
    """An ended observation's Event and audit records, waiting for its evidence."""

    #: the object as the release returned it (the Event's subject)
    current: kube.Json
    #: the Event's text before the evidence line (``removed ...``)
    message: str
    #: the audit records to write (result, fields); the first gets the ``evidence`` field
    records: list[tuple[outcomes.Outcome, dict[str, Any]]] = field(default_factory=list)
    #: the pod and range to read evidence of (None: none to read, e.g. refused marks)
    target: evidence.Target | None = None


@dataclass(frozen=True, slots=True)
class _Waiting:
    """An ending in the queue, with when to read it and when to give up (the loop's time)."""

    ending: Ending
    ready: float
    deadline: float


#: writes an ending's Event and records, with its evidence (None: none was to be read)
Write = Callable[[Ending, evidence.Evidence | None], None]


class Evidencer:
    """Reads each ending's evidence in the background, then hands it to ``write``."""

    def __init__(
        self,
        client: prometheus.Prometheus | None,
        write: Write,
        flush: Callable[[], Awaitable[None]],
        *,
        total_s: float,
        delay_s: float = 0.0,
        workers: int = WORKERS,
        queue: int = QUEUE,
        grace_s: float = GRACE_S,
    ) -> None:
        self._client = client
        self._write_now = write
        self._flush_now = flush
        self._total_s = total_s
        self._delay_s = max(0.0, delay_s)
        self._workers_n = max(1, workers)
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(maxsize=max(1, queue))
        self._grace_s = grace_s
        self._workers: list[asyncio.Task[None]] = []
        self._busy: dict[int, Ending] = {}
        self._closed = False
        self._dirty = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def bound_s(self) -> float:
        """The longest an ending waits for its evidence before it is written without it."""
        return self._delay_s + self._total_s

    @property
    def enabled(self) -> bool:
        """Whether evidence is read at all (a Prometheus is configured)."""
        return self._client is not None

    @property
    def pending(self) -> int:
        """Endings waiting for their evidence or being read."""
        return self._queue.qsize() + len(self._busy)

    def open(self) -> None:
        """Take work again (an expirer that runs again after a stop)."""
        self._closed = False

    def submit(self, ending: Ending) -> None:
        """Write ``ending`` once its evidence is read; at once without a Prometheus or a slot."""
        if self._client is None or ending.target is None:
            self._write_now(ending, None)
            return
        if self._closed:
            self._write(ending, evidence.missing(ending.target, "shutdown", "stopping"))
            return
        self._start()
        now = asyncio.get_running_loop().time()
        waiting = _Waiting(ending, now + self._delay_s, now + self.bound_s)
        try:
            self._queue.put_nowait(waiting)
        except asyncio.QueueFull:
            detail = f"{self._queue.maxsize} observations already waiting for evidence"
            self._write(ending, evidence.missing(ending.target, "overloaded", detail))

    def _start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"evidence-{n}")
                for n in range(self._workers_n)
            ]
            self._flusher = asyncio.create_task(self._flushing(), name="evidence-flush")

    async def _read(self, waiting: _Waiting) -> evidence.Evidence:
        """The ending's evidence once ``delay_s`` passed, or ``overloaded`` past its deadline."""
        assert self._client is not None
        target = waiting.ending.target
        assert target is not None
        loop = asyncio.get_running_loop()
        if (wait := waiting.ready - loop.time()) > 0:
            await asyncio.sleep(wait)  # the last scrapes before the end land meanwhile
        left = min(self._total_s, waiting.deadline - loop.time())
        if left <= 0:
            detail = f"not read within {self.bound_s:g}s of its end: too many waiting"
            return evidence.missing(target, "overloaded", detail)
        return await evidencing.gather(self._client, target, total_s=left)

    async def _work(self) -> None:
        while True:
            waiting = await self._queue.get()
            ending = waiting.ending
            key = id(ending)
            self._busy[key] = ending
            try:
                found = await self._read(waiting)
                self._busy.pop(key, None)
                self._write(ending, found)
                self._dirty.set()
            except Exception:  # a bug must not stop the worker or lose the record
                log.exception("evidence of %s failed", ending.message)
                if self._busy.pop(key, None) is not None:
                    self._write_now(ending, None)
            finally:
                self._queue.task_done()

    def _write(self, ending: Ending, found: evidence.Evidence) -> None:
        code: outcomes.EvidenceResult = found.result
        metrics.evidence_total.labels(result=code).inc()
        if found.missing is not None:
            log.info("no evidence of %s: %s (%s)", ending.message, found.missing, found.detail)
        self._write_now(ending, found)

    async def _flush(self) -> None:
        """Make what was written durable, bounded like the expirer's flush after each round."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._flush_now()), timeout=2.0)

    async def _flushing(self) -> None:
        """Flush after writes, one flush at a time, never in a reader's way."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._flush()
            except Exception:  # a broken auditor must not stop the flushes that follow
                log.exception("flushing evidence records failed")

    async def close(self) -> None:
        """Stop: ``grace_s`` for the evidence under way, then write the rest without it."""
        self._closed = True
        if not self._workers:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=self._grace_s)
        tasks = [*self._workers, *([self._flusher] if self._flusher else [])]
        for task in tasks:
            task.cancel()
        # bounded too: a reader stuck in a client that does not honour its cancellation must not
        # hold up the stop (its ending is still written below, as ``shutdown``)
        _, stuck = await asyncio.wait(tasks, timeout=self._grace_s)
        if stuck:
            log.warning("%d evidence readers did not stop in time: left behind", len(stuck))
        self._workers = []
        self._flusher = None
        left = list(self._busy.values())
        self._busy.clear()
        while not self._queue.empty():
            left.append(self._queue.get_nowait().ending)
            self._queue.task_done()
        for ending in left:
            assert ending.target is not None
            self._write(ending, evidence.missing(ending.target, "shutdown", "stopping"))
        if left:
            log.warning("%d expiries recorded without their evidence: stopping", len(left))
        await self._flush()
