"""Which time a detection is windowed at.

Record times ingest does not believe, and a simulated file's payload times out of step with
their neighbours (docs/reliability.md, "Time and clocks").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from streamproc import clocks
from streamproc.clients import kafka
from streamproc.stages.ingest.batches import BatchResult, Incoming, Parsed

#: a payload time this far from both its neighbours' (which agree with each other) is out of step
OUT_OF_STEP_MS = 3_600_000


def in_step(
    parsed: list[Parsed],
    out_of_step: list[Incoming],
    context: tuple[Sequence[int], Sequence[int]] = ((), ()),
) -> list[Parsed]:
    """Payload times, with each lone outlier replaced by the running clock; outliers listed.

    Only ``streamproc simulate`` windows on the payload's ``time`` (files have no record time),
    and any valid RFC 3339 time passes Falcosidekick: epoch 0, or the year 2999. One such time
    would move the simulated clock decades away and change the decisions on the payloads around
    it, while live, windowed on the record time, would not notice. So a time more than
    ``OUT_OF_STEP_MS`` from each of its two neighbours on either side in the file, while two of
    them agree with each other, is taken for what live would have seen: the running clock (the
    time of the last in-step payload before it, else of the first after it). Two or more
    adjacent payloads at a new time are a jump in the input and kept (a file may hold days
    apart). ``context`` holds the times of the payloads just before and after the batch in the
    file, so its first and last payloads have neighbours on both sides too; each batch decides
    from its own lines and that context alone, so worker processes decide as one process does.
    """
    before, after = context
    times = [*before, *(timestamp for _, _, timestamp in parsed), *after]
    count = len(times)
    first, end = len(before), len(before) + len(parsed)
    step = OUT_OF_STEP_MS
    lone = [False] * count
    for i, here in enumerate(times):
        if (i and abs(here - times[i - 1]) <= step) or (
            i + 1 < count and abs(here - times[i + 1]) <= step
        ):
            continue  # the common case: next to a payload of its own time
        around = [times[j] for j in (i - 2, i - 1, i + 1, i + 2) if 0 <= j < count]
        lone[i] = all(abs(here - t) > step for t in around) and any(
            abs(a - b) <= step for k, a in enumerate(around) for b in around[k + 1 :]
        )
    if not any(lone[first:end]) or all(lone):
        return parsed  # all lone: times that agree nowhere leave no clock to trust
    fixed = list(parsed)
    previous: int | None = None
    for i in range(end):
        if not lone[i]:
            previous = times[i]
        elif i >= first:
            # the last in-step time before it, else (none yet) the first after it
            clock = previous
            if clock is None:
                clock = next(t for t, out in zip(times[i:], lone[i:], strict=True) if not out)
            record, detection, _ = parsed[i - first]
            out_of_step.append(record)
            fixed[i - first] = (record, detection, clock)
    return fixed


class PartitionEnds:
    """Where each partition ended, and when: which records were appended after a known moment.

    Kafka tells a consumer the partition's end offset (high watermark) with every fetch; this
    keeps the latest few ends seen before each batch, with when (ms, this host's clock). A
    record at or past an end seen at time T was appended after T, whatever time its producer
    wrote on it: a record that claims to be much older is a producer's clock behind, not a
    backlog. Several ends are kept because the fetch that brings a record usually lands before
    the batch that returns it: the end to go by is the last one seen *below* the record.
    """

    KEEP = 16

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], deque[tuple[int, int]]] = {}

    def note(self, consumer: kafka.Consumer) -> None:
        """Remember each assigned partition's end as last fetched (before reading a batch)."""
        for tp in consumer.assignment():
            end, when = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
            if end is None or when is None:
                continue
            seen = self._seen.setdefault((tp.topic, tp.partition), deque(maxlen=self.KEEP))
            if seen and seen[-1][0] == end:
                seen[-1] = (end, when)  # the same end seen later: a tighter bound
            else:
                if seen and seen[-1][0] > end:
                    seen.clear()  # the log was truncated or recreated: start again
                seen.append((end, when))

    def appended_after(self, topic: str, partition: int, offset: int) -> int | None:
        """When (ms, this host's clock) the record was known not yet appended; None if unknown."""
        for end, when in reversed(self._seen.get((topic, partition), ())):
            if end <= offset:
                return when
        return None


def retime(
    record: Incoming,
    timestamp: int,
    arrival: int,
    tolerance: int,
    ends: PartitionEnds | None,
    result: BatchResult,
) -> int:
    """The time to window a record at whose own time is not near its arrival (the rare case)."""
    fresh_since = None
    if ends is not None:
        since = ends.appended_after(record.topic, record.partition, record.offset)
        if since is not None:  # this host's clock, moved onto the arrival clock
            fresh_since = since + arrival - int(time.time() * 1000)
    windowed, why = clocks.record_time(timestamp, arrival, tolerance, fresh_since)
    if why is not None:
        result.retimed[why] += 1
    return windowed
