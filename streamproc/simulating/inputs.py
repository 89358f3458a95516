"""What a simulation reads: JSON-lines files of Falcosidekick payloads, plain or gzip.

Each line becomes a record the ingest stage's own code takes, with the file as its topic and the
line number as its offset (a dead letter names ``file:line``). Files have no Kafka record time,
so their windows come from each payload's ``time`` (``Ingestor(payload_time=True)``).
"""

from __future__ import annotations

import gzip
import zlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

#: lines per batch handed to the ingest code (a live ``getmany`` returns batches of this order)
BATCH_LINES = 16_384
_BLOCK = 1 << 20


class InputError(OSError):
    """A file that cannot be read to the end (missing, or a truncated or corrupt gzip)."""


def lines(path: Path) -> Iterator[bytes]:
    """The file's lines, decompressed when it is gzip (by its magic bytes, not its name)."""
    try:
        with path.open("rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as stream:
            rest = b""
            while block := stream.read(_BLOCK):
                parts = (rest + block).split(b"\n")
                rest = parts.pop()
                yield from parts
            if rest:
                yield rest
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: {exc or type(exc).__name__}") from None


class Line(NamedTuple):
    """One line as a record for ``Ingestor.process``: the file's index and the line's number."""

    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp: int = 0
    key: bytes | None = None


#: lines of context on each side of a batch (``timing.in_step`` looks two lines each way)
CONTEXT_LINES = 2


class Batch(NamedTuple):
    """A batch of lines, and the lines just before and after it in the input (its context)."""

    lines: list[Line]
    before: list[bytes]
    after: list[bytes]


def _numbered(paths: list[Path]) -> Iterator[tuple[int, int, bytes]]:
    """(file index, line number, line) of every non-blank line."""
    for index, path in enumerate(paths):
        for number, line in enumerate(lines(path), start=1):
            if len(line) < 3 and not line.strip():
                continue
            yield index, number, line


def batches(
    paths: list[Path], topic: str, size: int = BATCH_LINES, *, share: tuple[int, int] = (0, 1)
) -> Iterator[Batch]:
    """Records of every non-blank line, ``size`` at a time; partition is the file's index.

    ``share=(k, n)`` yields only batches k, k+n, k+2n... (a worker process's share): the
    others are counted through, not built, so every worker cuts the input at the same lines.
    Each batch comes with ``CONTEXT_LINES`` lines of the input on either side, the same for
    every share.
    """
    mine, every = share
    recent: deque[bytes] = deque(maxlen=CONTEXT_LINES)
    before: list[bytes] = []
    batch: list[Line] = []
    waiting: Batch | None = None  # full, waiting for the lines after it
    ordinal = counted = 0
    for index, number, line in _numbered(paths):
        if waiting is not None:
            waiting.after.append(line)
            if len(waiting.after) >= CONTEXT_LINES:
                yield waiting
                waiting = None
        if counted == 0:
            before = list(recent)
        if ordinal % every == mine:
            batch.append(Line(topic, index, number, line))
        recent.append(line)
        counted += 1
        if counted >= size:
            if waiting is not None:  # batches shorter than their context
                yield waiting
            waiting = Batch(batch, before, []) if batch else None
            batch = []
            ordinal += 1
            counted = 0
    if waiting is not None:
        yield waiting
    if batch:
        yield Batch(batch, before, [])
