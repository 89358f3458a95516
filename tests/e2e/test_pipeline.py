"""The whole flow on a real broker and the emulated cluster, with streamproc as a subprocess."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from streamproc.lab import samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from streamproc.settings import Groups, Topics
from tests.conftest import annotated, wait_for
from tests.e2e.conftest import (
    Pipeline,
    consume_all,
    group_lag,
    patch_count,
    produce,
    topology_file,
)

pytestmark = pytest.mark.e2e
WARNING, CRITICAL, NOTICE = samples.RULES[0], samples.RULES[1], samples.RULES[5]


def by_name(cluster: ClusterBuilder, name: str) -> SampleWorkload:
    return next(w for w in cluster.workloads if w.name == name)


def line(
    workload: SampleWorkload, pod: str, rule: samples.Rule, rng: random.Random, **kw: bool
) -> bytes:
    return orjson.dumps(samples.detection(workload, pod, rule, time.time(), rng, **kw))


def test_detections_become_annotations_on_exactly_the_right_pods_then_expire(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Every workload kind is observed, nothing else is, bad lines dead-lettered, all expires."""
    rng = random.Random(3)
    observed = [
        by_name(cluster, n)
        for n in ("frontend", "redis", "postgres", "node-exporter", "report", "debug-shell")
    ]
    lines = []
    for workload in observed:
        # Both of postgres' detections carry owner fields: records without a key land on any
        # partition, so which of a workload's detections opens its tally is not fixed.
        by_fields = workload.name == "postgres"
        lines.append(line(workload, workload.pods[0], WARNING, rng, owner_fields=by_fields))
        lines.append(line(workload, workload.pods[-1], CRITICAL, rng, owner_fields=by_fields))
    lines.append(
        line(by_name(cluster, "checkout"), by_name(cluster, "checkout").pods[0], NOTICE, rng)
    )
    lines.append(
        line(by_name(cluster, "coredns"), by_name(cluster, "coredns").pods[0], CRITICAL, rng)
    )
    lines.append(orjson.dumps(samples.host_event(time.time(), rng)))
    lines += [raw for raw, _ in samples.MALFORMED]
    pipeline = Pipeline("run", env, topology_file(tmp_path, "3s", "15s"), tmp_path / "run.log")
    pipelines.append(pipeline)
    produce(broker.bootstrap, "falco", lines)

    expected = {pod for w in observed for pod in w.pods}
    wait_for(lambda: annotated(emulator) >= expected, timeout=60, what="annotations")
    assert annotated(emulator) == expected

    actions = [
        orjson.loads(v or b"") for _, v, _ in consume_all(broker.bootstrap, "streamproc.actions")
    ]
    assert sorted(a["name"] for a in actions) == sorted(w.name for w in observed)
    by_workload = {a["name"]: a for a in actions}
    assert by_workload["postgres"]["resolved_by"] == "owner-fields"
    assert by_workload["frontend"]["resolved_by"] == "api"

    dead = consume_all(broker.bootstrap, "streamproc.dlq")
    assert sorted(h["streamproc.reason"].decode() for _, _, h in dead) == sorted(
        reason for _, reason in samples.MALFORMED
    )
    assert {v for _, v, _ in dead} == {raw for raw, _ in samples.MALFORMED}

    assert (
        pipeline.metric("streamproc_detections_skipped_total", reason="no-kubernetes-context") == 1
    )
    assert pipeline.metric("streamproc_dead_letters_total", stage="ingest") == len(
        samples.MALFORMED
    )
    assert pipeline.metric("streamproc_actions_emitted_total") == len(observed)

    def all_released() -> bool:
        return not any(
            conventions.OBSERVED_LABEL in (p["metadata"].get("labels") or {})
            or conventions.EXPIRES_AT in (p["metadata"].get("annotations") or {})
            or "retina.sh" in (p["metadata"].get("annotations") or {})
            for p in emulator.list("Pod")
        )

    wait_for(all_released, timeout=60, what="every observation to expire")
    assert pipeline.stop() == 0

    audit = [
        orjson.loads(v or b"") for _, v, _ in consume_all(broker.bootstrap, "streamproc.audit")
    ]
    applied = {r["name"] for r in audit if r["result"] == "applied"}
    assert applied == {w.name for w in observed}
    assert {r["name"] for r in audit if r["result"] == "expired"} == expected


def test_a_windows_restart_mid_window_does_not_act_twice(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """After a crash in mid-window, a later detection in that window patches nothing again."""
    # A window that does not end during the test (epoch-aligned: pick a size with room left).
    # Sizes 300 s apart: 3600, 5400 and 7200 alone all end together at every 6th hour.
    window = next(s for s in range(3600, 7201, 300) if s - time.time() % s > 180)
    rng = random.Random(5)
    frontend = by_name(cluster, "frontend")
    topology = topology_file(tmp_path, f"{window}s", "3h")
    first = Pipeline("run", env, topology, tmp_path / "first.log")
    pipelines.append(first)
    produce(broker.bootstrap, "falco", [line(frontend, frontend.pods[0], WARNING, rng)])
    wait_for(
        lambda: annotated(emulator) == set(frontend.pods), timeout=60, what="first observation"
    )
    patches = patch_count(emulator, frontend.pods)
    first.kill()

    second = Pipeline("run", env, topology, tmp_path / "second.log")
    pipelines.append(second)
    produce(broker.bootstrap, "falco", [line(frontend, frontend.pods[1], CRITICAL, rng)])
    wait_for(
        lambda: second.metric("streamproc_tallies_published_total") >= 1,
        timeout=60,
        what="the restarted ingest stage to publish the second tally",
    )
    # Decided once the windows group has committed past every tally: the restarted stage may
    # also replay the first tally (its predecessor died before committing it).
    wait_for(
        lambda: group_lag(broker.bootstrap, Groups().windows, Topics().tallies) == 0,
        timeout=60,
        what="the restarted windows stage to decide on every tally",
    )
    # the windows stage's own decision, not the annotator's replay guard: its table came back
    # from the changelog, knew the window had acted, and emitted nothing
    assert second.metric("streamproc_actions_emitted_total") == 0
    assert second.metric("streamproc_detections_deduplicated_total") >= 1
    assert len(consume_all(broker.bootstrap, "streamproc.actions", idle_s=1.0)) == 1
    assert patch_count(emulator, frontend.pods) == patches
    assert annotated(emulator) == set(frontend.pods)


def test_an_annotator_restart_still_expires_what_it_annotated(
    tmp_path: Path,
    env: dict[str, str],
    broker: EmbeddedBroker,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    pipelines: list[Pipeline],
) -> None:
    """Killed right after annotating, a fresh annotator removes the annotations on time."""
    rng = random.Random(9)
    redis = by_name(cluster, "redis")
    topology = topology_file(tmp_path, "2s", "15s")
    first = Pipeline("run", env, topology, tmp_path / "first.log")
    pipelines.append(first)
    produce(broker.bootstrap, "falco", [line(redis, redis.pods[0], WARNING, rng)])
    wait_for(lambda: annotated(emulator) == set(redis.pods), timeout=60, what="observation")
    first.kill()
    assert annotated(emulator) == set(redis.pods)

    second = Pipeline("annotate", env, topology, tmp_path / "second.log")
    pipelines.append(second)
    wait_for(lambda: not annotated(emulator), timeout=40, what="expiry by the restarted annotator")
    assert second.metric("streamproc_observations_expired_total") == len(redis.pods)
