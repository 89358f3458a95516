"""A fix to aiokafka itself, applied on import, until aiokafka ships it.

aiokafka's consumer raises CancelledError from ``stop()`` when a fetch is backing off after a
failure (as every fetch does while the brokers are away): its fetcher's ``close`` cancels its
pending fetch tasks, then awaits each one, which re-raises the cancellation (aiokafka 0.13-0.14
``consumer/fetcher.py`` ``Fetcher.close``; aio-libs/aiokafka#647, open; the same lines are named
in #983). ``stop()`` then ends before the consumer's connections are closed, and whoever stops
it takes that CancelledError for its own: streamproc's stages stopped no further client, and
Faust's consumer thread ended with it, leaving a task pending at exit.

The replacement is the same ``close`` with the cancelled tasks gathered. It is applied only to the
releases named in :data:`FIXED_RELEASES` (pyproject.toml pins aiokafka below 0.15); check it
again when that pin moves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
from aiokafka.consumer.fetcher import Fetcher

#: the aiokafka releases whose ``Fetcher.close`` is known to need the fix (pyproject's pin)
FIXED_RELEASES = ("0.13.", "0.14.")


async def _close(self: Any) -> None:
    """``Fetcher.close`` (aiokafka 0.14), each cancelled task awaited without re-raising.

    A cancellation of the task that calls ``close`` still propagates (``gather`` raises it),
    after the waiters are told and every pending fetch is cancelled all the same.
    """
    self._closed = True
    self._fetch_task.cancel()
    try:
        await asyncio.gather(self._fetch_task, return_exceptions=True)
    finally:
        for waiter in self._fetch_waiters:
            self._notify(waiter)
        pending = list(self._pending_tasks)
        for task in pending:
            task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def apply() -> bool:
    """Replace ``Fetcher.close`` in the releases known to need it; whether it was replaced."""
    if not aiokafka.__version__.startswith(FIXED_RELEASES):
        return False  # another release: its own close stands until checked again
    Fetcher.close = _close
    return True
