"""Ending an observation on one object: read, compute the release patch, write it, retry on 409.

The expirer (on schedule) and ``streamproc release`` (by hand) both end observations; both
race the annotator of another replica extending the same pod. The patch names the
resourceVersion it was computed from, so a concurrent change is refused with 409 rather than
overwritten; this re-reads and recomputes, a bounded number of times, in one place for both.

The expirer knows most pods already: its cluster cache holds each marked pod's marks and
resourceVersion as last watched. From that copy the release is one PATCH; a copy that is behind
(an extension the watch has not brought yet) is refused with 409 like any concurrent change,
and the release reads the pod and decides again. So an expiry costs one request where the cache
is current, and a concurrent extension still wins.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamproc.clients import kube
from streamproc.cluster import marking
from streamproc.model import marks, outcomes, patches

Json = kube.Json
#: re-reads after a 409 before giving up (the caller retries later or reports it)
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Release:
    """What a release found and did."""

    #: ``elsewhere``: the object is another replica's to release now (``owned`` said no);
    #: ``unmarked``: it carries nothing of streamproc's (released already, by someone else)
    outcome: outcomes.Released
    #: the object as last read ({} when it was gone)
    current: Json
    #: the annotation keys it removed
    removed: tuple[str, ...] = ()
    #: for ``extended``: the expiry someone set meanwhile
    until: float | None = None
    #: owned keys a person changed or removed: left as they are
    yielded: tuple[str, ...] = ()
    #: why the marks were refused, when they were (released at once, whatever their expiry)
    refused: marks.Reason | None = None
    #: the marks as they were before the release (None: refused or none): the observation's
    #: start (``observed-since``) and workload, for its evidence
    ended: marks.Marks | None = None


async def release(
    client: kube.Kube,
    ref: kube.ObjectRef,
    *,
    extended_after: float | None = None,
    dry_run: bool = False,
    owned: Callable[[Json], bool] | None = None,
    policy: marks.Policy | None = None,
    known: Json | None = None,
) -> Release:
    """Remove what streamproc added to a pod or a Namespace object.

    ``extended_after``: leave it if its expiry is later than this (the expirer's case, with
    its "now": an annotator extended it meanwhile). ``owned``: leave it unless this says the
    object as read now is the caller's (annotate replicas each expire their own). ``policy``:
    what the loaded topologies write (marks beyond it are refused and released now; an owned
    key is removed only while it holds a value a topology writes). ``known``: the object as a
    cache last saw it, with its resourceVersion: the first attempt is decided and written from
    it without a read. Conflict is raised only after ``ATTEMPTS`` 409s of objects read from the
    API; other API errors are the caller's to handle.
    """
    policy = policy or marks.Policy()
    now = extended_after if extended_after is not None else time.time()
    cached = known if known and (known.get("metadata") or {}).get("resourceVersion") else None
    attempt = 0
    while attempt < ATTEMPTS:
        from_cache = cached is not None
        if cached is not None:
            current, cached = cached, None  # written from once; a 409 reads the pod
        else:
            attempt += 1
            try:
                current = await client.get_observable(ref)
            except kube.NotFound:
                return Release("gone", {})
        decided = _decided(current, extended_after, owned, policy, now)
        if isinstance(decided, Release):
            if from_cache:
                continue  # only a write is decided from a copy: anything else on the pod as it is
            return decided
        patch, refused, ended = decided
        removed = tuple(sorted(k for k, v in patch.annotations.items() if v is None))
        if not dry_run:
            try:
                written = await client.write_patch(ref, patch)
            except kube.Conflict:
                marking.patched("release", "conflict")
                if attempt == ATTEMPTS:
                    raise
                continue
            except kube.NotFound:
                return Release("gone", current)
            # the object as the API server returned it: whole, also when decided from a cache
            current = written or current
        # a refused mark's owned keys are a claim, not a record: nothing to say was yielded
        yielded = patch.yielded if refused is None else ()
        return Release("released", current, removed, yielded=yielded, refused=refused, ended=ended)
    raise AssertionError("unreachable")  # pragma: no cover


def _decided(
    current: Json,
    extended_after: float | None,
    owned: Callable[[Json], bool] | None,
    policy: marks.Policy,
    now: float,
) -> Release | tuple[patches.Patch, marks.Reason | None, marks.Marks | None]:
    """Why the object is left as it is, or the patch that removes the observation."""
    if owned is not None and not owned(current):
        return Release("elsewhere", current)
    found = marking.read(current, now=now, policy=policy)
    if (
        isinstance(found, marks.Marks)
        and extended_after is not None
        and found.until > extended_after
    ):
        return Release("extended", current, until=found.until)
    topology = found.topology if found is not None else ""
    patch = patches.release(current, found, functools.partial(policy.ours, topology))
    if not (patch.annotations or patch.labels):
        # already ended (a resync from a copy a moment old, a person, another tool): nothing
        # to write, and no second "expired" to report
        return Release("unmarked", current)
    if isinstance(found, marks.Refusal):
        return patch, found.reason, None
    return patch, None, found
