"""The tally gate: which tallies leave now and which wait a moment.

And the offsets that may be committed once none of their counts is held.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence

from streamproc.clients import kafka
from streamproc.model.tallies import UUID_SAMPLE, Tally
from streamproc.model.topologies import Topology
from streamproc.stages.ingest.batches import Slot


class TallyGate:
    """Decides which tallies must be published now and which may wait a moment.

    Latency matters only until a window qualifies. While this process's own count for a window
    is still below the topology's threshold, its tallies go out at once: the next one may be the
    one that opens the observation. Once the local count alone reaches the threshold, the window
    has qualified whatever other ingest processes saw, and further tallies only keep the counts
    (deduplication) exact: they are merged and released ``hold_s`` after the first of them was
    held. Under a flood this turns thousands of tallies per second into one per workload per
    interval, which is what keeps the Faust stage far below its per-event limit.

    Each held count leaves on its own schedule, not all at once: 500 workloads' counts released
    together are 500 tallies the Faust stage must work through before it sees a new workload's
    first tally queued behind them (docs/measurements.md). Offsets of a batch whose counts are
    held are committed only once they left (``oldest_held_batch``), so counts stay
    at-least-once.

    A flood over many workloads (50,000 made-up ones, say) would still mean 50,000 held tallies
    every ``hold_s``, more than the Faust stage handles: the interval stretches so that held
    tallies leave at no more than ``HELD_PER_S`` a second, but never beyond the shortest window
    (the windows stage keeps a window for three of its lengths, so a released count always
    finds its window, already marked as acted on).
    """

    #: held tallies per second the Faust stage can absorb beside urgent ones, kept well below
    #: its measured rate (docs/measurements.md)
    HELD_PER_S = 1000

    def __init__(self, topologies: Sequence[Topology], hold_s: float) -> None:
        self._thresholds = {t.name: t.spec.window.threshold for t in topologies}
        self._sizes_ms = {t.name: int(t.spec.window.size * 1000) for t in topologies}
        self._hold_s = hold_s
        self._counts: dict[Slot, int] = {}
        #: held tallies in the order they were first held, with when and in which batch (an
        #: OrderedDict: the oldest is looked at and taken off the front in O(1))
        self._held: OrderedDict[Slot, tuple[Tally, float, int]] = OrderedDict()
        self._leaving: OrderedDict[Slot, tuple[Tally, float, int]] = OrderedDict()
        self._batches = 0
        self._next_prune_ms = 0

    @property
    def holding(self) -> bool:
        """Whether some counted detections are not yet published."""
        return bool(self._held)

    @property
    def batches(self) -> int:
        """How many batches were admitted so far (the number of the latest)."""
        return self._batches

    @property
    def oldest_held_batch(self) -> int | None:
        """The earliest batch with a count still held; offsets before it may be committed."""
        for entries in (self._leaving, self._held):
            for _, _, batch in entries.values():
                return batch
        return None

    def admit(self, tallies: Mapping[Slot, Tally], now: float | None = None) -> list[Tally]:
        """Record a batch's tallies; return those to publish now."""
        self._batches += 1
        now = time.monotonic() if now is None else now
        urgent = []
        for slot, tally in tallies.items():
            before = self._counts.get(slot, 0)
            self._counts[slot] = before + tally.count
            if before < self._thresholds[slot[0]]:
                urgent.append(tally)  # counts only grow, so nothing is held for this slot yet
            elif slot in self._held:
                merge(self._held[slot][0], tally)
            else:
                self._held[slot] = (tally, now, self._batches)
        return urgent

    def _interval(self) -> float:
        shortest_window_s = min(self._sizes_ms.values(), default=1000) / 1000
        return max(self._hold_s, min(len(self._held) / self.HELD_PER_S, shortest_window_s))

    def due(self, now: float) -> bool:
        """Whether some held tallies should leave now (the interval grows with their number)."""
        for _, since, _ in self._held.values():
            return now >= since + self._interval()
        return False

    def release(self, now: float | None = None) -> list[Tally]:
        """The held tallies whose time has come at ``now``; all of them without ``now``.

        They count as held until ``settle`` says whether publishing them succeeded.
        """
        cutoff = float("inf") if now is None else now - self._interval()
        while self._held:
            slot, entry = next(iter(self._held.items()))
            if entry[1] > cutoff:
                break
            self._leaving[slot] = self._held.pop(slot)
        return [tally for tally, _, _ in self._leaving.values()]

    def settle(self, *, delivered: bool) -> None:
        """After a release: forget what left, or hold it again, oldest first, if it did not."""
        if not delivered:
            self._leaving.update(self._held)
            self._held = self._leaving
        self._leaving = OrderedDict()

    def forget_ended(self, now_ms: int) -> None:
        """Drop counts of windows that ended a window ago (memory stays flat over time)."""
        if now_ms < self._next_prune_ms:
            return
        self._next_prune_ms = now_ms + min(self._sizes_ms.values(), default=1000)
        self._counts = {
            slot: n
            for slot, n in self._counts.items()
            if slot[2] + 2 * self._sizes_ms[slot[0]] > now_ms
        }


class CommitPoint:
    """Offsets of handled batches, handed out for commit once none of their counts is held."""

    def __init__(self) -> None:
        self._batches: deque[tuple[int, dict[kafka.Partition, int]]] = deque()

    def handled(self, batch: int, offsets: dict[kafka.Partition, int]) -> None:
        """A batch's tallies were published or held; its next offsets."""
        self._batches.append((batch, offsets))

    def committable(self, oldest_held: int | None) -> dict[kafka.Partition, int]:
        """Offsets to commit now: up to the batch before the oldest one with a held count."""
        offsets: dict[kafka.Partition, int] = {}
        while self._batches and (oldest_held is None or self._batches[0][0] < oldest_held):
            offsets.update(self._batches.popleft()[1])
        return offsets


def merge(into: Tally, other: Tally) -> Tally:
    """Fold ``other`` (same topology, workload and window) into ``into``."""
    into.count += other.count
    into.first_append_ms = min(into.first_append_ms, other.first_append_ms)
    into.priority = max(into.priority, other.priority)
    room = UUID_SAMPLE - len(into.uuids)
    if room > 0:
        into.uuids.extend(other.uuids[:room])
    return into
