"""Two annotate replicas in one group share the cluster work: each pod is expired once, by the
replica whose actions partition holds its workload, and a survivor takes over a leaver's pods.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streamproc.clients import kafka, kube
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model.actions import Action
from streamproc.model.ownership import Ownership, key_of
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from streamproc.stages.annotate.following import Follower
from streamproc.stages.annotate.loop import AnnotateStage
from tests import doubles as testing
from tests.conftest import Clock, action_for, annotated, async_wait_for, topology
from tests.stages.annotate.test_following import new_frontend_pod, observed

pytestmark = pytest.mark.e2e
PARTITIONS = 4


@dataclass
class Replica:
    """One ``streamproc annotate`` process's parts, in this process."""

    stage: AnnotateStage
    expirer: Expirer
    follower: Follower
    auditor: testing.MemoryAuditor
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def results(self, result: str) -> list[dict[str, object]]:
        return [r for r in self.auditor.records if r["result"] == result]

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def replica(settings: Settings, kubeconfig: Path, clock: Clock) -> AsyncIterator[Replica]:
    client = await kube.Kube.connect(str(kubeconfig))
    try:
        ownership = Ownership(kafka.partition_of)
        auditor = testing.MemoryAuditor()
        resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
        expirer = Expirer(client, resync_s=3600, auditor=auditor, clock=clock, ownership=ownership)
        topologies = [topology(ttl=600)]
        follower = Follower(
            client, resolver, topologies, expirer, auditor, clock=clock, ownership=ownership
        )
        annotator = Annotator(
            settings, topologies, client, resolver, expirer, auditor, follower, clock=clock
        )
        running = Replica(AnnotateStage(settings, annotator, ownership), expirer, follower, auditor)
        running.tasks = [
            asyncio.create_task(running.stage.run(running.stop)),
            asyncio.create_task(expirer.run(running.stop)),
            asyncio.create_task(follower.run(running.stop)),
        ]
        try:
            yield running
        finally:
            await running.close()
    finally:
        await client.close()


async def publish(settings: Settings, actions: list[Action]) -> None:
    """As the windows stage does: keyed by workload, so the default partitioner spreads them."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for action in actions:
            await producer.send(
                settings.topics.actions, key=key_of(action.id).encode(), value=action.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


def owners(replicas: list[Replica]) -> bool:
    """Every partition has exactly one owner among the running replicas."""
    held = Counter(p for r in replicas for p in r.expirer.ownership.partitions)
    return sorted(held) == list(range(PARTITIONS)) and set(held.values()) == {1}


async def test_two_replicas_expire_each_pod_once_and_a_survivor_takes_over(
    broker: EmbeddedBroker, emulator: KubeEmulator, kubeconfig: Path, cluster: ClusterBuilder
) -> None:
    settings = Settings(bootstrap_servers=broker.bootstrap, session_timeout_s=6)
    await kafka.ensure_topics(settings, [kafka.TopicSpec(settings.topics.actions, PARTITIONS)])
    # kube-system is protected: the annotator refuses actions there (``guarding``)
    workloads = [
        w
        for w in cluster.workloads
        if w.kind in ("Deployment", "StatefulSet") and w.namespace != "kube-system"
    ]
    pods = {p for w in workloads for p in w.pods}
    clock = Clock()
    async with replica(settings, kubeconfig, clock) as first:
        async with replica(settings, kubeconfig, clock) as second:
            both = [first, second]
            await async_wait_for(
                lambda: owners(both) and first.stage.joined and second.stage.joined,
                timeout=90,
                what="both replicas to hold partitions",
            )
            start = int(clock()) // 10 * 10 - 10
            await publish(settings, [action_for(w, window_start=start) for w in workloads])
            await async_wait_for(
                lambda: pods <= annotated(emulator), timeout=60, what="every workload observed"
            )

            # each workload was applied by one replica: the one holding its partition (its audit
            # record follows the last pod's patch, so wait for the records, then count them)
            def applied_names() -> list[str]:
                return [r["name"] for r in first.results("applied") + second.results("applied")]

            await async_wait_for(
                lambda: len(applied_names()) >= len(workloads), timeout=30, what="applied records"
            )
            applied = applied_names()
            assert sorted(applied) == sorted(w.name for w in workloads)
            assert first.results("applied")
            assert second.results("applied")

            # a new pod of an observed workload is observed once, by its workload's owner, even
            # after both replicas rebuilt what they follow from the pods' marks (a 410 relists)
            listed: list[list[str]] = [[], []]
            for rep, heard in zip(both, listed, strict=True):
                rep.follower.cache.subscribe(lambda kind, _pod, heard=heard: heard.append(kind))
            emulator.compact()
            await async_wait_for(
                lambda: all("LISTED" in heard for heard in listed),
                timeout=60,
                what="both replicas to list the pods again",
            )
            new_frontend_pod(emulator, "frontend-ngq2cd9wfp-zzzzz")
            await async_wait_for(
                lambda: observed(emulator, "frontend-ngq2cd9wfp-zzzzz"),
                timeout=60,
                what="the new pod observed",
            )
            marked = int(
                emulator.get("Pod", "shop", "frontend-ngq2cd9wfp-zzzzz")["metadata"][
                    "resourceVersion"
                ]
            )  # type: ignore[index]
            await async_wait_for(  # both followers have handled the pod's creation and its mark
                lambda: all(int(r.follower.resource_version or 0) >= marked for r in both),
                timeout=60,
                what="both followers to see the new pod observed",
            )
            followed = [r for rep in both for r in rep.results("followed")]
            assert [r["pods"] for r in followed] == [["frontend-ngq2cd9wfp-zzzzz"]]
            owner = next(rep for rep in both if rep.results("followed"))
            assert "frontend" in {r["name"] for r in owner.results("applied")}
            pods.add("frontend-ngq2cd9wfp-zzzzz")

            clock.advance(601)
            for r in both:
                r.expirer.wake()
            await async_wait_for(
                lambda: not (pods & annotated(emulator)), timeout=60, what="every pod expired"
            )
            expired = Counter(str(r["name"]) for rep in both for r in rep.results("expired"))
            assert set(expired) == pods
            assert set(expired.values()) == {1}  # once each, by one replica
            for rep in both:  # by the replica that applied the workload
                mine = {
                    p
                    for r in rep.results("applied") + rep.results("followed")
                    for p in r["pods"]  # type: ignore[attr-defined]
                }
                assert {str(r["name"]) for r in rep.results("expired")} == mine

            # a second round of observations, then one replica leaves: the other takes over
            start = int(clock()) // 10 * 10 - 10
            await publish(settings, [action_for(w, window_start=start) for w in workloads])
            await async_wait_for(
                lambda: pods <= annotated(emulator), timeout=60, what="observed again"
            )
        await async_wait_for(
            lambda: owners([first]), timeout=90, what="the survivor to hold every partition"
        )
        before = Counter(str(r["name"]) for r in first.results("expired"))
        clock.advance(601)
        first.expirer.wake()
        await async_wait_for(
            lambda: not (pods & annotated(emulator)), timeout=60, what="the survivor to expire all"
        )
        after = Counter(str(r["name"]) for r in first.results("expired")) - before
        assert set(after) == pods
        assert set(after.values()) == {1}
        assert len(second.results("expired")) == len(pods) - len(before)  # nothing after leaving
