"""A windows stage whose Faust app crashes ends (so it is restarted) instead of idling."""

from __future__ import annotations

import asyncio

import mode
import pytest

from streamproc.stages import windows as windowing


async def test_a_crashed_app_ends_the_stage_with_its_reason() -> None:
    app = mode.Service()
    await app.start()
    stop = asyncio.Event()
    watcher = asyncio.create_task(windowing.until_crashed(app, stop))
    await app.crash(TypeError("Cannot modify table key from outside of stream iteration"))
    with pytest.raises(windowing.StageCrashed, match="TypeError: Cannot modify table key"):
        await watcher
    await app.stop()


async def test_a_requested_stop_is_not_a_crash() -> None:
    app = mode.Service()
    await app.start()
    stop = asyncio.Event()
    watcher = asyncio.create_task(windowing.until_crashed(app, stop))
    stop.set()
    await watcher  # returns, raises nothing
    assert not app.crashed
    await app.stop()
