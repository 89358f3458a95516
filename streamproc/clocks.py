"""Time and clocks: which record times streamproc believes, and whose clock it keeps.

Every time streamproc compares comes from a clock it does not own. A Kafka record's time is,
by default (``message.timestamp.type=CreateTime``), whatever its producer wrote: a Falco host's
clock, a tool's, or a forged value such as year 9999, which once hung Faust's window arithmetic
(``HoppingWindow.ranges`` overflows past window size x 2**31 s) and with it the windows stage.
A replica's clock may run ahead or behind the others, and the pods carry absolute expiry times
that every replica reads. So (docs/reliability.md, "Time and clocks"):

- ingest windows a record at its own *arrival* clock when the record's time is absent or
  negative, more than the tolerance ahead of the arrival, or more than the tolerance behind
  while the record is provably fresh (appended after the consumer last saw the partition's
  end): that is a producer's clock behind, not a backlog. A backlog keeps its record times.
- the windows stage refuses a tally stamped more than an hour ahead of its own clock, or beyond
  what Faust's window arithmetic holds: anyone who can write ``streamproc.tallies`` is untrusted.
- processes that talk to the API server keep its time: each response's ``Date`` header bounds
  the difference between the two clocks, and the estimate is exported and applied, so every
  annotate replica reads the pods' ``expires-at`` through the same clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from email.utils import parsedate_to_datetime
from typing import Literal

#: why a record was windowed at its arrival rather than at its own time (a metric label)
Retimed = Literal["absent", "ahead", "behind"]
#: a tally further ahead of the windows stage's clock than this (or than twice the tolerance,
#: if that is more) is refused. Faust keeps each partition's latest window time and drops every
#: window older than it by the window's expiry, so one tally stamped ahead disturbs counting on
#: its partition until real time catches up: the bound caps that at an hour, Kafka 4's own
#: default bound for CreateTime (``message.timestamp.after.max.ms``, KIP-1030).
FAR_AHEAD_S = 3600.0
#: the API server's clock is believed within this distance of ours; a ``Date`` further off is
#: reported but not applied (a broken or hostile answer must not move our clock by years)
MAX_CORRECTION_S = 86_400.0
#: a ``Date`` header has second resolution: differences below this are noise, not skew
DATE_RESOLUTION_S = 1.0


def record_time(
    timestamp_ms: int, arrival_ms: int, tolerance_ms: int, fresh_since_ms: int | None
) -> tuple[int, Retimed | None]:
    """The time to window a record at, and why it is not the record's own (None when it is).

    ``fresh_since_ms`` is when (on the arrival clock) the consumer last saw the end of the
    record's partition below this record's offset, so the broker appended the record after it;
    None when that is not known (a backlog, the first fetch). Ingest calls this only for the
    few records outside ``arrival +- tolerance``: the common case costs two comparisons there.
    """
    if timestamp_ms < 0:  # -1 is Kafka's "no timestamp"; other negatives are no time at all
        return arrival_ms, "absent"
    if timestamp_ms > arrival_ms + tolerance_ms:
        return arrival_ms, "ahead"
    if fresh_since_ms is not None and timestamp_ms < fresh_since_ms - tolerance_ms:
        return arrival_ms, "behind"
    return timestamp_ms, None


def ahead_bound_s(tolerance_s: float) -> float:
    """How far ahead of the windows stage's clock a tally may be stamped.

    Ingest stamps tallies at most the tolerance ahead of its own clock, and that clock may be
    the tolerance ahead of the windows stage's: twice the tolerance, and never less than an hour.
    """
    return max(FAR_AHEAD_S, 2 * tolerance_s)


def tally_time_refused(
    message_s: float, window_start_ms: int, window_size_s: float, now_s: float, ahead_s: float
) -> str | None:
    """Why the windows stage must not let Faust see this tally's times; None when it may.

    ``message_s`` is the Kafka record time Faust windows by, ``window_start_ms`` the tally's
    own field the action is built from; both must be sane, whoever wrote the record, and
    neither more than ``ahead_s`` ahead of ``now_s``.
    """
    # Faust's compiled HoppingWindow.ranges counts in a C int of window steps: past
    # size x (2**31 - 1) seconds its loop never ends (faust-streaming 0.15.3, windows.pyx)
    limit = window_size_s * (2**31 - 2)
    for what, seconds in (("record time", message_s), ("window_start", window_start_ms / 1000)):
        if not math.isfinite(seconds) or seconds < 0:
            return f"{what} {seconds!r} is before 1970"
        if seconds >= limit:
            return f"{what} {seconds:.0f} is beyond what Faust's windows hold ({limit:.0f})"
        if seconds > now_s + ahead_s:
            return (
                f"{what} {seconds:.0f} is {seconds - now_s:.0f}s ahead of this stage's clock "
                f"(at most {ahead_s:.0f}s)"
            )
    return None


def http_date(value: str) -> float | None:
    """Seconds since the epoch of an HTTP ``Date`` (RFC 9110 IMF-fixdate); None if unreadable."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None  # RFC 9110 dates are GMT; one without a zone says nothing reliable
    return parsed.timestamp()


class Skew:
    """How far this process's clock is from a server's, from the ``Date`` headers it sends.

    A ``Date`` says the server's clock read ``D`` (whole seconds) at some moment between our
    sending the request and reading the answer, so ``local - server`` lies within
    ``(sent - D - 1, received - D]``. Intersecting the intervals of the latest answers narrows
    that to about a round trip; when they stop overlapping (a clock was stepped), the newest
    ones win. ``seconds`` is the middle of what is left: positive when our clock is ahead.
    """

    def __init__(self, keep: int = 16) -> None:
        self._bounds: deque[tuple[float, float]] = deque(maxlen=keep)
        self.seconds = 0.0
        #: whether any ``Date`` was read yet
        self.measured = False
        self._last = 0.0

    def add(self, date: str | None, sent: float, received: float) -> bool:
        """Take one answer's ``Date`` with our clock when asked and answered; False if unread."""
        server = http_date(date) if date else None
        if server is None or received < sent:
            return False
        self._bounds.append((sent - server - DATE_RESOLUTION_S, received - server))
        low, high = -math.inf, math.inf
        for lo, hi in reversed(self._bounds):
            if max(low, lo) > min(high, hi):
                break  # older answers disagree with newer ones: the newer are right
            low, high = max(low, lo), min(high, hi)
        self.seconds = (low + high) / 2
        self.measured = True
        return True

    @property
    def applied(self) -> float:
        """The correction a clock applies: the skew, unless too small or beyond belief.

        Below a ``Date``'s resolution nothing is measurable, and a host in step keeps its own
        clock exactly.
        """
        if DATE_RESOLUTION_S < abs(self.seconds) <= MAX_CORRECTION_S:
            return self.seconds
        return 0.0

    def now(self) -> float:
        """The server's time, by our clock corrected for the skew; it never runs backwards.

        The estimate moves by fractions of a second as answers come in. A clock that stepped
        back could show an expirer's "ended" moment as not yet reached to a follower that
        then put a pod just released under observation again.
        """
        self._last = max(self._last, time.time() - self.applied)
        return self._last
