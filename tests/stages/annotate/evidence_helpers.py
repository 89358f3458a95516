"""The expirer the evidence tests share: on the test clock, reading evidence, auditing to memory.

One home for that setup, so each test reads as its scenario: what Prometheus answers, what the
pods carry, what the records say.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypedDict

from streamproc.clients import kube, prometheus
from streamproc.stages.annotate.expiring import Expirer
from tests import doubles as testing


class _Bounds(TypedDict, total=False):
    """The Expirer's settings a test gives; the ones it leaves out keep the Expirer's defaults."""

    evidence_total_s: float


@contextlib.asynccontextmanager
async def reading_evidence(
    client: kube.Kube, made: Expirer, url: str, *, timeout_s: float, total_s: float | None = None
) -> AsyncIterator[tuple[Expirer, testing.MemoryAuditor]]:
    """An expirer on the clock and policy of ``made`` (from ``make``) and its memory auditor.

    It asks the Prometheus at ``url`` (each query bounded by ``timeout_s``) as soon as an
    observation ends, all of it within ``total_s`` (the Expirer's default without one). The
    Prometheus client is closed when the block ends; running the expirer is the test's
    (``running``).
    """
    bounds: _Bounds = {} if total_s is None else {"evidence_total_s": total_s}
    evidence_from = prometheus.Prometheus(url, timeout_s=timeout_s)
    auditor = testing.MemoryAuditor()
    expirer = Expirer(
        client,
        resync_s=60,
        clock=made.clock,
        policy=made.policy,
        auditor=auditor,
        evidence_from=evidence_from,
        evidence_delay_s=0,
        **bounds,
    )
    try:
        yield expirer, auditor
    finally:
        await evidence_from.close()
