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


def missing_of(exc: BaseException) -> outcomes.EvidenceMissing:
    """The ``result`` code a failure counts as (anything unnamed: ``unreachable``)."""
    if isinstance(exc, evidence.BadAnswer):
        return "bad-answer"
    return next((code for kind, code in _MISSING if isinstance(exc, kind)), "unreachable")


def _detail(exc: BaseException) -> str:
    """What a person reads: the client's own words, or the unnamed error's type and words."""
    if isinstance(exc, prometheus.PrometheusError | evidence.BadAnswer):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass(slots=True)
class _Answers:
    """One family's answers, and the parts whose queries failed (with the first failure)."""

    samples: dict[str, list[evidence.Sample]]
    failed: dict[evidence.Part, BaseException]

    @property
    def any(self) -> bool:
        return any(self.samples.values())

    def missing_parts(self) -> dict[evidence.Part, outcomes.EvidenceMissing]:
        return {part: missing_of(exc) for part, exc in self.failed.items()}


async def _answers(
    client: prometheus.Prometheus, target: evidence.Target, source: evidence.Source
) -> _Answers:
    """Every query at once; one that fails loses its part, not the others' answers."""
    found = evidence.queries(target, source)
    answers = await asyncio.gather(
        *(client.query(q.expr, target.end) for q in found), return_exceptions=True
    )
    got = _Answers({}, {})
    for query, answer in zip(found, answers, strict=True):
        part = evidence.PART_OF[query.key]
        if isinstance(answer, asyncio.CancelledError):
            raise answer
        if isinstance(answer, BaseException):
            got.failed.setdefault(part, answer)
            continue
        try:
            got.samples[query.key] = evidence.vector(answer)
        except evidence.BadAnswer as exc:
            got.failed.setdefault(part, exc)
    # a part with one query failed is not half shown: its other query's answer goes too
    for key in [k for k in got.samples if evidence.PART_OF[k] in got.failed]:
        del got.samples[key]
    return got


async def gather(
    client: prometheus.Prometheus, target: evidence.Target, *, total_s: float
) -> evidence.Evidence:
    """The evidence of ``target``, or why it is missing, within ``total_s``; never raises.

    Parts that answered are kept when others fail (``missing_parts`` names those); only when
    nothing answered is the evidence missing as a whole, for the first failure's reason.
    """
    if target.end <= target.start:
        return evidence.missing(target, "no-range", "the marks said no start (observed-since)")
    try:
        async with asyncio.timeout(total_s):
            retina = await _answers(client, target, "retina")
            if retina.any:
                return evidence.assemble(target, "retina", retina.samples, retina.missing_parts())
            hubble = await _answers(client, target, "hubble")
            if hubble.any:
                return evidence.assemble(target, "hubble", hubble.samples, hubble.missing_parts())
            failed = next(iter(retina.failed.values()), None) or next(
                iter(hubble.failed.values()), None
            )
            if failed is not None:
                return evidence.missing(target, missing_of(failed), _detail(failed))
            return evidence.missing(
                target, "no-series", "no networkobservability_adv_* or hubble_* series of the pods"
            )
    except TimeoutError:
        return evidence.missing(target, "timeout", f"not all answers within {total_s:g}s")
    except Exception as exc:  # a client bug or an odd setting (a token with a
        # newline makes aiohttp raise ValueError) is named in the record, never raised
        return evidence.missing(target, missing_of(exc), _detail(exc))


@dataclass(frozen=True, slots=True)
class Found:
    """A workload's last observation as Prometheus remembers it (its pods and range)."""

    pods: tuple[str, ...]
    start: float
    end: float
    #: each pod's own start (same order as ``pods``)
    starts: tuple[float, ...] = ()

    def target(self, namespace: str, end: float | None = None) -> evidence.Target:
        """The range to read: each pod from its own start to ``end`` (default: the last seen)."""
        return evidence.Target(
            namespace, self.pods, self.start, self.end if end is None else end, self.starts
        )


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
    return Found(current, min(per_pod[p] for p in current), end, tuple(per_pod[p] for p in current))
