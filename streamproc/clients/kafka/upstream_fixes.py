"""A fix to aiokafka itself, applied on import, until aiokafka ships it.

aiokafka's consumer raises CancelledError from ``stop()`` when a fetch is backing off after a
failure (as every fetch does while the brokers are away): its fetcher's ``close`` cancels its
pending fetch tasks, then awaits each one, which re-raises the cancellation (aiokafka 0.13-0.14
``consumer/fetcher.py`` ``Fetcher.close``; aio-libs/aiokafka#647, open; the same lines are named
in #983). ``stop()`` then ends before the consumer's connections are closed, and whoever stops
it takes that CancelledError for its own: streamproc's stages stopped no further client, and
Faust's consumer thread ended with it, leaving a task pending at exit.

The replacement is the same ``close`` with the cancelled tasks gathered. aiokafka is pinned below
0.15 in pyproject.toml; check this again when that pin moves.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka.consumer.fetcher import Fetcher


async def _close(self: Any) -> None:
    """``Fetcher.close`` (aiokafka 0.14), its cancelled pending tasks awaited without raising."""
    self._closed = True
    self._fetch_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await self._fetch_task
    for waiter in self._fetch_waiters:
        self._notify(waiter)
    pending = list(self._pending_tasks)
    for task in pending:
        task.cancel()
    # a cancellation of the task calling close() still propagates out of gather
    await asyncio.gather(*pending, return_exceptions=True)


def apply() -> None:
    """Replace ``Fetcher.close`` (idempotent)."""
    Fetcher.close = _close
