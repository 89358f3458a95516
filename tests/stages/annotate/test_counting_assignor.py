"""The annotate group's assignor: the partition count each assignment was made from travels with it.

Every member hashes workloads over that count (``ownership``), so however the topic's count
moves between the assignment and a member's own metadata, every workload has one owner.
"""

from __future__ import annotations

from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from streamproc.clients import kafka

TOPIC = "streamproc.actions"


class _Metadata:
    """The one thing an assignor reads of the cluster's metadata: each topic's partitions."""

    def __init__(self, partitions: int) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self._partitions)) if topic == TOPIC else None


def _assign(partitions: int, members: int) -> dict[str, ConsumerProtocolMemberAssignment]:
    metadata = ConsumerProtocolMemberMetadata(0, [TOPIC], b"")
    group = {f"member-{n}": metadata for n in range(members)}
    return kafka.CountingAssignor().assign(_Metadata(partitions), group)


def _received(assignment: ConsumerProtocolMemberAssignment) -> kafka.CountingAssignor:
    """A member's assignor after the group's assignment reached it (bytes, as on the wire)."""
    member = kafka.CountingAssignor()
    member.on_assignment(ConsumerProtocolMemberAssignment.decode(assignment.encode()))
    return member


def test_every_member_learns_the_count_its_assignment_was_made_from() -> None:
    """Four partitions over two members: both are told 4, and together they hold all four."""
    assigned = _assign(4, 2)
    held = sorted(p for a in assigned.values() for tp in a.partitions() for p in [tp.partition])
    assert held == [0, 1, 2, 3]
    for assignment in assigned.values():
        member = _received(assignment)
        assert member.counted == {TOPIC: 4}
        assert not member.fallback


def test_a_topic_without_partitions_has_one_fallback_owner() -> None:
    """Deleted under the group: exactly one member owns every workload until partitions return."""
    members = [_received(a) for a in _assign(0, 3).values()]
    assert [m.counted for m in members] == [{TOPIC: 0}] * 3
    assert sum(m.fallback for m in members) == 1


def test_an_assignment_without_counts_leaves_them_unknown() -> None:
    """Plain roundrobin's empty user data, or garbage: the member falls back to its metadata."""
    for user_data in (b"", b"{", b'{"partitions": {"t": -1}}', b'{"partitions": {"t": true}}'):
        member = kafka.CountingAssignor()
        member.on_assignment(ConsumerProtocolMemberAssignment(0, [], user_data))
        assert member.counted is None
        assert not member.fallback


def test_members_of_an_older_version_share_the_protocol() -> None:
    """Round robin's name and metadata: a group of old and new members agrees on one protocol."""
    assignor = kafka.CountingAssignor()
    assert assignor.name == "roundrobin"
    assert assignor.metadata([TOPIC]).encode() == (
        ConsumerProtocolMemberMetadata(0, [TOPIC], b"").encode()
    )
