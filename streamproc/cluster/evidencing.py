"""Reading an observation's network evidence from Prometheus: bounded, and never raising.

The expirer's background work (``stages.annotate.evidencing``) and ``streamproc evidence`` both
ask here: Retina's families first, Hubble's when Retina's have no series of the pods
(``model.evidence`` says which and why). Each query is bounded by the client's timeout and the
whole by ``total_s``; every failure becomes an :class:`~streamproc.model.evidence.Evidence` that
says why it is missing, so a caller writes its audit record either way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from streamproc.clients import prometheus
from streamproc.model import evidence, outcomes

_MISSING: tuple[tuple[type[prometheus.PrometheusError], outcomes.EvidenceMissing], ...] = (
    (prometheus.Timeout, "timeout"),
    (prometheus.HttpError, "http-error"),
    (prometheus.BadAnswer, "bad-answer"),
    (prometheus.Unreachable, "unreachable"),
)


def missing_of(exc: prometheus.PrometheusError) -> outcomes.EvidenceMissing:
    """The ``result`` code a client failure counts as."""
    return next((code for kind, code in _MISSING if isinstance(exc, kind)), "unreachable")


async def _answers(
    client: prometheus.Prometheus, target: evidence.Target, source: evidence.Source
) -> dict[str, list[evidence.Sample]]:
    found = evidence.queries(target, source)
    answers = await asyncio.gather(*(client.query(q.expr, target.end) for q in found))
    return {q.key: evidence.vector(a) for q, a in zip(found, answers, strict=True)}


async def gather(
    client: prometheus.Prometheus, target: evidence.Target, *, total_s: float
) -> evidence.Evidence:
    """The evidence of ``target``, or why it is missing, within ``total_s``."""
    if target.end <= target.start:
        return evidence.missing(target, "no-range", "the marks said no start (observed-since)")
    try:
        async with asyncio.timeout(total_s):
            retina = await _answers(client, target, "retina")
            if any(retina.values()):
                return evidence.assemble(target, "retina", retina)
            hubble = await _answers(client, target, "hubble")
            if any(hubble.values()):
                return evidence.assemble(target, "hubble", hubble)
            return evidence.missing(
                target, "no-series", "no networkobservability_adv_* or hubble_* series of the pods"
            )
    except TimeoutError:
        return evidence.missing(target, "timeout", f"not all answers within {total_s:g}s")
    except prometheus.PrometheusError as exc:
        return evidence.missing(target, missing_of(exc), str(exc))
    except evidence.BadAnswer as exc:
        return evidence.missing(target, "bad-answer", str(exc))


@dataclass(frozen=True, slots=True)
class Found:
    """A workload's last observation as Prometheus remembers it (its pods and range)."""

    pods: tuple[str, ...]
    start: float
    end: float


async def last_observation(
    client: prometheus.Prometheus,
    workload: tuple[str, str, str],
    *,
    lookback_s: int,
    now: float | None = None,
) -> Found | None:
    """The workload's last observation within ``lookback_s``, from streamproc's own gauge.

    ``streamproc_observed_pod_since_seconds`` holds each observed pod's start while it is
    observed: the latest start and the last sample's time bound the last observation. None when
    the gauge has no series of the workload in the lookback. Raises ``PrometheusError`` and
    ``evidence.BadAnswer``.
    """
    at = time.time() if now is None else now
    starts_expr, ends_expr = evidence.last_observation(*workload, lookback_s)
    starts = evidence.vector(await client.query(starts_expr, at))
    ends = evidence.vector(await client.query(ends_expr, at))
    per_pod = {labels.get("pod", ""): value for labels, value in starts}
    last = {labels.get("pod", ""): value for labels, value in ends}
    pods = sorted(p for p in per_pod if p and p in last)
    if not pods:
        return None
    end = max(last[p] for p in pods)
    start = max(per_pod[p] for p in pods)
    # the pods of that last observation: those observed since its start (earlier ones ended)
    current = tuple(p for p in pods if last[p] >= start)
    return Found(current, min(per_pod[p] for p in current), end)
