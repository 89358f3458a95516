"""Stopping on SIGINT/SIGTERM within a bounded time, in every state a process can be in.

A stage asked to stop finishes its batch, commits what it safely can and closes its clients;
that usually takes a second. But some states cannot finish on their own: a client reconnecting
to a broker that is gone, Faust's consumer thread (a non-daemon thread that keeps the
interpreter alive after the event loop ended), a call blocked in a library. So the first signal
asks for a clean stop *and* arms a watchdog: if the process has not ended ``grace_s`` later, it
says what was still running and exits. A second signal exits at once. Kubernetes' rollout then
never waits out the grace period, and a person's Ctrl-C always works.

The handlers are installed with :func:`signal.signal`, not the event loop's
``add_signal_handler``: those run only when the loop gets a turn, and a blocked loop is exactly
the case this module is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("streamproc")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    return 128 + signum


def _say(line: str) -> None:
    """One line on stderr, written directly: it must work from a signal handler or a thread."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing more to say
        os.write(sys.stderr.fileno(), (line + "\n").encode())


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()


def _pending(loop: asyncio.AbstractEventLoop) -> str:
    try:
        names = sorted({task.get_name() for task in asyncio.all_tasks(loop) if not task.done()})
    except RuntimeError:  # the loop changed its tasks while we looked: say nothing specific
        return "unknown"
    return ", ".join(names) or "no tasks (a thread)"


class Signals:
    """Turns the first signal into a stop request with a deadline, the second into an exit."""

    def __init__(self, grace_s: float, name: str = "streamproc") -> None:
        self.grace_s = grace_s
        self.name = name
        #: the first signal received, if any
        self.received: int | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, Any] = {}

    def install(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        """Route SIGINT and SIGTERM here until :meth:`uninstall`."""
        self._loop, self._stop = loop, stop
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put back the handlers that were there before."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        signame = signal.Signals(signum).name
        if self.received is not None:
            _say(f"{self.name}: second {signame}: stopping now, without a clean shutdown")
            _flush()
            os._exit(exit_code(signum))
        self.received = signum
        _say(
            f"{self.name}: {signame} received, stopping (at most {self.grace_s:g}s; "
            "send it again to stop at once)"
        )
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        watchdog = threading.Timer(self.grace_s, self._overdue, args=(signum,))
        watchdog.daemon = True
        watchdog.name = "streamproc-stop-watchdog"
        watchdog.start()

    def _overdue(self, signum: int) -> None:
        still = _pending(self._loop) if self._loop is not None else "unknown"
        _say(
            f"{self.name}: did not stop within {self.grace_s:g}s (still running: {still}); "
            "exiting now. Records not yet committed will be read again after a restart."
        )
        _flush()
        os._exit(exit_code(signum))


def run(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    *,
    grace_s: float,
    name: str = "streamproc",
) -> int | None:
    """Run ``main(stop)`` until it returns; signals set ``stop``. Returns the first signal.

    ``main`` should return soon after ``stop`` is set; if it does not within ``grace_s`` of
    the first signal, the process exits with ``128 + signal``.
    """
    signals = Signals(grace_s, name)

    async def wrapper() -> None:
        stop = asyncio.Event()
        signals.install(asyncio.get_running_loop(), stop)
        await main(stop)

    try:
        asyncio.run(wrapper())
    finally:
        signals.uninstall()
    return signals.received


def finish(code: int, *, grace_s: float = 5.0) -> None:
    """Exit with ``code``, even if a library left a non-daemon thread running.

    Faust's consumer thread is one: without this the interpreter waits for it forever after
    the event loop ended. Threads get ``grace_s`` to end on their own first.
    """
    _flush()
    ends = time.monotonic() + grace_s
    lingering = False
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(timeout=max(0.0, ends - time.monotonic()))
        lingering = lingering or thread.is_alive()
    if lingering:
        _flush()
        os._exit(code)
    sys.exit(code)


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None once ``stop`` is set first (``work`` is then cancelled).

    For one-shot commands: their work ends on its own, or a signal cancels it, and its
    ``finally`` blocks (closing clients, ending worker processes) still run.
    """
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return task.result() if not task.cancelled() else None


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile: a delay that never delays a stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
