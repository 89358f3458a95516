"""Durations as people write them in topologies: ``500ms``, ``60s``, ``15m``, ``1h``, ``1h30m``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError names what was expected."""
    value = text.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match[1]) * _UNIT[match[2]]
        pos = match.end()
    if not value or pos != len(value):
        raise ValueError(f"{text!r} is not a duration like 500ms, 60s, 15m, 1h or 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """Short human form used in logs and the lab view."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}".removesuffix(".0") + "h"
