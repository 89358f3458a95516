"""Faults injected per request, and the request log tests assert on."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Fault:
    """Fail matching requests before any state change: ``times`` of them, then pass."""

    method: str = "*"
    path: str = ".*"
    status: int = 500
    times: int = 1
    retry_after: int | None = None
    delay_s: float = 0.0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return (
            self.times > 0
            and self.method in ("*", method)
            and self._pattern.search(path) is not None
        )


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw it."""

    at: float
    method: str
    path: str
    query: str
    status: int
    #: when the response was ready (``at`` is when the request arrived)
    done: float = 0.0
    #: the body of a PATCH, which says what a write changed (crash tests count duplicates)
    body: bytes = b""
