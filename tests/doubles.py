"""Test doubles and readers shared by streamproc's tests.

Nothing in the product imports them, so they live here and not in the package.
"""

from __future__ import annotations

import time
from typing import Any

from streamproc.clients import metrics
from streamproc.model import conventions


class MemoryAuditor:
    """An auditor that keeps records in a list, to assert on what was audited."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, *, result: str, **fields: Any) -> None:
        """Append the record, stamped as the Kafka auditor stamps it."""
        now = conventions.format_time(time.time())
        self.records.append({"time": now, "result": result, **fields})

    async def flush(self) -> None:
        """Nothing to wait for."""


def metric(name: str, **labels: str) -> float:
    """The current value of a metric's samples with these labels (0 when there are none)."""
    return metrics.total(name, **labels)
