"""The API budget's lanes: while several wait they take turns, tokens and connections alike."""

from __future__ import annotations

import asyncio

from streamproc.clients import throttling


async def test_waiting_lanes_take_turns_for_tokens() -> None:
    """Ten expiry requests queued first and three applies after: the applies are let through
    every other token, not after the ten.
    """
    limiter = throttling.FairLimiter(rate=1000, burst=1)
    order: list[str] = []

    async def request(lane: str) -> None:
        await limiter.acquire(lane)
        order.append(lane)

    expiries = [asyncio.create_task(request("expire")) for _ in range(10)]
    await asyncio.sleep(0)  # the expiries are in line before the applies ask
    applies = [asyncio.create_task(request("apply")) for _ in range(3)]
    await asyncio.gather(*expiries, *applies)
    assert order[:7] == ["expire", "expire", "apply", "expire", "apply", "expire", "apply"]
    assert limiter.granted == {"expire": 10, "apply": 3}


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    """A request given up while waiting takes no token: the next in line gets it."""
    limiter = throttling.FairLimiter(rate=1000, burst=1)
    await limiter.acquire("apply")  # the burst is spent
    gone = asyncio.create_task(limiter.acquire("expire"))
    await asyncio.sleep(0)
    gone.cancel()
    await limiter.acquire("apply")
    assert limiter.granted == {"apply": 2}


async def test_waiting_lanes_take_turns_for_connections() -> None:
    """With every connection held, freed ones go to the lanes in turn, not in arrival order."""
    slots = throttling.FairSlots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.slot("apply"):
            await release.wait()

    async def request(lane: str) -> None:
        async with slots.slot(lane):
            order.append(lane)
            await asyncio.sleep(0)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(request("apply")) for _ in range(4)]
    await asyncio.sleep(0)
    waiting += [asyncio.create_task(request("expire")) for _ in range(2)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, *waiting)
    assert order == ["apply", "expire", "apply", "expire", "apply", "apply"]


async def test_the_lane_follows_the_task_that_set_it() -> None:
    """Requests made within ``lane`` (tasks started there too) spend in that lane; others in
    the default one.
    """
    seen: list[str] = []

    async def look() -> None:
        seen.append(throttling.current_lane())

    with throttling.lane("expire"):
        await asyncio.create_task(look())
    await look()
    assert seen == ["expire", "apply"]
