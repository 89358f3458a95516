"""A change of the actions topic's partition count leaves no observation without an owner.

Ownership follows the partitions of the actions topic a replica holds: a workload's pods are
expired by the replica holding the partition its key hashes to. When the count changes under
a running group (partitions added to scale out, or the topic deleted and re-created by the
windows stage), a member that hashed over the new count while holding an assignment made from
the old one left the workloads of the other partitions with no owner: their pods stayed
observed forever ("[0] of 4").
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from streamproc.clients import kafka
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model.ownership import key_of
from streamproc.settings import Settings
from tests.conftest import Clock, action_for, annotated, async_wait_for
from tests.stages.annotate.test_replicas import replica

pytestmark = pytest.mark.e2e


async def _recreate(settings: Settings, topic: str, partitions: int) -> None:
    """Delete the topic and create it again with ``partitions``, as a re-deployment may."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        with contextlib.suppress(KafkaError):  # a metadata request may have re-created it
            await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def test_a_recreated_actions_topic_with_more_partitions_leaves_every_pod_an_owner(
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    kubeconfig: Path,
    cluster: ClusterBuilder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deleted and re-created with 4 partitions under the one annotator: every pod expires.

    Then either the group rebalanced onto the 4 partitions (Apache Kafka's coordinator does
    after the leader's metadata refresh), or the annotator says they are not all read (tansu
    hands back the old assignment at the same generation).
    """
    caplog.set_level("WARNING", logger="streamproc.annotate")
    settings = Settings(
        bootstrap_servers=broker.bootstrap, session_timeout_s=6, metadata_max_age_s=1
    )
    topic = settings.topics.actions
    await kafka.ensure_topics(settings, [kafka.TopicSpec(topic, 1)])
    workloads = [w for w in cluster.workloads if w.namespace != "kube-system"]
    keys = {key_of(action_for(w).id) for w in workloads}
    assert {kafka.partition_of(k.encode(), 4) for k in keys} - {0}  # some hash elsewhere of 4
    clock = Clock()
    async with replica(settings, kubeconfig, clock) as only:
        ownership = only.expirer.ownership
        await async_wait_for(
            lambda: only.stage.joined and ownership.partitions == {0},
            timeout=90,
            what="the annotator to hold the one partition",
        )
        start = int(clock()) // 10 * 10 - 10
        for w in workloads:
            assert await only.stage.annotator.apply(action_for(w, window_start=start)) == "applied"
        pods = {p for w in workloads for p in w.pods}
        assert pods <= annotated(emulator)

        assignments: list[tuple[frozenset[int], int]] = []
        ownership.on_change(lambda: assignments.append((ownership.partitions, ownership.total)))
        await _recreate(settings, topic, 4)
        consumer = only.stage.consumer
        assert consumer is not None
        await async_wait_for(
            lambda: (
                len(consumer.partitions_for_topic(topic) or ()) == 4
                and only.stage.joined
                and assignments
                and assignments[-1][0]
            ),
            timeout=90,
            what="the annotator to see 4 partitions and be assigned again",
        )
        # whatever it was assigned, every workload has an owner: this, the only member
        unowned = sorted(k for k in keys if not ownership.owns_key(k))
        assert not unowned, f"no owner after {assignments}: {unowned}"

        clock.advance(601)
        only.expirer.wake()
        await async_wait_for(
            lambda: not (pods & annotated(emulator)),
            timeout=60,
            what=f"every pod expired (assignments: {assignments})",
        )
        await async_wait_for(
            lambda: (
                ownership.partitions == {0, 1, 2, 3}
                or "has 4 partitions but the group's assignment covers 1" in caplog.text
            ),
            timeout=60,
            what="the new partitions read, or the reason they are not said",
        )
