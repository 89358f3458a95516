"""Work that needs the brokers, tried again when they go away at the wrong moment.

A stage starts its clients after :func:`.admin.wait_for_broker` heard Kafka answer, but the
brokers can go away in the seconds between (a broker restarted by a rollout, a network blip).
Once running, every stage rides out an outage; failing in those seconds instead would end the
whole process for the same outage. So an attempt that finds Kafka gone is undone (its clients
stopped), the wait starts again, and the attempt is made anew, with fresh clients, once Kafka
answers. A refusal (credentials, a certificate, ACLs) is raised at once: waiting changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)

from streamproc import stopping
from streamproc.clients.kafka.admin import wait_for_broker
from streamproc.clients.kafka.connecting import Client, stop_clients
from streamproc.clients.kafka.explaining import describe, refused

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

    from streamproc.settings import Settings

log = logging.getLogger("streamproc.kafka")

T = TypeVar("T")
C = TypeVar("C", bound="Sequence[Client]")

#: how often an attempt that keeps failing because Kafka went away says so again
REPORT_EVERY_S = 30.0

#: what the clients raise when the brokers could not be reached or did not answer; aiokafka's
#: admin client raises Python's own TimeoutError when no connection got ready in time
_AWAY = (
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    KafkaTimeoutError,
    TimeoutError,
    OSError,
)


def went_away(exc: BaseException) -> bool:
    """Whether ``exc`` says the brokers were not there (rather than that they refused us)."""
    if isinstance(exc, ssl.SSLError):
        return False  # a certificate or a TLS setting: waiting changes nothing
    if isinstance(exc, KafkaError) and refused(exc):
        return False
    return isinstance(exc, _AWAY)


async def when_reachable(
    settings: Settings,
    stop: asyncio.Event,
    attempt: Callable[[], Coroutine[Any, Any, T]],
    what: str,
) -> T | None:
    """``attempt()``'s result, made again each time Kafka is back; None once ``stop`` is set.

    ``what`` names the work for the one line said when Kafka went away during it.
    """
    delay = 0.2
    said_at: float | None = None
    while not stop.is_set():
        try:
            # a stop cancels the attempt (a connect to an address that never answers waits for
            # the clients' own timeout); what it started is stopped by its own cleanup
            return await stopping.unless_stopped(attempt(), stop)
        except (KafkaError, OSError) as exc:  # OSError: TimeoutError among them
            if not went_away(exc):
                raise
            if said_at is None or time.monotonic() - said_at >= REPORT_EVERY_S:
                said_at = time.monotonic()  # a flapping broker: one line, then the wait's own
                log.warning(
                    "Kafka went away while %s (%s); waiting for it to start again",
                    what,
                    describe(exc),
                )
        if not await wait_for_broker(settings, stop):
            break
        # the brokers answer the probe yet the attempt failed: do not spin while they settle
        await stopping.pause(stop, delay)
        delay = min(delay * 2, 5.0)
    return None


async def start_when_reachable(
    settings: Settings, stop: asyncio.Event, make: Callable[[], C], what: str
) -> C | None:
    """The clients ``make()`` builds, started; None when ``stop`` was set first.

    Clients whose start failed because Kafka went away are stopped and built anew once it is
    back: an aiokafka client whose start failed half way cannot be started again.
    """

    async def attempt() -> C:
        clients = make()
        try:
            for client in clients:
                await client.start()
        except BaseException:
            await stop_clients(clients)
            raise
        return clients

    return await when_reachable(settings, stop, attempt, what)


@contextlib.asynccontextmanager
async def started_when_reachable(
    settings: Settings, stop: asyncio.Event, make: Callable[[], C], what: str
) -> AsyncIterator[C | None]:
    """:func:`start_when_reachable` for a block; the clients are stopped after, come what may."""
    clients = await start_when_reachable(settings, stop, make, what)
    try:
        yield clients
    finally:
        if clients is not None:
            await stop_clients(clients)
