"""Topics and the brokers' health: create what is missing, wait for Kafka, report outages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streamproc import stopping
from streamproc.clients import metrics
from streamproc.clients.kafka.connecting import connection_options
from streamproc.clients.kafka.explaining import describe, refused

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable

    from streamproc.settings import Settings

log = logging.getLogger("streamproc.kafka")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic streamproc creates when it is missing."""

    name: str
    partitions: int


async def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> None:
    """Create missing topics one by one (so one that exists cannot abort the others)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    try:
        await admin.start()  # in the try: one whose start failed holds connections too
        existing = set(await admin.list_topics())
        for spec in specs:
            if spec.name in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(spec.name, spec.partitions, 1)])
            existing.add(spec.name)
    finally:
        await admin.close()


async def partition_counts(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    """How many partitions each existing topic of ``names`` has (missing ones are left out)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    try:
        await admin.start()
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    return {
        str(t["topic"]): len(t["partitions"])
        for t in described
        if not t.get("error_code") and t.get("partitions")
    }


async def wait_for_broker(
    settings: Settings, stop: asyncio.Event, *, report_every_s: float = 5.0
) -> bool:
    """Wait until the brokers answer, or ``stop`` is set; True when they answered.

    A stage may start before Kafka does (a rollout, a broker restart, a typo in the address):
    it retries with backoff instead of failing, says so in one line every ``report_every_s``
    and in ``streamproc_kafka_up``, and a stop request ends the wait at once.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    next_report = began
    delay = 0.2
    while not stop.is_set():
        probe = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=5000)
        try:
            await _until_stopped(probe.start(), stop, timeout_s=10.0)
        except (KafkaError, OSError, TimeoutError) as exc:
            metrics.kafka_up.set(0)
            if isinstance(exc, KafkaError) and refused(exc):
                raise  # credentials or a certificate: waiting will not change the answer
            if loop.time() >= next_report:
                log.warning(
                    "Kafka not reachable at %s for %.0fs (%s); retrying. Check "
                    "--bootstrap-servers / STREAMPROC_BOOTSTRAP_SERVERS and that the brokers run",
                    settings.bootstrap_servers,
                    loop.time() - began,
                    describe(exc),
                )
                next_report = loop.time() + report_every_s
        else:
            metrics.kafka_up.set(1)
            return True
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
        await stopping.pause(stop, delay)
        delay = min(delay * 2, 2.0)
    return False


async def _until_stopped(work: Awaitable[Any], stop: asyncio.Event, *, timeout_s: float) -> Any:
    """Await ``work``, giving up when ``stop`` is set (TimeoutError) or after ``timeout_s``."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise TimeoutError("stopped" if stop.is_set() else f"no answer within {timeout_s:g}s")
    return task.result()


async def watch_broker(settings: Settings, stop: asyncio.Event, interval_s: float = 2.0) -> None:
    """Probe the brokers until ``stop``; report an outage once, in the log and in metrics.

    The stages' clients reconnect on their own (aiokafka retries forever); what an operator
    lacks during an outage is one clear signal, so this says when Kafka went away, when it came
    back and how long it was gone (``streamproc_kafka_up``, ``..._outages_total``,
    ``..._outage_duration_seconds``).
    """
    loop = asyncio.get_running_loop()
    down_since: float | None = None
    admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=5000)
    started = False
    metrics.kafka_up.set(1)
    try:
        while not stop.is_set():
            try:
                if not started:
                    await admin.start()
                    started = True
                # one small topic every stage may describe, not the whole cluster's metadata
                probe = admin.describe_topics([settings.topics.dead_letters])
                await asyncio.wait_for(probe, timeout=interval_s * 2)
            except (KafkaError, OSError, TimeoutError) as exc:
                if down_since is None:
                    down_since = loop.time()
                    metrics.kafka_up.set(0)
                    metrics.kafka_outages.inc()
                    log.warning("Kafka unreachable at %s: %s", settings.bootstrap_servers, exc)
            else:
                if down_since is not None:
                    lasted = loop.time() - down_since
                    metrics.kafka_outage_seconds.observe(lasted)
                    metrics.kafka_up.set(1)
                    log.warning("Kafka reachable again after %.1fs", lasted)
                    down_since = None
            await stopping.pause(stop, interval_s)
    finally:
        if started:
            await admin.close()
