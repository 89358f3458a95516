"""Which workloads one annotate replica is responsible for: those whose actions it reads.

Actions are keyed by workload (``topology/namespace/Kind/name``), so each workload's actions
land on one partition of the actions topic, and the consumer group gives each partition to one
annotate replica. That replica applies the workload's actions, and so it alone also expires its
pods, follows its new pods and carries its share of the API budget: ownership follows the
partition assignment, and moves with it when a replica joins, leaves or dies. A pod says whose
it is through its ``streamproc.io/action`` annotation (the action id is the key plus the
window), hashed as the producer's partitioner does (Kafka's murmur2, Java-compatible).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streamproc.model import conventions


def key_of(action_id: str) -> str:
    """The Kafka key of the workload an action id belongs to."""
    return action_id.rsplit("/", 1)[0]


class Ownership:
    """The partitions of the actions topic this replica is assigned, and what follows from it.

    Until the first assignment (and in a process that reads no actions at all) nothing is
    owned: an expiry or a followed pod waits for its owner rather than being done twice.
    ``Ownership.everything()`` is the single-process case: tests, ``streamproc release``.
    """

    def __init__(self, partition_of: Callable[[bytes, int], int]) -> None:
        self._partition_of = partition_of
        self._owned: frozenset[int] = frozenset()
        self._total = 0
        self._everything = False
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def everything(cls) -> Ownership:
        """Owns every workload (one annotate process, or no group at all)."""
        owned = cls(lambda _key, _n: 0)
        owned._everything = True
        return owned

    def assign(self, partitions: set[int], total: int) -> None:
        """The group's new assignment; listeners (the expirer, the follower) look again."""
        self._owned, self._total = frozenset(partitions), total
        for listener in self._listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every new assignment."""
        self._listeners.append(listener)

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions held now."""
        return self._owned

    @property
    def total(self) -> int:
        """The partition count the assignment was made from (0 before the first one)."""
        return self._total

    @property
    def share(self) -> float:
        """The fraction of partitions owned (1.0 for ``everything``)."""
        if self._everything:
            return 1.0
        return len(self._owned) / self._total if self._total else 0.0

    def owns_key(self, key: str) -> bool:
        """Whether the workload with this Kafka key is this replica's."""
        if self._everything:
            return True
        if not self._total:
            return False
        return self._partition_of(key.encode(), self._total) in self._owned

    def owns(self, obj: Mapping[str, Any]) -> bool:
        """Whether a pod (or Namespace object) streamproc marked is this replica's to handle."""
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        action_id = str(annotations.get(conventions.ACTION_ID) or "")
        if self._everything:
            return True
        # a mark without an action id (hand-edited) is the first partition's owner's
        return self.owns_key(key_of(action_id)) if action_id else 0 in self._owned
