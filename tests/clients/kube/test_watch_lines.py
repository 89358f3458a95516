"""The watch stream's line splitter: the same lines however the network cuts the bytes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from streamproc.clients import kube


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(edges):
        if end > start:
            yield data[start:end]


async def _collect(data: bytes, cuts: list[int]) -> list[bytes]:
    return [line async for line in kube.lines_of(_chunks(data, cuts))]


@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    final_newline=st.booleans(),
)
def test_lines_do_not_depend_on_chunk_boundaries(
    lines: list[bytes], cuts: list[int], final_newline: bool
) -> None:
    """Any chunking yields the non-blank lines, a last line without newline included."""
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    expected = [line for line in data.split(b"\n") if line.strip()]
    assert asyncio.run(_collect(data, cuts)) == expected


def test_a_long_event_arriving_in_small_chunks_is_one_line() -> None:
    """A 4 MB event cut into 1 KiB chunks, as a slow link delivers it, comes out whole."""
    event = b'{"type":"MODIFIED","object":{"x":"' + b"a" * (4 << 20) + b'"}}'
    data = event + b"\n" + b'{"type":"BOOKMARK"}\n'
    cuts = list(range(1024, len(data), 1024))
    assert asyncio.run(_collect(data, cuts)) == [event, b'{"type":"BOOKMARK"}']
