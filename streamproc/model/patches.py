"""The metadata patches streamproc writes on a pod: opening, extending and ending an observation.

Pure functions from the pod as read to the smallest merge patch, so the annotator and the expirer
agree on the bookkeeping by construction. Ownership is explicit: a topology annotation is listed
in ``owned-keys`` only if streamproc added it, so the removal takes away exactly what streamproc
put there and never an annotation (``retina.sh: observe`` included) that someone else had set.
A foreign *different* value under a topology key is left alone. A key streamproc added that a
person changed or removed afterwards is theirs (*yielded*): never written back, never removed.
The pod's previous marks come decoded (``marking.read``), never read raw here. With a key
(``seals.Sealer``) an opening or extension also writes the seal of the marks as they will be
once the patch is applied; without one the patch is what it always was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamproc.model import conventions, marks, seals


@dataclass(frozen=True, slots=True)
class Patch:
    """A merge patch of annotations and labels; None values delete."""

    annotations: dict[str, str | None]
    labels: dict[str, str | None] = field(default_factory=dict)
    resource_version: str | None = None
    #: topology keys left alone because someone else set them to another value.
    foreign: tuple[str, ...] = ()
    #: keys streamproc had added that a person changed or removed since: theirs from now on
    yielded: tuple[str, ...] = ()
    #: when the observation this patch opens or extends opened (None: not known, marks written
    #: before ``observed-since`` existed)
    since: float | None = None


def _meta(pod: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str], str | None]:
    meta = pod.get("metadata") or {}
    return (
        dict(meta.get("annotations") or {}),
        dict(meta.get("labels") or {}),
        meta.get("resourceVersion"),
    )


def _observation(previous: marks.Read, topology: str) -> marks.Marks | None:
    """The pod's observation by ``topology``, if its marks are streamproc's and it is labelled."""
    if isinstance(previous, marks.Marks) and previous.labelled and previous.topology == topology:
        return previous
    return None


def yielded(
    pod: Mapping[str, Any], previous: marks.Read, ours: Callable[[str, str | None], bool]
) -> tuple[str, ...]:
    """Owned keys a person changed or removed: no longer streamproc's (``ours`` says the value)."""
    if previous is None:
        return ()
    current = _meta(pod)[0]
    return tuple(sorted(k for k in previous.owned if not ours(k, current.get(k))))


def lasts(
    pod: Mapping[str, Any],
    annotations: Mapping[str, str],
    *,
    beyond: float,
    previous: marks.Read,
    topology: str,
) -> bool:
    """Whether the pod's observation is intact and lasts until ``beyond`` or later.

    Intact: streamproc's marks of this topology, labelled, every owned key still holds the
    topology's value (else the yield is to be written), and nothing left to add.
    """
    found = _observation(previous, topology)
    if found is None or found.until < beyond:
        return False
    current = _meta(pod)[0]
    return all(current.get(k) == v for k, v in annotations.items() if k in found.owned)


def observe(
    pod: Mapping[str, Any],
    *,
    annotations: Mapping[str, str],
    until: float,
    topology: str,
    rule: str,
    action_id: str,
    previous: marks.Read,
    level: str = "",
    now: float | None = None,
    metric_filters: Sequence[str] = (),
    sealer: seals.Sealer | None = None,
) -> Patch | None:
    """Open or extend an observation; None when the pod already carries this or a later one.

    ``previous`` is the pod's marks as read (``marking.read``): refused ones extend nothing.
    A key streamproc added that a person changed or removed since is yielded: left as it is,
    dropped from ``owned-keys``, and not added again while this observation lasts.
    ``level`` ("3/4") is written only for topologies with an escalation ladder. ``now``: the
    writer's clock, written as ``observed-since`` when this opens the observation (an extension
    keeps the start it has, and leaves none where the marks predate it). ``metric_filters``: the
    Hubble metrics of an observation through ACNS's filters, written as ``metric-filters``.
    ``sealer``: seals the marks the pod will carry (``streamproc.io/seal``).
    """
    current, _, version = _meta(pod)
    found = _observation(previous, topology)
    if (found is not None and found.action_id == action_id) or lasts(
        pod, annotations, beyond=until, previous=previous, topology=topology
    ):
        return None
    owned = set(previous.owned) if previous is not None else set()
    changes: dict[str, str | None] = {}
    foreign: list[str] = []
    gone: list[str] = []
    for key, value in annotations.items():
        if key in owned:
            if current.get(key) != value:  # a person changed or removed it: theirs now
                owned.discard(key)
                gone.append(key)
        elif key not in current:
            if found is None:  # absent on an observation of this topology: yielded before
                changes[key] = value
                owned.add(key)
        elif current[key] != value:
            foreign.append(key)
    until = max(until, found.until if found is not None else 0.0)
    changes.update(
        {
            conventions.EXPIRES_AT: conventions.format_time(until),
            conventions.TOPOLOGY: topology,
            conventions.RULE: rule[:253],
            conventions.ACTION_ID: action_id[:253],
            conventions.OWNED_KEYS: ",".join(sorted(owned)),
        }
    )
    changes.update(_optional_marks(level, metric_filters))
    # whole seconds, as written, so the gauge and the evidence range read what the pod says
    since = found.since if found is not None else (float(int(now)) if now is not None else None)
    if since is not None:
        changes[conventions.OBSERVED_SINCE] = conventions.format_time(since)
    changes.update(_seal(pod, current, changes, sealer))
    return Patch(
        annotations=changes,
        labels={conventions.OBSERVED_LABEL: "true"},
        resource_version=version,
        foreign=tuple(foreign),
        yielded=tuple(sorted(gone)),
        since=since,
    )


def _seal(
    pod: Mapping[str, Any],
    current: Mapping[str, str],
    changes: Mapping[str, str | None],
    sealer: seals.Sealer | None,
) -> dict[str, str | None]:
    """The seal of the marks as merged, unchanged ones included; without a key, none left over.

    A seal written by a replica with the key no longer verifies once these marks change, so a
    writer without one removes it (``unsealed`` where a key is known, not a false ``bad-seal``).
    """
    if sealer is not None:
        subject = seals.identity(pod.get("metadata") or {})
        return {conventions.SEAL: sealer.seal(subject, {**current, **changes})}
    return {conventions.SEAL: None} if conventions.SEAL in current else {}


def _optional_marks(level: str, metric_filters: Sequence[str]) -> dict[str, str | None]:
    """The marks only some observations carry: a ladder's level, the filters' metrics."""
    found: dict[str, str | None] = {}
    if level:
        found[conventions.LEVEL] = level
    if metric_filters:
        found[conventions.METRIC_FILTERS] = ",".join(sorted(set(metric_filters)))
    return found


def release(
    pod: Mapping[str, Any],
    previous: marks.Read = None,
    ours: Callable[[str, str | None], bool] | None = None,
) -> Patch:
    """End the observation: remove what streamproc added and its bookkeeping, nothing else.

    An owned key is removed only while ``ours`` says it holds the value streamproc wrote; a
    changed one is a person's now and stays (``yielded``). Without ``previous`` (a simulation's
    own clean slate) every listed owned key goes.
    """
    current, labels, version = _meta(pod)
    if previous is None:
        owned = {k for k in str(current.get(conventions.OWNED_KEYS, "")).split(",") if k}
    else:
        owned = set(previous.owned)
    gone = set(yielded(pod, previous, ours)) if ours is not None else set()
    removed: dict[str, str | None] = dict.fromkeys(k for k in owned - gone if k in current)
    removed.update(dict.fromkeys(k for k in conventions.BOOKKEEPING_KEYS if k in current))
    label_changes: dict[str, str | None] = (
        {conventions.OBSERVED_LABEL: None} if conventions.OBSERVED_LABEL in labels else {}
    )
    return Patch(
        annotations=removed,
        labels=label_changes,
        resource_version=version,
        yielded=tuple(sorted(gone)),
    )
