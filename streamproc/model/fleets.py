"""Whose cluster a detection is: routing is declared by the deployment, never guessed from payloads.

Falcosidekick users name their cluster with ``customfields`` (``CUSTOMFIELDS=cluster:prod-eu``)
so that their alerts say where they came from; it lands in every payload's ``output_fields``
(falcosecurity/falcosidekick 2.34.1, ``config.go`` and ``handlers.go``). That field alone must
neither send detections to a topic nobody reads nor let whoever writes to the input topic
create topics. So:

- A deployment that names no cluster (no ``--cluster``, ``--clusters``, ``--cluster-contexts``)
  is one cluster. Every detection is its own, whatever its cluster field says, and every action
  goes to ``streamproc.actions``.
- A deployment that names clusters is a fleet of exactly those. A detection naming one of them
  is that cluster's; a detection naming none is ``--cluster``'s; any other is refused
  (``unknown-cluster``, or ``invalid-cluster`` for a value that cannot be a cluster's name) and
  creates nothing. Actions go only to the declared clusters' topics.

The same rule decides for the windows stage, which trusts no tally's cluster either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamproc import reasons
from streamproc.model import conventions
from streamproc.settings import Settings

#: What placing a detection did: kept as its own (``own``: no cluster field, or the field
#: naming the cluster it belongs to anyway), ``ignored`` its field (one cluster: the field says
#: something else, routing does not use it), or refused it (a dead-letter reason).
Placement = Literal["own", "member", "ignored", "unknown-cluster", "invalid-cluster"]
#: the placements that refuse a detection, with the dead letter's reason
REFUSED: dict[Placement, reasons.DeadLetter] = {
    "unknown-cluster": "unknown-cluster",
    "invalid-cluster": "invalid-cluster",
}


@dataclass(frozen=True, slots=True)
class Fleet:
    """The clusters a deployment routes for; no members means one cluster."""

    #: this deployment's own cluster (``--cluster``; "" when it names none)
    local: str = ""
    #: every cluster named by ``--cluster``, ``--clusters`` and ``--cluster-contexts``
    members: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings) -> Fleet:
        """The fleet a deployment's settings declare."""
        return cls(settings.cluster, settings.fleet)

    @property
    def declared(self) -> bool:
        """Whether this deployment is a fleet (it named clusters) rather than one cluster."""
        return bool(self.members)

    @property
    def clusters(self) -> tuple[str, ...]:
        """The clusters actions may go to: the members, or "" (the one cluster)."""
        return tuple(sorted(self.members)) if self.declared else ("",)

    def place(self, named: str) -> tuple[str, Placement]:
        """The cluster of a detection whose cluster field says ``named`` ("": no field), and why.

        The cluster is "" when the detection is refused.
        """
        if not self.declared:
            return "", "ignored" if named else "own"
        if not named:
            return self.local, "own" if self.local else "unknown-cluster"
        if named in self.members:
            return named, "own" if named == self.local else "member"
        if conventions.is_dns1123_label(named):
            return "", "unknown-cluster"
        return "", "invalid-cluster"

    def serves(self, cluster: str) -> bool:
        """Whether a record for ``cluster`` (from our own topics) has a place in this fleet."""
        return cluster in self.members if self.declared else not cluster

    def refusal(self, named: str) -> str:
        """Why ``named`` is refused, and the fix: the dead letter's detail and the log line."""
        if not self.declared:
            return (
                f"cluster {named[:80]!r}, but this deployment is one cluster (no --cluster, "
                "--clusters or --cluster-contexts) and routes no other"
            )
        members = ", ".join(sorted(self.members))
        if not named:
            return f"no cluster named and no --cluster to give it to (the fleet: {members})"
        return (
            f"cluster {named[:80]!r} is not one of the fleet's ({members}): add it to "
            "--clusters (STREAMPROC_CLUSTERS) of the ingest and windows stages"
        )


class Sightings:
    """Cluster names seen so far, so that each is reported once; bounded against floods of names."""

    #: names remembered at most; past it a name is not reported (the metrics still count it)
    LIMIT = 1000

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def first(self, name: str) -> bool:
        """Whether ``name`` is seen for the first time (and there was room to remember it)."""
        if name in self._seen or len(self._seen) >= self.LIMIT:
            return False
        self._seen.add(name)
        return True
