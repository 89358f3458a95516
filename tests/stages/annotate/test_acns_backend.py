"""The acns-metric-filters backend against the emulated API server, through the real client.

The pods keep streamproc's bookkeeping (the truth: schedule, restarts, ``status``, ``release``)
without ``retina.sh``; ACNS's one ContainerNetworkMetric mirrors them as include filters.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from streamproc.clients import kube
from streamproc.cluster import observing
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import Fault, KubeEmulator
from streamproc.model import conventions, marks
from streamproc.model import metric_filters as projection
from streamproc.model.actions import Action
from streamproc.model.topologies import Topology
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from streamproc.stages.annotate.filtering import FilterReconciler
from streamproc.stages.annotate.following import Follower
from tests import doubles as testing
from tests.cluster.test_status_and_release import cli
from tests.conftest import Clock, action_for, async_wait_for, topology, workload

CNM = "ContainerNetworkMetric"
#: a user's own singleton, as the AKS docs' examples write one (fb060abe)
USERS: dict[str, Any] = {
    "apiVersion": "acn.azure.com/v1alpha1",
    "kind": CNM,
    "metadata": {"name": "container-network-metric"},
    "spec": {
        "filters": [
            {
                "metric": "dns",
                "excludeFilters": [{"from": {"namespacedPod": ["kube-system/coredns"]}}],
            },
            {
                "metric": "flow",
                "includeFilters": [
                    {"name": "frontends", "from": {"labelSelector": {"matchLabels": {"t": "f"}}}}
                ],
                "excludeFilters": [{"from": {"namespacedPod": ["default/test"]}}],
            },
        ]
    },
}


def acns(ttl: float = 600, **action: Any) -> Topology:
    """The test topology, observing through ACNS's metric filters."""
    return topology(ttl, backend="acns-metric-filters", **action)


@dataclass
class Annotate:
    """One annotate process's parts on one test clock, as ``running`` wires them."""

    annotator: Annotator
    expirer: Expirer
    filters: FilterReconciler
    clock: Clock

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.expirer.wake()


def wire(
    client: kube.Kube,
    topologies: list[Topology] | None = None,
    *,
    settings: Settings | None = None,
    clock: Clock | None = None,
) -> Annotate:
    settings = settings or Settings()
    topologies = topologies or [acns()]
    clock = clock or Clock()
    filters = FilterReconciler(
        client,
        topologies,
        default_backend=settings.observation_backend,
        resync_s=3600,
        dry_run=settings.dry_run,
        clock=clock,
    )
    expirer = Expirer(
        client,
        resync_s=3600,
        clock=clock,
        policy=marks.Policy.of(topologies),
        changed=filters.changed,
        dry_run=settings.dry_run,
    )
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
    annotator = Annotator(
        settings, topologies, client, resolver, expirer, clock=clock, changed=filters.changed
    )
    return Annotate(annotator, expirer, filters, clock)


@asynccontextmanager
async def running(*parts: Annotate) -> AsyncIterator[None]:
    """The expirers and filter reconcilers of ``parts`` run until the block ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.expirer.run(stop)) for p in parts]
    tasks += [asyncio.create_task(p.filters.run(stop)) for p in parts]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


def singleton(emulator: KubeEmulator) -> dict[str, Any] | None:
    found = emulator.list(CNM)
    assert len(found) <= 1
    return found[0] if found else None


def ours(emulator: KubeEmulator) -> dict[str, set[str]]:
    """streamproc's filters now: filter name -> the ``ns/pod`` names in it."""
    cnm = singleton(emulator)
    found: dict[str, set[str]] = {}
    for entry in (cnm or {}).get("spec", {}).get("filters", []):
        for item in entry.get("includeFilters", []):
            if projection.ours(item):
                way = "from" if "from" in item else "to"
                key = f"{entry['metric']} {item['name']}"
                found[key] = set(item[way]["namespacedPod"])
    return found


def of_topology(action: Action, name: str) -> Action:
    """The same action, of topology ``name`` (its id names the topology first)."""
    return replace(action, topology=name, id=name + action.id[action.id.index("/") :])


def pods_in_filters(emulator: KubeEmulator) -> set[str]:
    return set().union(*ours(emulator).values()) if ours(emulator) else set()


async def test_an_observation_becomes_include_filters_and_no_annotation(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The singleton is created with a from and a to filter per metric; pods carry no retina.sh."""
    part = wire(client)
    frontend = workload(cluster, "frontend")
    assert await part.annotator.apply(action_for(frontend)) == "applied"
    for name in frontend.pods:
        meta = (emulator.get("Pod", "shop", name) or {})["metadata"]
        assert meta["labels"][conventions.OBSERVED_LABEL] == "true"
        assert "retina.sh" not in meta["annotations"]
        assert meta["annotations"][conventions.OWNED_KEYS] == ""
    written = await part.filters.reconcile()
    assert written.outcome == "created"
    cnm = singleton(emulator)
    assert cnm is not None
    assert cnm["metadata"]["annotations"][projection.CREATED_BY] == "streamproc"
    names = {f"shop/{p}" for p in frontend.pods}
    expected = {
        f"{metric} streamproc.io.shop.Deployment.frontend.{way}": names
        for metric in ("flow", "drop", "tcp", "dns")
        for way in ("from", "to")
    }
    assert ours(emulator) == expected
    assert testing.metric("streamproc_metric_filters_pods") == len(frontend.pods)
    events = [e for e in emulator.list("Event") if e.get("reason") == "ObservationStarted"]
    assert "ContainerNetworkMetric include filters" in events[0]["message"]


async def test_the_topologys_metrics_choose_the_entries(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """metrics: [dns] writes filters under the dns entry only."""
    part = wire(client, [acns(metrics=["dns"])])
    await part.annotator.apply(action_for(workload(cluster, "redis")))
    await part.filters.reconcile()
    assert {key.split()[0] for key in ours(emulator)} == {"dns"}


async def test_expiry_removes_the_filters_and_the_singleton_streamproc_created(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """At expiry the pods lose their marks and the filters go; the empty object is deleted."""
    part = wire(client, [acns(ttl=60)])
    redis = workload(cluster, "redis")
    async with running(part):
        await part.annotator.apply(action_for(redis))
        await async_wait_for(lambda: pods_in_filters(emulator), timeout=15, what="filters")
        part.later(3600)
        await async_wait_for(
            lambda: singleton(emulator) is None, timeout=15, what="the singleton to go"
        )
    assert part.expirer.expired == len(redis.pods)
    assert (
        not emulator.list("Pod", "shop")[0]["metadata"]
        .get("labels", {})
        .get(conventions.OBSERVED_LABEL)
    )


async def test_the_users_singleton_is_used_and_left_byte_for_byte(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A user's entries and filters survive open, extension and expiry exactly; never deleted."""
    emulator.create(copy.deepcopy(USERS))
    before = singleton(emulator)
    assert before is not None
    part = wire(client, [acns(ttl=60)])
    frontend, redis = workload(cluster, "frontend"), workload(cluster, "redis")
    async with running(part):
        await part.annotator.apply(action_for(frontend))
        await part.annotator.apply(action_for(redis))
        await async_wait_for(
            lambda: len(pods_in_filters(emulator)) == 5, timeout=15, what="filters"
        )
        during = singleton(emulator)
        assert during is not None
        entries = during["spec"]["filters"]
        assert [e["metric"] for e in entries] == ["dns", "flow", "drop", "tcp"]
        # the user's filters come first in their entries, untouched
        assert entries[0]["excludeFilters"] == USERS["spec"]["filters"][0]["excludeFilters"]
        assert entries[1]["includeFilters"][0] == USERS["spec"]["filters"][1]["includeFilters"][0]
        part.later(3600)
        await async_wait_for(
            lambda: not pods_in_filters(emulator), timeout=15, what="the filters to go"
        )
    after = singleton(emulator)
    assert after is not None
    assert after["spec"] == before["spec"]
    assert list(after["spec"]["filters"][1]) == list(before["spec"]["filters"][1])  # key order
    assert after["metadata"]["uid"] == before["metadata"]["uid"]


async def test_a_restarted_annotator_ends_the_observation_and_its_filters_on_time(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A new process reads the pods' marks: it reconciles at start and removes them at expiry."""
    first = wire(client, [acns(ttl=60)])
    api = workload(cluster, "api")
    await first.annotator.apply(action_for(api))
    await first.filters.reconcile()
    assert len(pods_in_filters(emulator)) == len(api.pods)
    # the first process is gone; a second one starts, knowing nothing but the cluster
    second = wire(client, [acns(ttl=60)])
    async with running(second):
        await async_wait_for(lambda: second.filters.rounds, timeout=15, what="a first round")
        assert len(pods_in_filters(emulator)) == len(api.pods)
        assert second.expirer.active  # scheduled from the pods
        second.later(3600)
        await async_wait_for(
            lambda: singleton(emulator) is None, timeout=15, what="filters gone after restart"
        )
    assert second.expirer.expired == len(api.pods)


async def test_two_replicas_converge_through_conflicts(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder, kubeconfig: Path
) -> None:
    """Each writes with its read's resourceVersion; a stale PUT gets 409, is re-read, re-applied."""
    other = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=3)
    try:
        clock = Clock()
        one, two = wire(client, clock=clock), wire(other, clock=clock)
        await one.annotator.apply(action_for(workload(cluster, "frontend")))
        await one.filters.reconcile()
        await two.annotator.apply(action_for(workload(cluster, "redis")))
        # replica one's PUT is held until replica two has written: it carries a stale version
        held = Fault(method="PUT", path="/containernetworkmetrics/", status=0, delay_s=1.0)
        emulator.faults.append(held)
        conflicts = testing.metric("streamproc_metric_filters_writes_total", result="conflict")
        await one.annotator.apply(action_for(workload(cluster, "postgres")))
        first = asyncio.create_task(one.filters.reconcile())
        await async_wait_for(lambda: held.times == 0, timeout=15, what="the held PUT")
        assert (await two.filters.reconcile()).outcome == "replaced"
        # its stale PUT was refused; read again, the object already is its projection too
        assert (await first).outcome == "unchanged"
        assert (
            testing.metric("streamproc_metric_filters_writes_total", result="conflict")
            >= conflicts + 1
        )
        assert {p.split("/")[1] for p in pods_in_filters(emulator)} == {
            *workload(cluster, "frontend").pods,
            *workload(cluster, "redis").pods,
            "postgres-0",
        }
        # both computed the same projection: another round of either changes nothing
        assert (await two.filters.reconcile()).outcome == "unchanged"
        assert (await one.filters.reconcile()).outcome == "unchanged"
    finally:
        await other.close()


async def test_a_pod_another_replica_opens_during_our_round_keeps_its_filter(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B opens a pod and writes between A's pod list and A's PUT: A's 409 redoes both reads."""
    other = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=3)
    try:
        clock = Clock()
        one, two = wire(client, clock=clock), wire(other, clock=clock)
        redis, postgres = workload(cluster, "redis"), workload(cluster, "postgres")
        await one.annotator.apply(action_for(redis))
        put = client.replace_cluster_object
        interleaved: list[str] = []

        async def after_our_reads(gvr: tuple[str, str, str], body: kube.Json) -> kube.Json:
            if not interleaved:  # once: B opens postgres and writes it before our PUT lands
                assert await two.annotator.apply(action_for(postgres)) == "applied"
                interleaved.append((await two.filters.reconcile()).outcome)
            return await put(gvr, body)

        await one.filters.reconcile()  # the singleton exists: the next rounds PUT
        await one.annotator.apply(action_for(workload(cluster, "frontend")))
        monkeypatch.setattr(client, "replace_cluster_object", after_our_reads)
        await one.filters.reconcile()
        assert interleaved == ["replaced"]
        named = {p.split("/")[1] for p in pods_in_filters(emulator)}
        assert set(postgres.pods) <= named, "the pod B opened lost its filter"
        assert named == {*redis.pods, *postgres.pods, *workload(cluster, "frontend").pods}
    finally:
        await other.close()


async def test_processes_with_different_topology_files_keep_each_others_filters(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A rolling upgrade: old knows only 'shells', new only 'miners'; neither drops the other's."""
    clock = Clock()
    old = wire(client, [acns(name="shells", metrics=["dns"])], clock=clock)
    new = wire(client, [acns(name="miners")], clock=clock)
    redis, frontend = workload(cluster, "redis"), workload(cluster, "frontend")
    await old.annotator.apply(of_topology(action_for(redis), "shells"))
    await new.annotator.apply(of_topology(action_for(frontend), "miners"))
    await old.filters.reconcile()
    expected = ours(emulator)
    assert {key.split()[0] for key in expected if "redis" in key} == {"dns"}
    assert {p.split("/")[1] for p in pods_in_filters(emulator)} == {*redis.pods, *frontend.pods}
    for part in (new, old, new):
        assert (await part.filters.reconcile()).outcome == "unchanged"
    assert ours(emulator) == expected
    meta = (emulator.get("Pod", "shop", redis.pods[0]) or {})["metadata"]
    assert meta["annotations"][conventions.METRIC_FILTERS] == "dns"


async def test_release_removes_the_pods_filters(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """``streamproc release`` ends the marks, then reconciles: the workload's filters go too."""
    topologies = [acns()]
    part = wire(client, topologies)
    frontend, redis = workload(cluster, "frontend"), workload(cluster, "redis")
    await part.annotator.apply(action_for(frontend))
    await part.annotator.apply(action_for(redis))
    await part.filters.reconcile()
    policy = marks.Policy.of(topologies)
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
    pods, _ = await observing.release(client, resolver, "shop", None, "frontend", policy)
    assert sorted(pods) == sorted(frontend.pods)
    written = await observing.project_filters(client, topologies, "retina-annotation", policy)
    assert written is not None
    assert written.outcome == "replaced"
    assert {p.split("/")[1] for p in pods_in_filters(emulator)} == set(redis.pods)


async def test_release_of_an_annotation_topology_touches_no_metric_filters(
    client: kube.Kube, emulator: KubeEmulator
) -> None:
    """Without an acns topology, release makes no request for ContainerNetworkMetric."""
    topologies = [topology()]
    assert (
        await observing.project_filters(
            client, topologies, "retina-annotation", marks.Policy.of(topologies)
        )
        is None
    )
    assert not [r for r in emulator.requests if "containernetworkmetrics" in r.path]


@pytest.mark.parametrize("where", ["settings", "topology"])
async def test_dry_run_writes_no_metric_filters(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder, where: str
) -> None:
    """Dry-run (the deployment's or the topology's) writes neither pods nor the singleton."""
    settings = Settings(dry_run=where == "settings")
    part = wire(client, [acns(dry_run=where == "topology")], settings=settings)
    assert await part.annotator.apply(action_for(workload(cluster, "frontend"))) == "dry-run"
    await part.filters.reconcile()
    assert singleton(emulator) is None
    writes = [r for r in emulator.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert not [r for r in writes if "/pods/" in r.path or "containernetworkmetrics" in r.path]


async def test_the_dry_run_reconciler_says_what_it_would_write(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Pods observed by a live process; a dry-run process computes the object and writes none."""
    live = wire(client)
    await live.annotator.apply(action_for(workload(cluster, "redis")))
    dry = wire(client, settings=Settings(dry_run=True))
    assert (await dry.filters.reconcile()).outcome == "dry-run"
    assert singleton(emulator) is None


async def test_the_deployments_backend_applies_to_topologies_without_one(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """--observation-backend acns-metric-filters: a plain topology writes filters, no retina.sh."""
    part = wire(client, [topology()], settings=Settings(observation_backend="acns-metric-filters"))
    redis = workload(cluster, "redis")
    await part.annotator.apply(action_for(redis))
    await part.filters.reconcile()
    assert {p.split("/")[1] for p in pods_in_filters(emulator)} == set(redis.pods)
    meta = (emulator.get("Pod", "shop", "redis-0") or {})["metadata"]
    assert "retina.sh" not in meta["annotations"]


async def test_a_new_pod_of_a_followed_workload_joins_the_filters(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The follower marks a rollout's new pod and wakes the reconciler: it is in the filters."""
    topologies = [acns()]
    part = wire(client, topologies)
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
    follower = Follower(
        client, resolver, topologies, part.expirer, clock=part.clock, changed=part.filters.changed
    )
    part.annotator.follower = follower
    frontend = workload(cluster, "frontend")
    stop = asyncio.Event()
    watching = asyncio.create_task(follower.run(stop))
    try:
        async with running(part):
            await part.annotator.apply(action_for(frontend))
            await async_wait_for(lambda: follower.resource_version, timeout=15, what="a list")
            fresh = copy.deepcopy(emulator.get("Pod", "shop", frontend.pods[0]) or {})
            meta = fresh["metadata"]
            meta["name"] = "frontend-ngq2cd9wfp-new01"
            for key in ("uid", "resourceVersion", "creationTimestamp"):
                meta.pop(key, None)
            meta["annotations"], meta["labels"] = (
                {},
                {k: v for k, v in meta["labels"].items() if not k.startswith("streamproc.io")},
            )
            emulator.create(fresh)
            await async_wait_for(
                lambda: "shop/frontend-ngq2cd9wfp-new01" in pods_in_filters(emulator),
                timeout=15,
                what="the new pod in the filters",
            )
    finally:
        stop.set()
        await watching


async def test_the_emulator_refuses_a_delete_with_a_stale_precondition(
    client: kube.Kube, emulator: KubeEmulator
) -> None:
    """DELETE with preconditions.resourceVersion answers 409 as the API server does."""
    created = emulator.create(copy.deepcopy(USERS))
    gvr = ("acn.azure.com", "v1alpha1", "containernetworkmetrics")
    name, current = "container-network-metric", created["metadata"]["resourceVersion"]
    with pytest.raises(kube.Conflict):
        await client.delete_cluster_object(gvr, name, resource_version=str(int(current) - 1))
    assert singleton(emulator) is not None
    await client.delete_cluster_object(gvr, name, resource_version=current)
    assert singleton(emulator) is None


async def test_the_release_command_removes_the_released_pods_filters(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder, kubeconfig: Path
) -> None:
    """``streamproc release`` with the acns backend configured: the pods leave the filters."""
    part = wire(client)
    frontend, redis = workload(cluster, "frontend"), workload(cluster, "redis")
    await part.annotator.apply(action_for(frontend))
    await part.annotator.apply(action_for(redis))
    await part.filters.reconcile()
    done = await asyncio.to_thread(
        cli, kubeconfig, "release", "shop/frontend", "--observation-backend", "acns-metric-filters"
    )
    assert done.returncode == 0, done.stderr
    assert {p.split("/")[1] for p in pods_in_filters(emulator)} == set(redis.pods)


async def test_a_dry_run_leaves_the_users_singleton_as_it_is(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """With a singleton to write to, a dry-run process computes the change and writes none."""
    emulator.create(copy.deepcopy(USERS))
    before = singleton(emulator)
    live = wire(client)
    await live.annotator.apply(action_for(workload(cluster, "redis")))
    dry = wire(client, settings=Settings(dry_run=True))
    assert (await dry.filters.reconcile()).outcome == "dry-run"
    assert singleton(emulator) == before


async def test_a_singleton_of_an_unknown_shape_is_left_alone(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """spec.filters that is not a list: nothing written, said once per round, counted."""
    odd = copy.deepcopy(USERS)
    odd["spec"] = {"filters": {"metric": "flow"}}
    emulator.create(odd)
    before = singleton(emulator)
    part = wire(client)
    await part.annotator.apply(action_for(workload(cluster, "redis")))
    malformed = testing.metric("streamproc_metric_filters_writes_total", result="malformed")
    assert (await part.filters.reconcile()).outcome == "malformed"
    assert singleton(emulator) == before
    assert testing.metric("streamproc_metric_filters_writes_total", result="malformed") == (
        malformed + 1
    )


async def test_release_succeeds_when_the_filters_cannot_be_written_and_says_so(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder, kubeconfig: Path
) -> None:
    """The marks are gone, so it released: a 403 on the CNM is one plain line, exit 0."""
    part = wire(client)
    frontend = workload(cluster, "frontend")
    await part.annotator.apply(action_for(frontend))
    await part.filters.reconcile()
    emulator.denied.add(("acn.azure.com", "containernetworkmetrics", "list"))
    done = await asyncio.to_thread(
        cli, kubeconfig, "release", "shop/frontend", "--observation-backend", "acns-metric-filters"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("released shop/frontend")
    assert lines[1].startswith("the filters follow at the annotator's next round: ")
    assert "Traceback" not in done.stderr
    for name in frontend.pods:
        meta = (emulator.get("Pod", "shop", name) or {})["metadata"]
        assert conventions.OBSERVED_LABEL not in (meta.get("labels") or {})


def cnm_writes(emulator: KubeEmulator) -> int:
    return len(
        [
            r
            for r in emulator.requests
            if "containernetworkmetrics" in r.path and r.method in ("POST", "PUT", "DELETE")
        ]
    )


async def test_an_extended_observation_keeps_its_filters_and_ends_later(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A later window moves expires-at: the filters stay as they are (no write), and end later."""
    part = wire(client, [acns(ttl=600)], settings=Settings(extend_below=1.0))
    redis = workload(cluster, "redis")
    start = int(time.time()) // 10 * 10 - 200
    async with running(part):
        await part.annotator.apply(action_for(redis, window_start=start))
        await async_wait_for(
            lambda: len(pods_in_filters(emulator)) == len(redis.pods), timeout=15, what="filters"
        )
        assert (await part.filters.reconcile()).outcome == "unchanged"
        before, writes, rounds = ours(emulator), cnm_writes(emulator), part.filters.rounds
        await part.annotator.apply(action_for(redis, window_start=start + 100))
        meta = (emulator.get("Pod", "shop", redis.pods[0]) or {})["metadata"]
        until = conventions.parse_time(meta["annotations"][conventions.EXPIRES_AT])
        assert until == start + 110 + 600
        # the extension wakes the reconciler (a round of its own besides this one): no change
        assert (await part.filters.reconcile()).outcome == "unchanged"
        await async_wait_for(lambda: part.filters.rounds >= rounds + 2, timeout=15, what="a round")
        assert ours(emulator) == before
        assert cnm_writes(emulator) == writes
        # past the first window's expiry, before the extended one: still observed, still there
        part.later(start + 610 + 45 - time.time())
        assert (await part.filters.reconcile()).outcome == "unchanged"
        assert part.expirer.expired == 0
        assert ours(emulator) == before
        part.later(3600)
        await async_wait_for(
            lambda: singleton(emulator) is None, timeout=15, what="the filters to go at the end"
        )
    assert part.expirer.expired == len(redis.pods)


async def test_a_persons_edit_between_our_read_and_write_is_kept(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A person edits the object after our read: our PUT gets 409, and their filter stays."""
    emulator.create(copy.deepcopy(USERS))
    part = wire(client)
    redis = workload(cluster, "redis")
    await part.annotator.apply(action_for(redis))
    put = client.replace_cluster_object
    theirs = {"name": "added-by-hand", "to": {"namespacedPod": ["shop/checkout-0"]}}

    async def after_our_read(gvr: tuple[str, str, str], body: kube.Json) -> kube.Json:
        if not emulator_edited:
            current = singleton(emulator) or {}
            filters = copy.deepcopy(current["spec"]["filters"])
            filters[1]["includeFilters"].append(theirs)
            emulator.update(CNM, "", "container-network-metric", {"spec": {"filters": filters}})
            emulator_edited.append(True)
        return await put(gvr, body)

    emulator_edited: list[bool] = []
    monkeypatch.setattr(client, "replace_cluster_object", after_our_read)
    assert (await part.filters.reconcile()).outcome == "replaced"
    assert emulator_edited
    flow = (singleton(emulator) or {})["spec"]["filters"][1]
    assert theirs in flow["includeFilters"]
    assert {p.split("/")[1] for p in pods_in_filters(emulator)} == set(redis.pods)


async def test_a_deleted_pods_filter_goes_when_its_observation_is_due(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The only observed pod is deleted: at its expiry the expirer finds it gone, filters go."""
    part = wire(client, [acns(ttl=60)])
    postgres = workload(cluster, "postgres")
    assert list(postgres.pods) == ["postgres-0"]
    woken: list[str] = []

    def changed(topology: str) -> None:
        woken.append(topology)
        part.filters.changed(topology)

    part.expirer.changed = changed
    async with running(part):
        await part.annotator.apply(action_for(postgres))
        await async_wait_for(lambda: pods_in_filters(emulator), timeout=15, what="filters")
        assert emulator.delete("Pod", postgres.namespace, "postgres-0")
        part.later(3600)
        await async_wait_for(lambda: woken, timeout=15, what="the expirer to wake the filters")
        await async_wait_for(
            lambda: singleton(emulator) is None, timeout=15, what="the gone pod's filters to go"
        )


async def test_a_pod_whose_marks_are_refused_leaves_the_filters(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A tenant edits a mark into a form streamproc never writes: the next round drops the pod."""
    part = wire(client)
    redis = workload(cluster, "redis")
    await part.annotator.apply(action_for(redis))
    await part.filters.reconcile()
    forged = redis.pods[0]
    emulator.update(
        "Pod", "shop", forged, {"metadata": {"annotations": {conventions.EXPIRES_AT: "tomorrow"}}}
    )
    await part.filters.reconcile()
    assert {p.split("/")[1] for p in pods_in_filters(emulator)} == set(redis.pods) - {forged}


async def test_a_refused_write_is_warned_once_and_retried_at_the_resync(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 422 will not pass in 2 s: one warning, and the next try at the resync, not in 2 s."""
    emulator.create(copy.deepcopy(USERS))
    part = wire(client)
    await part.annotator.apply(action_for(workload(cluster, "redis")))
    refused = Fault(method="PUT", path="/containernetworkmetrics/", status=422, times=100)
    emulator.faults.append(refused)
    with caplog.at_level("WARNING", logger="streamproc.metric_filters"):
        async with running(part):
            await async_wait_for(
                lambda: "not reconciled" in caplog.text, timeout=15, what="the warning"
            )
    warned = [r.getMessage() for r in caplog.records if "not reconciled" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].endswith("trying again in 3600s")
    assert refused.times == 99


async def test_release_projects_on_the_api_servers_clock(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """An API server an hour ahead: marks it holds for expired leave the filters at release."""
    topologies = [acns(ttl=1800)]
    part = wire(client, topologies)
    await part.annotator.apply(action_for(workload(cluster, "redis")))
    await part.filters.reconcile()
    assert pods_in_filters(emulator)
    emulator.clock_offset_s = 3600.0
    await client.list_cluster_objects(("acn.azure.com", "v1alpha1", "containernetworkmetrics"))
    assert client.now() > time.time() + 3000  # the client has measured the server's clock
    policy = marks.Policy.of(topologies)
    written = await observing.project_filters(client, topologies, "retina-annotation", policy)
    assert written is not None
    assert written.outcome == "deleted"
    assert singleton(emulator) is None
