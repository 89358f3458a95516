"""One request budget shared fairly: a token bucket whose tokens go to the waiting lanes in turn.

The annotate stage's API budget (``--api-qps``, ``--api-burst``) is spent by two kinds of work
that arrive in very different shapes: actions (a few requests for a workload that just
offended, latency matters) and expiry (every pod whose observation ends in the same
epoch-aligned second, a thousand at once under a real incident). A plain leaky bucket serves
requests in arrival order, so a new detection's apply queued behind a whole expiry burst.
Here each request names its lane; while several lanes wait, tokens go to them round robin, and
a lane alone gets the whole budget. The connections in flight (``--api-concurrency``) are
shared the same way, or a lane holding every connection would take every token. So an apply
waits for at most one expiry request per request of its own, expiry keeps half the budget
through a storm of actions, and either runs at the full rate when the other is not asking.

The lane is taken from the calling task's context (``lane``), so the code that knows what kind
of work it does says so once, and every request it makes on its way is counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

#: what a request is for: ``apply`` (actions, following new pods, the cluster cache: the
#: default) or ``expire`` (ending observations); Events have a budget of their own
Lane = Literal["apply", "expire"]
_LANE: contextvars.ContextVar[Lane] = contextvars.ContextVar("streamproc_lane", default="apply")


@contextlib.contextmanager
def lane(name: Lane) -> Iterator[None]:
    """Spend the budget in ``name``'s lane for the requests made within (tasks started too)."""
    token = _LANE.set(name)
    try:
        yield
    finally:
        _LANE.reset(token)


def current_lane() -> Lane:
    """The lane the running task spends in."""
    return _LANE.get()


class FairLimiter:
    """``burst`` requests at once, ``rate`` a second sustained, shared by lanes in turn."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._stamp = clock()
        self._turns = _Turns()
        self._timer: asyncio.TimerHandle | None = None
        #: tokens handed out, per lane (what each kind of work cost)
        self.granted: Counter[str] = Counter()

    def retune(self, rate: float, burst: int) -> None:
        """Change the rate and burst in place; waiters keep their place in line."""
        self._refill()
        self._rate = rate
        self._burst = max(1, burst)
        self._tokens = min(self._tokens, float(self._burst))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule()

    def has_capacity(self) -> bool:
        """Whether a request would be let through now, without waiting."""
        self._refill()
        return not self._turns and self._tokens >= 1

    async def acquire(self, lane: str) -> None:
        """Wait for a token in ``lane``'s turn."""
        if self.has_capacity():
            self._tokens -= 1
            self.granted[lane] += 1
            return
        waiter = self._turns.join(lane)
        self._schedule()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # granted, but the caller is gone: the token goes to the next in line
                self._tokens += 1
                self.granted[lane] -= 1
                asyncio.get_running_loop().call_soon(self._dispatch)
            raise

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def _dispatch(self) -> None:
        """Hand out the tokens there are, one lane after the other."""
        self._timer = None
        self._refill()
        while self._tokens >= 1 and (lane := self._turns.serve()) is not None:
            self._tokens -= 1
            self.granted[lane] += 1
        self._schedule()

    def _schedule(self) -> None:
        """Wake up when the next token is there, if anyone waits for it."""
        if self._timer is not None or not self._turns:
            return
        delay = max(0.0, (1 - self._tokens) / self._rate)
        self._timer = asyncio.get_running_loop().call_later(delay, self._dispatch)


class _Turns:
    """Waiters per lane, served round robin: what both the limiter and the slots queue in."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._order: deque[str] = deque()

    def __bool__(self) -> bool:
        return bool(self._order)

    def join(self, lane: str) -> asyncio.Future[None]:
        """A future resolved when ``lane``'s waiter is served."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(lane, deque())
        if not queue:
            self._order.append(lane)
        queue.append(waiter)
        return waiter

    def serve(self) -> str | None:
        """Resolve the next lane's first live waiter; the lane served, or None if none waits."""
        while self._order:
            lane = self._order.popleft()
            queue = self._waiting[lane]
            while queue and queue[0].done():  # cancelled while waiting
                queue.popleft()
            served = None
            if queue:
                queue.popleft().set_result(None)
                served = lane
            while queue and queue[0].done():
                queue.popleft()
            if queue:
                self._order.append(lane)
            if served is not None:
                return served
        return None


class FairSlots:
    """At most ``size`` requests in flight, slots handed to the waiting lanes in turn."""

    def __init__(self, size: int) -> None:
        self._free = max(1, size)
        self._turns = _Turns()

    @contextlib.asynccontextmanager
    async def slot(self, lane: str) -> AsyncIterator[None]:
        """Hold a slot in ``lane``'s turn for the block."""
        if self._free > 0 and not self._turns:
            self._free -= 1
        else:
            waiter = self._turns.join(lane)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # handed a slot, but the caller is gone
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if self._turns.serve() is None:
            self._free += 1
