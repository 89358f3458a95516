"""The lab's replay: a timeline of realistic detections with bursts, quiet spells and bad lines.

Everything is derived from the sample cluster and Falco's default rules (``samples``): incidents
are bursts of Warning/Critical detections in one workload; background noise is Notice-level
shell activity (below the default topology's priority); a kube-system pod fires too (excluded by
default); host events have no Kubernetes context; and a few malformed lines must end in the
dead-letter topic.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import orjson

from streamproc.lab import samples
from streamproc.lab.cluster import SampleWorkload

#: Falco starts ``output`` with the event's wall-clock time, ``HH:MM:SS.nnnnnnnnn``.
_CLOCK = re.compile(r"\d{2}:\d{2}:\d{2}\.\d{9}")


@dataclass(frozen=True, order=True)
class Scheduled:
    """One record to publish ``at`` seconds after the replay starts."""

    at: float
    value: bytes


def timeline(workloads: list[SampleWorkload], span_s: float, seed: int = 11) -> list[Scheduled]:
    """Records spread over ``span_s`` seconds; event times are filled in when they are sent."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible replay, not a secret
    suspicious = [r for r in samples.RULES if r.priority in ("Warning", "Critical")]
    noise = [r for r in samples.RULES if r.priority == "Notice"]
    user = [w for w in workloads if w.namespace != "kube-system"]
    out: list[Scheduled] = []

    def emit(at: float, doc: dict[str, object]) -> None:
        out.append(Scheduled(min(at, span_s), orjson.dumps(doc)))

    # Incidents: each a burst in one workload, spread over the first 70% of the span.
    incidents = rng.sample(user, k=min(len(user), 6))
    for i, workload in enumerate(incidents):
        start = span_s * 0.7 * i / max(1, len(incidents))
        rule = rng.choice(suspicious)
        for _ in range(rng.randint(20, 120)):
            pod = rng.choice(workload.pods)
            emit(
                start + rng.random() * 1.0,
                samples.detection(workload, pod, rule, 0, rng, owner_fields=rng.random() < 0.3),
            )
    # Background noise below the default priority, all along.
    for _ in range(200):
        workload = rng.choice(user)
        emit(
            rng.random() * span_s,
            samples.detection(workload, rng.choice(workload.pods), rng.choice(noise), 0, rng),
        )
    # Excluded namespace and host events.
    system = [w for w in workloads if w.namespace == "kube-system"]
    for workload in system:
        for _ in range(10):
            emit(
                rng.random() * span_s,
                samples.detection(workload, workload.pods[0], suspicious[0], 0, rng),
            )
    for _ in range(15):
        emit(rng.random() * span_s, samples.host_event(0, rng))
    out.sort()
    bad = [
        Scheduled(span_s * (i + 1) / (len(samples.MALFORMED) + 1), raw)
        for i, (raw, _) in enumerate(samples.MALFORMED)
    ]
    return sorted(out + bad)


def stamp(value: bytes, now: float) -> bytes:
    """Set a detection's ``time`` to now (malformed lines pass through untouched)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if isinstance(doc, dict) and "time" in doc:
        doc["time"] = samples.rfc3339_nanos(now)
        output = doc.get("output")
        if isinstance(output, str) and _CLOCK.match(output):
            doc["output"] = samples.rfc3339_nanos(now)[11:29] + output[18:]
        fields = doc.get("output_fields")
        if isinstance(fields, dict):
            fields["evt.time"] = int(now * 1e9)
        return orjson.dumps(doc)
    return value
