"""The metadata patches streamproc writes on a pod: opening, extending and ending an observation.

Pure functions from the pod as read to the smallest merge patch, so the annotator and the expirer
agree on the bookkeeping by construction. Ownership is explicit: a topology annotation is listed
in ``owned-keys`` only if streamproc added it, so the removal takes away exactly what streamproc
put there and never an annotation (``retina.sh: observe`` included) that someone else had set.
A foreign *different* value under a topology key is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamproc.model import conventions


@dataclass(frozen=True, slots=True)
class Patch:
    """A merge patch of annotations and labels; None values delete."""

    annotations: dict[str, str | None]
    labels: dict[str, str | None] = field(default_factory=dict)
    resource_version: str | None = None
    #: topology keys left alone because someone else set them to another value.
    foreign: tuple[str, ...] = ()


def _meta(pod: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str], str | None]:
    meta = pod.get("metadata") or {}
    return (
        dict(meta.get("annotations") or {}),
        dict(meta.get("labels") or {}),
        meta.get("resourceVersion"),
    )


def owned_keys(annotations: Mapping[str, str]) -> set[str]:
    """Topology keys streamproc added to this pod."""
    return {k for k in annotations.get(conventions.OWNED_KEYS, "").split(",") if k}


def expires_at(pod: Mapping[str, Any]) -> float | None:
    """When the pod's observation ends; None if it has none (or it was hand-edited away)."""
    value = _meta(pod)[0].get(conventions.EXPIRES_AT)
    return conventions.parse_time(value) if value else None


def lasts(pod: Mapping[str, Any], annotations: Mapping[str, str], *, beyond: float) -> bool:
    """Whether the pod's observation is intact and lasts until ``beyond`` or later.

    Intact: the observed label and the topology's annotations are there as written.
    """
    current, labels, _ = _meta(pod)
    previous = expires_at(pod)
    return (
        previous is not None
        and previous >= beyond
        and labels.get(conventions.OBSERVED_LABEL) == "true"
        and all(current.get(k) == v for k, v in annotations.items())
    )


def observe(
    pod: Mapping[str, Any],
    *,
    annotations: Mapping[str, str],
    until: float,
    topology: str,
    rule: str,
    action_id: str,
    level: str = "",
) -> Patch | None:
    """Open or extend an observation; None when the pod already carries this or a later one.

    ``level`` ("3/4") is written only for topologies with an escalation ladder.
    """
    current, _, version = _meta(pod)
    previous = expires_at(pod)
    if current.get(conventions.ACTION_ID) == action_id or lasts(pod, annotations, beyond=until):
        return None
    owned = owned_keys(current)
    changes: dict[str, str | None] = {}
    foreign: list[str] = []
    for key, value in annotations.items():
        if key not in current:
            changes[key] = value
            owned.add(key)
        elif current[key] != value and key not in owned:
            foreign.append(key)
        elif current[key] != value:
            changes[key] = value
    until = max(until, previous or 0.0)
    changes.update(
        {
            conventions.EXPIRES_AT: conventions.format_time(until),
            conventions.TOPOLOGY: topology,
            conventions.RULE: rule[:253],
            conventions.ACTION_ID: action_id[:253],
            conventions.OWNED_KEYS: ",".join(sorted(owned)),
        }
    )
    if level:
        changes[conventions.LEVEL] = level
    return Patch(
        annotations=changes,
        labels={conventions.OBSERVED_LABEL: "true"},
        resource_version=version,
        foreign=tuple(foreign),
    )


def release(pod: Mapping[str, Any]) -> Patch:
    """End the observation: remove what streamproc added and its bookkeeping, nothing else."""
    current, labels, version = _meta(pod)
    removed: dict[str, str | None] = dict.fromkeys(owned_keys(current))
    removed.update(dict.fromkeys(k for k in conventions.BOOKKEEPING_KEYS if k in current))
    label_changes: dict[str, str | None] = (
        {conventions.OBSERVED_LABEL: None} if conventions.OBSERVED_LABEL in labels else {}
    )
    return Patch(annotations=removed, labels=label_changes, resource_version=version)
