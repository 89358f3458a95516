"""Logging set-up: one line per event, and client libraries kept from flooding the log.

During a broker outage aiokafka logs every failed connect, metadata refresh and fetch: thousands
of ERROR lines a minute (docs/measurements.md). Operators need to know the broker is down
(``kafka.watch_broker`` says so once, and in metrics), not two hundred times a second.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

LIBRARIES = ("aiokafka", "faust", "mode", "kafka", "kubernetes_asyncio")


class RepeatFilter(logging.Filter):
    """Lets a library's message through once per ``window_s``; says how many were held back.

    Messages are told apart by logger, level and format string (not their arguments), so
    "Unable connect to node with id 1: ..." is one message however often it repeats.
    """

    def __init__(self, window_s: float = 30.0, libraries: tuple[str, ...] = LIBRARIES) -> None:
        super().__init__()
        self.window_s = window_s
        self._prefixes = tuple(f"{name}." for name in libraries)
        self._libraries = libraries
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is written; may add the count of those held back."""
        if not (record.name in self._libraries or record.name.startswith(self._prefixes)):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last, held = self._seen.get(key, (-self.window_s, 0))
        if now - last < self.window_s:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:  # bounded, whatever a library logs
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} similar messages in the last {now - last:.0f}s]"
        return True


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A client library's thread that ends with an error gets one line, not a traceback.

    Faust runs its consumer in a thread; stopped while the broker is gone, it ends with a
    CancelledError or a connection error that says nothing a person can act on twice.
    """
    name = args.thread.name if args.thread is not None else "a thread"
    if isinstance(args.exc_value, asyncio.CancelledError | ConnectionError | OSError) or (
        type(args.exc_value).__module__.startswith(("aiokafka", "kafka", "mode", "faust"))
    ):
        logging.getLogger("streamproc").warning(
            "%s ended: %s: %s", name, type(args.exc_value).__name__, args.exc_value
        )
        return
    threading.__excepthook__(args)


def setup(level: str) -> None:
    """One line per event; libraries at WARNING and above, repeats held back."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    repeats = RepeatFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    threading.excepthook = _thread_died
