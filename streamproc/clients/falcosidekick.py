"""Detections to Falcosidekick's HTTP input, the way Falco's ``http_output`` sends them.

Falco's ``http_output`` posts each detection as one JSON document with ``Content-Type:
application/json``. Falcosidekick (falcosecurity/falcosidekick 2.34.1, ``handlers.go``,
``mainHandler``) answers 400 to a request without a body, to any method but POST, and to a body
that does not decode as a Falco payload (``types/types.go``: ``FalcoPayload``) or fails its
``Check``: a known priority, a rule, a time and non-empty ``output_fields``. Otherwise it adds
its ``customfields`` to ``output_fields`` and hands the detection to its outputs (the Kafka one
publishes it as JSON, without a key: ``outputs/kafka.go``), answering 200 with an empty body.
Posting there, instead of writing to Kafka ourselves, puts that publisher in the loop.

A refusal (4xx) is final for that detection: the same body would be refused again, so its line
is named and the next one goes (Falco itself never sends what Falcosidekick refuses; the lab's
deliberately malformed samples get here). What may pass (connection refused or reset, a
timeout, a 5xx while Falcosidekick starts) is retried a bounded number of times; then the
command stops, since nothing after it would get in either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Literal

import aiohttp

from streamproc import stopping

#: Why a detection did not get in; the message names it.
Failure = Literal["refused", "unreachable"]
#: Tries per detection, and the pauses between them: about 7.5 s for a Falcosidekick to come up.
ATTEMPTS = 5
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
#: Per request; Falcosidekick answers once its outputs have the detection queued.
TIMEOUT_S = 10.0
#: What Falco's http_output sends (``json_output: true``).
HEADERS = {"Content-Type": "application/json", "User-Agent": "streamproc"}


class PostFailed(Exception):
    """One detection did not get into Falcosidekick; the message is one plain line."""

    def __init__(self, where: str, failure: Failure, detail: str, url: str) -> None:
        self.where, self.failure, self.detail, self.url = where, failure, detail, url
        fix = (
            "fix the detection (Falcosidekick needs priority, rule, time and output_fields)"
            if failure == "refused"
            else "check that Falcosidekick listens there (its /healthz answers)"
        )
        verb = "refused it" if failure == "refused" else "was not reachable"
        super().__init__(f"{where}: Falcosidekick at {url} {verb} ({detail}); {fix}")


async def post_all(
    url: str,
    detections: Iterable[tuple[str, bytes]],
    stop: asyncio.Event,
    refused: Callable[[PostFailed], None],
) -> int | None:
    """POST each ``(where, body)`` in order; the count taken, or None if ``stop`` came first.

    Each refusal goes to ``refused``; raises PostFailed when Falcosidekick stays unreachable.
    """
    count = 0
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=HEADERS) as session:
        for where, body in detections:
            try:
                if stop.is_set() or not await _post(session, url, where, body, stop):
                    return None
            except PostFailed as exc:
                if exc.failure != "refused":
                    raise
                refused(exc)
                continue
            count += 1
    return count


async def _post(
    session: aiohttp.ClientSession, url: str, where: str, body: bytes, stop: asyncio.Event
) -> bool:
    """True once Falcosidekick took ``body``; False if ``stop`` was set while retrying."""
    detail = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            await stopping.pause(stop, BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
            if stop.is_set():
                return False
        try:
            async with session.post(url, data=body) as response:
                text = (await response.text(errors="replace")).strip()
                if response.status < 300:
                    return True
                detail = f"HTTP {response.status} {text[:200]}".strip()
                if response.status < 500:
                    raise PostFailed(where, "refused", detail, url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
    raise PostFailed(where, "unreachable", f"{detail}, after {ATTEMPTS} tries", url)
