"""The annotator and expirer against the emulated API server, through the real client."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import orjson
import pytest

from streamproc.clients import kube
from streamproc.cluster import releasing
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import Fault, KubeEmulator
from streamproc.model import conventions
from streamproc.model.actions import Action
from streamproc.stages.annotate import capturing
from streamproc.stages.annotate.expiring import Expirer
from streamproc.stages.annotate.loop import Retries
from tests import doubles as testing
from tests.conftest import (
    action_for,
    annotated,
    async_wait_for,
    make,
    running,
    time_passes,
    topology,
    workload,
)


async def test_a_deployment_action_annotates_exactly_its_pods(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """All pods of the Deployment get retina.sh: observe plus bookkeeping; no other pod does."""
    annotator, _ = make(client)
    frontend = workload(cluster, "frontend")
    before = testing.metric("streamproc_detection_to_annotation_seconds_count")
    assert await annotator.apply(action_for(frontend)) == "applied"
    assert annotated(emulator) == set(frontend.pods)
    pod = emulator.get("Pod", "shop", frontend.pods[0]) or {}
    meta = pod["metadata"]
    assert meta["labels"][conventions.OBSERVED_LABEL] == "true"
    assert meta["annotations"][conventions.TOPOLOGY] == "retina-observe"
    assert meta["annotations"][conventions.OWNED_KEYS] == "retina.sh"
    assert conventions.parse_time(meta["annotations"][conventions.EXPIRES_AT]) > time.time()
    assert testing.metric("streamproc_detection_to_annotation_seconds_count") == before + 1


@pytest.mark.parametrize("name", ["redis", "node-exporter", "report", "debug-shell"])
async def test_every_workload_kind_finds_its_pods(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder, name: str
) -> None:
    """StatefulSet, DaemonSet, CronJob (via its Job) and a bare Pod resolve to their own pods."""
    annotator, _ = make(client)
    target = workload(cluster, name)
    assert await annotator.apply(action_for(target)) == "applied"
    assert annotated(emulator) == set(target.pods)


async def test_a_replayed_action_writes_nothing(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The same action twice (a crash between emit and commit) patches each pod once."""
    annotator, _ = make(client)
    action = action_for(workload(cluster, "frontend"))
    await annotator.apply(action)
    patches_before = sum(1 for r in emulator.requests if r.method == "PATCH")
    assert await annotator.apply(action) == "already-applied"
    assert sum(1 for r in emulator.requests if r.method == "PATCH") == patches_before


async def test_a_later_window_extends_the_expiry(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """With --extend-below 1, every qualifying window after the first moves expires-at later."""
    annotator, _ = make(client, extend_below=1.0)
    frontend = workload(cluster, "frontend")
    # windows that ended longer ago than the clock tolerance: each lasts a TTL after its end
    start = int(time.time()) // 10 * 10 - 200
    await annotator.apply(action_for(frontend, window_start=start))
    first = (emulator.get("Pod", "shop", frontend.pods[0]) or {})["metadata"]["annotations"]
    await annotator.apply(action_for(frontend, window_start=start + 10))
    second = (emulator.get("Pod", "shop", frontend.pods[0]) or {})["metadata"]["annotations"]
    assert (
        conventions.parse_time(second[conventions.EXPIRES_AT])
        == conventions.parse_time(first[conventions.EXPIRES_AT]) + 10
    )


async def test_an_extension_is_written_only_once_less_than_half_the_ttl_is_left(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Lazy extension: windows while plenty is left write nothing; past half the TTL, one
    window extends it, and the observation never lapsed in between.
    """
    annotator, expirer = make(client, ttl=600)
    frontend = workload(cluster, "frontend")

    def window_now() -> int:
        return int(annotator.clock()) // 10 * 10 - 10

    def expiry() -> float:
        pod = emulator.get("Pod", "shop", frontend.pods[0]) or {}
        return conventions.parse_time(pod["metadata"]["annotations"][conventions.EXPIRES_AT])

    assert await annotator.apply(action_for(frontend, window_start=window_now())) == "applied"
    opened = expiry()
    writes = sum(1 for r in emulator.requests if r.method == "PATCH")
    for _ in range(29):  # 290 s of windows: more than half the TTL is always left
        time_passes(expirer, 10)
        result = await annotator.apply(action_for(frontend, window_start=window_now()))
        assert result == "extension-not-due"
    assert sum(1 for r in emulator.requests if r.method == "PATCH") == writes
    assert expiry() == opened
    time_passes(expirer, 20)  # now less than half of the 600 s is left
    assert await annotator.apply(action_for(frontend, window_start=window_now())) == "extended"
    assert expiry() > opened
    assert annotated(emulator) == set(frontend.pods)
    assert testing.metric("streamproc_patches_total", op="observe", result="not-due") >= 29 * 3


async def test_annotations_come_from_the_topology_not_the_action(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A forged action asking for another annotation, TTL and scope writes only the topology's."""
    annotator, _ = make(client)
    redis = workload(cluster, "redis")
    forged = {
        **dataclasses.asdict(action_for(redis)),
        "annotations": {"evil.example/run": "yes"},
        "ttl": 366 * 86_400,
        "scope": "namespace",
    }
    await annotator.apply(Action.decode(orjson.dumps(forged)))
    meta = (emulator.get("Pod", "shop", redis.pods[0]) or {})["metadata"]
    assert "evil.example/run" not in meta["annotations"]
    assert meta["annotations"]["retina.sh"] == "observe"
    until = conventions.parse_time(meta["annotations"][conventions.EXPIRES_AT]) or 0
    assert until <= time.time() + 600  # the topology's TTL
    namespace = (emulator.get("Namespace", "", "shop") or {})["metadata"]
    assert "retina.sh" not in (namespace.get("annotations") or {})


async def test_dry_run_writes_nothing(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With --dry-run or dryRun: true, no request changes the cluster; the log says until when."""

    caplog.set_level("INFO", logger="streamproc.annotate")
    auditor = testing.MemoryAuditor()
    for annotator, _ in (make(client, dry_run=True), make(client, settings_dry_run=True)):
        annotator.auditor = auditor
        assert await annotator.apply(action_for(workload(cluster, "frontend"))) == "dry-run"
    # the audit says what would have been written, and on which pods
    assert sorted(auditor.records[0]["pods"]) == sorted(workload(cluster, "frontend").pods)
    assert auditor.records[0]["annotations"] == {"retina.sh": "observe"}
    assert not [r for r in emulator.requests if r.method in ("PATCH", "PUT", "POST", "DELETE")]
    # a person reads the log: RFC 3339, not seconds since 1970
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dry run")]
    assert said
    assert all(re.search(r" until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", m) for m in said), said


async def test_a_stale_action_is_not_applied(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """An action whose observation would already have ended writes nothing."""
    annotator, _ = make(client, ttl=5)
    old = action_for(workload(cluster, "frontend"), window_start=int(time.time()) - 100)
    assert await annotator.apply(old) == "expired-before-apply"
    assert not annotated(emulator)


async def test_expiry_removes_only_what_streamproc_added(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A retina.sh annotation someone else set survives; streamproc's bookkeeping is gone."""
    frontend = workload(cluster, "frontend")
    owner_set = frontend.pods[0]
    emulator.update(
        "Pod",
        "shop",
        owner_set,
        {"metadata": {"annotations": {"retina.sh": "observe", "team": "x"}}},
    )
    annotator, expirer = make(client, ttl=60)
    await annotator.apply(action_for(frontend))
    async with running(expirer.run):
        time_passes(expirer, 3600)
        await async_wait_for(
            lambda: (
                not [
                    p
                    for p in emulator.list("Pod")
                    if conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
                ]
            ),
            timeout=15,
            what="observations to expire",
        )
    assert annotated(emulator) == {owner_set}
    annotations = (emulator.get("Pod", "shop", owner_set) or {})["metadata"]["annotations"]
    assert annotations == {"retina.sh": "observe", "team": "x"}


async def test_an_observation_already_ended_is_not_expired_a_second_time(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A stale schedule (a resync from a copy a moment old) finds nothing left: no count."""
    annotator, expirer = make(client, ttl=60)
    redis = workload(cluster, "redis")
    await annotator.apply(action_for(redis))
    for pod in redis.pods:  # someone (``streamproc release``, a person) ends it first
        await releasing.release(client, kube.ObjectRef.pod("shop", pod))
    async with running(expirer.run):
        time_passes(expirer, 3600)
        await async_wait_for(lambda: not expirer.active, timeout=15, what="the schedule")
    assert expirer.expired == 0
    expired_events = [e for e in emulator.list("Event") if e.get("reason") == "ObservationExpired"]
    assert expired_events == []


async def test_a_restarted_expirer_expires_from_the_pods_own_annotations(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Expiry state lives on the pods: a fresh expirer finds and ends the observation."""
    annotator, _ = make(client, ttl=60)
    redis = workload(cluster, "redis")
    await annotator.apply(action_for(redis))
    assert annotated(emulator) == set(redis.pods)
    fresh = Expirer(client, resync_s=60, clock=lambda: time.time() + 3600)  # an hour later
    async with running(fresh.run):
        await async_wait_for(
            lambda: not annotated(emulator), timeout=15, what="expiry after restart"
        )
    assert fresh.expired == len(redis.pods)


async def test_an_unavailable_api_parks_the_action_and_applies_it_on_a_retry(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """While the API server fails, the action waits, parked; on its retry, it is applied."""
    annotator, _ = make(client)
    # every attempt of the batch's list and of the action's own list fails (3 tries each)
    emulator.faults.append(Fault(method="GET", path="/namespaces/shop/pods$", status=503, times=6))
    now = [0.0]
    retries: Retries[None] = Retries(annotator, retry_for_s=60, clock=lambda: now[0])
    assert await retries.apply([(action_for(workload(cluster, "frontend")), None)]) == []
    assert len(retries) == 1
    assert not annotated(emulator)
    now[0] += retries.wait_s()
    assert await retries.apply([]) == []
    assert len(retries) == 0
    assert annotated(emulator) == set(workload(cluster, "frontend").pods)


async def test_a_pod_deleted_between_list_and_patch_is_skipped(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """404 on one pod's patch skips that pod and annotates the others."""
    frontend = workload(cluster, "frontend")
    emulator.faults.append(Fault(method="PATCH", path=f"/pods/{frontend.pods[1]}$", status=404))
    annotator, _ = make(client)
    assert await annotator.apply(action_for(frontend)) == "applied"
    assert annotated(emulator) == {frontend.pods[0], frontend.pods[2]}


async def test_forbidden_is_reported_once_and_not_retried_forever(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """403 on patch: the action ends as 'forbidden' (counted), the batch is not retried."""
    emulator.faults.append(Fault(method="PATCH", path="/pods/", status=403, times=1000))
    annotator, _ = make(client)
    before = testing.metric("streamproc_actions_handled_total", result="forbidden")
    retries: Retries[None] = Retries(annotator, retry_for_s=60)
    await asyncio.wait_for(retries.apply([(action_for(workload(cluster, "frontend")), None)]), 10)
    assert len(retries) == 0  # finished for good: not parked for a retry
    assert testing.metric("streamproc_actions_handled_total", result="forbidden") == before + 1
    # one refused patch per pod of the workload, none retried
    assert sum(1 for r in emulator.requests if r.status == 403) == len(
        workload(cluster, "frontend").pods
    )


async def test_every_outcome_is_audited_with_who_what_and_when(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Opening, extending, a dry run and the expiry each leave an audit record."""

    auditor = testing.MemoryAuditor()
    annotator, expirer = make(client, ttl=60, extend_below=1.0)
    annotator.auditor = auditor
    expirer._auditor = auditor
    redis = workload(cluster, "redis")
    start = int(time.time()) - 10
    await annotator.apply(action_for(redis, window_start=start))
    await annotator.apply(action_for(redis, window_start=start + 1))
    dry, _ = make(client, dry_run=True)
    dry.auditor = auditor
    await dry.apply(action_for(workload(cluster, "frontend")))
    async with running(expirer.run):
        time_passes(expirer, 3600)
        await async_wait_for(
            lambda: sum(r["result"] == "expired" for r in auditor.records) == 2,
            timeout=15,
            what="expiry audit records",
        )
    results = [r["result"] for r in auditor.records]
    assert results[:3] == ["applied", "extended", "dry-run"]
    opened = auditor.records[0]
    assert opened["topology"] == "retina-observe"
    assert opened["rule"] == "Read sensitive file untrusted"
    assert (opened["namespace"], opened["kind"], opened["name"]) == ("shop", "StatefulSet", "redis")
    assert sorted(opened["pods"]) == sorted(redis.pods)
    assert opened["annotations"] == {"retina.sh": "observe"}
    assert opened["expires_at"].endswith("Z")
    assert "time" in opened
    expired = [r for r in auditor.records if r["result"] == "expired"]
    assert {r["name"] for r in expired} == set(redis.pods)
    assert "retina.sh" in expired[0]["removed"]


async def test_a_critical_window_creates_one_bounded_retina_capture(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Priority >= Critical: one Capture per window, selecting the workload's pods' labels."""
    from dataclasses import replace

    from streamproc.model import captures

    with_capture = topology(
        capture={
            "priority": ">=Critical",
            "duration": "90s",
            "maxCaptureSizeMB": 50,
            "target": "podSelector",
            "output": {"hostPath": "captures"},
        }
    )
    annotator, _ = make(client)
    annotator.topologies = {with_capture.name: with_capture}
    frontend = workload(cluster, "frontend")
    start = int(time.time()) - 5
    warning = action_for(frontend, window_start=start)
    assert await annotator.apply(warning) == "applied"
    assert emulator.list("Capture") == []  # Error is below the capture's bound
    critical = replace(action_for(frontend, window_start=start + 1), priority=5)
    await annotator.apply(critical)
    [capture] = emulator.list("Capture", "shop")
    assert capture["metadata"]["name"] == captures.name_for(critical.id)
    config = capture["spec"]["captureConfiguration"]
    assert config["captureOption"] == {"duration": "90s", "maxCaptureSize": 50, "packetSize": 1500}
    assert config["captureTarget"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "frontend"}
    }
    assert capture["spec"]["outputConfiguration"] == {"hostPath": "captures"}
    # a replay of the same window's action does not start a second capture
    before = testing.metric("streamproc_patches_total", op="capture", result="exists")
    pods = [emulator.get("Pod", "shop", p) or {} for p in frontend.pods]
    await capturing.capture(client, annotator.auditor, critical, with_capture, pods)
    assert len(emulator.list("Capture", "shop")) == 1
    assert testing.metric("streamproc_patches_total", op="capture", result="exists") == before + 1


async def test_namespace_scope_annotates_the_namespace_and_expires_it(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """scope: namespace marks the Namespace object (not its pods) and ends it on time."""
    annotator, _ = make(client, ttl=60, scope="namespace")
    result = await annotator.apply(action_for(workload(cluster, "redis")))
    assert result == "applied"
    shop = (emulator.get("Namespace", "", "shop") or {})["metadata"]
    assert shop["annotations"]["retina.sh"] == "observe"
    assert shop["labels"][conventions.OBSERVED_LABEL] == "true"
    assert not annotated(emulator)  # no pod was touched
    from streamproc.cluster import observing

    found = await observing.current(client, WorkloadResolver(client, cache_size=10, ttl_s=60))
    assert [(o.kind, o.workload) for o in found] == [("Namespace", "shop")]
    # a restarted expirer, an hour later, finds it through the label
    fresh = Expirer(client, resync_s=60, clock=lambda: time.time() + 3600)
    async with running(fresh.run):
        await async_wait_for(
            lambda: (
                "retina.sh"
                not in (
                    (emulator.get("Namespace", "", "shop") or {})["metadata"].get("annotations")
                    or {}
                )
            ),
            timeout=15,
            what="the namespace observation to expire",
        )
    labels = (emulator.get("Namespace", "", "shop") or {})["metadata"]["labels"]
    assert conventions.OBSERVED_LABEL not in labels
    assert labels["kubernetes.io/metadata.name"] == "shop"


async def test_a_stale_resource_version_is_reread_and_reapplied(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A pod changed by someone else after the batch's listing: 409, re-read, re-apply."""
    annotator, _ = make(client)
    frontend = workload(cluster, "frontend")
    listing = await client.list_pods("shop")
    for name in frontend.pods:  # another controller writes in between
        emulator.update("Pod", "shop", name, {"metadata": {"labels": {"team": "web"}}})
    assert await annotator.apply(action_for(frontend), listing) == "applied"
    statuses = [r.status for r in emulator.requests if r.method == "PATCH"]
    assert statuses.count(409) == len(frontend.pods)
    assert statuses.count(200) == len(frontend.pods)
    for name in frontend.pods:
        meta = (emulator.get("Pod", "shop", name) or {})["metadata"]
        assert meta["labels"]["team"] == "web"  # their change survived
        assert meta["annotations"]["retina.sh"] == "observe"  # ours landed


async def test_a_new_deployments_replicaset_is_read_beside_the_pod_list(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The ReplicaSet the firing pod's name points at is read while the namespace's pods are
    listed, so a new workload's patch waits for one round trip, not two; a wrong guess costs
    one request and changes nothing; a workload only guessed by name costs none."""
    annotator, _ = make(client)
    frontend = workload(cluster, "frontend")
    # a slow list: the ReplicaSet read must not wait for it
    emulator.faults.append(
        Fault(method="GET", path=r"/namespaces/shop/pods$", status=0, delay_s=0.5, times=1)
    )
    await annotator.handle([action_for(frontend)])
    assert annotated(emulator) == set(frontend.pods)
    [listing] = [r for r in emulator.requests if r.path.endswith("/namespaces/shop/pods")]
    [replicaset] = [r for r in emulator.requests if "/replicasets/" in r.path]  # read once
    assert replicaset.at < listing.done

    checkout = workload(cluster, "checkout")
    wrong = dataclasses.replace(action_for(checkout), pod="checkout-notarealhash-x2x7k")
    await annotator.handle([wrong])
    assert annotated(emulator) == set(frontend.pods) | set(checkout.pods)
    reads = [r.path.rsplit("/", 1)[-1] for r in emulator.requests if "/replicasets/" in r.path]
    assert reads.count("checkout-notarealhash") == 1

    # a workload ingest only guessed from a pod's name may be made up: no read on a guess
    made_up = dataclasses.replace(
        action_for(checkout),
        id="retina-observe/shop/Deployment/flood-1/0",
        name="flood-1",
        pod="flood-1-5d8f7c9b6d-x2x7k",
        resolved_by="name-shape",
    )
    await annotator.handle([made_up])
    assert not [r for r in emulator.requests if "/replicasets/flood-1" in r.path]


async def test_a_capture_targets_the_workloads_pods_by_name_by_default(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Retina >= v1.1's podNames: exactly the workload's pods, stored under a relative subpath."""
    from dataclasses import replace

    with_capture = topology(capture={})
    annotator, _ = make(client)
    annotator.topologies = {with_capture.name: with_capture}
    frontend = workload(cluster, "frontend")
    critical = replace(action_for(frontend, window_start=int(time.time()) - 5), priority=5)
    assert await annotator.apply(critical) == "applied"
    [capture] = emulator.list("Capture", "shop")
    assert capture["spec"]["captureConfiguration"]["captureTarget"] == {
        "podNames": sorted(frontend.pods)
    }
    assert capture["spec"]["outputConfiguration"] == {"hostPath": "streamproc"}


async def test_pods_beyond_the_node_budget_are_refused_audited_and_counted(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Retina's per-node filter map: a node at --node-budget takes no new observed pod, while
    pods on other nodes and extensions of pods already observed go ahead.
    """

    annotator, expirer = make(client, node_budget=1, extend_below=1.0)
    annotator.auditor = auditor = testing.MemoryAuditor()
    exporter = workload(cluster, "node-exporter")  # a DaemonSet: one pod on each node
    nodes = {
        p: (emulator.get("Pod", exporter.namespace, p) or {})["spec"]["nodeName"]
        for p in exporter.pods
    }
    assert sorted(nodes.values()) == ["node-a", "node-b"]
    assert await annotator.apply(action_for(exporter)) == "applied"
    assert expirer.observed_on("node-a") == expirer.observed_on("node-b") == 1
    before = testing.metric(
        "streamproc_pods_refused_total", topology="retina-observe", reason="node-budget"
    )
    other = next(
        w for w in cluster.workloads if w.kind == "Deployment" and w.namespace != "kube-system"
    )
    assert await annotator.apply(action_for(other)) == "refused-node-budget"
    assert not (annotated(emulator) & set(other.pods))
    refused = [r for r in auditor.records if r["result"] == "refused-node-budget"]
    assert set(refused[0]["pods"]) == set(other.pods)
    assert refused[0]["node_budget"] == 1
    assert testing.metric(
        "streamproc_pods_refused_total", topology="retina-observe", reason="node-budget"
    ) == before + len(other.pods)
    # the already observed DaemonSet is extended whatever the budget
    later = action_for(exporter, window_start=int(time.time()) // 10 * 10 + 10)
    assert await annotator.apply(later) == "extended"


async def test_concurrent_workloads_cannot_overshoot_the_node_budget_together(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Slots are reserved before the patches go out: one batch, budget 1, one pod per node."""
    annotator, expirer = make(client, node_budget=1)
    batch = [action_for(w) for w in cluster.workloads if w.namespace != "kube-system"]
    await annotator.handle(batch)
    for node in ("node-a", "node-b"):
        assert expirer.observed_on(node) <= 1, node
    per_node: dict[str, int] = {}
    for pod in emulator.list("Pod"):
        if (pod["metadata"].get("annotations") or {}).get("retina.sh") == "observe":
            node = pod["spec"]["nodeName"]
            per_node[node] = per_node.get(node, 0) + 1
    assert per_node
    assert all(n <= 1 for n in per_node.values()), per_node
