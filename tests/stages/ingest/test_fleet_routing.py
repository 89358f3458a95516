"""Whose detection is whose: one cluster unless the deployment names a fleet, not the payload."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab import samples
from streamproc.lab.cluster import sample_cluster
from streamproc.model import events, topologies
from streamproc.model.fleets import Fleet, Placement, Sightings
from streamproc.model.topologies import Topology
from streamproc.running import stage_topics
from streamproc.settings import Settings
from streamproc.stages.ingest import Ingestor

ROOT = Path(__file__).resolve().parents[3]
ONE = Fleet()
FLEET = Fleet("a", frozenset({"a", "b"}))


@dataclass
class Record:
    value: bytes
    timestamp: int
    topic: str = "falco"
    key: bytes | None = None
    partition: int = 0
    offset: int = 0


def ingestor(settings: Settings) -> Ingestor:
    return Ingestor(
        settings,
        topologies.load_path(ROOT / "topologies"),
        WorkloadResolver(None, cache_size=100, ttl_s=60),
    )


def detection(cluster: object = None, workload: str = "frontend") -> Record:
    """A Falcosidekick payload; ``cluster`` as ``customfields: cluster:...`` sets it."""
    found = next(w for w in sample_cluster().workloads if w.name == workload)
    doc = samples.detection(found, found.pods[0], samples.RULES[0], 0, random.Random(1))
    if cluster is not None:
        doc["output_fields"]["cluster"] = cluster
    return Record(orjson.dumps(doc), 1_000)


@pytest.mark.parametrize(
    ("named", "placed"),
    [
        ("", ("", "own")),
        ("prod-eu", ("", "ignored")),
        ("Not a cluster!", ("", "ignored")),
        (events.NOT_A_NAME, ("", "ignored")),
    ],
)
def test_one_cluster_keeps_every_detection_whatever_its_cluster_field_says(
    named: str, placed: tuple[str, Placement]
) -> None:
    """Without a declared fleet the field routes nothing: the detection is this cluster's."""
    assert ONE.place(named) == placed


@pytest.mark.parametrize(
    ("named", "placed"),
    [
        ("", ("a", "own")),
        ("a", ("a", "own")),
        ("b", ("b", "member")),
        ("c", ("", "unknown-cluster")),
        ("Not a cluster!", ("", "invalid-cluster")),
        (events.NOT_A_NAME, ("", "invalid-cluster")),
    ],
)
def test_a_fleet_routes_its_members_and_refuses_every_other_name(
    named: str, placed: tuple[str, Placement]
) -> None:
    """Members are theirs, no field is --cluster's, any other name is refused with its reason."""
    assert FLEET.place(named) == placed


def test_a_fleet_without_its_own_cluster_refuses_detections_that_name_none() -> None:
    """A central deployment named no --cluster: a detection naming no cluster belongs nowhere."""
    assert Fleet("", frozenset({"a", "b"})).place("") == ("", "unknown-cluster")


def test_the_fleet_is_every_cluster_the_three_knobs_name() -> None:
    """--cluster, --clusters and --cluster-contexts all name members; none of them: one cluster."""
    assert Settings().fleet == frozenset()
    named = Settings(cluster="a", clusters="b, c,", cluster_contexts="d=ctx-d")
    assert Fleet.of(named) == Fleet("a", frozenset({"a", "b", "c", "d"}))
    assert Fleet.of(named).clusters == ("a", "b", "c", "d")
    assert ONE.clusters == ("",)


def test_only_known_clusters_are_served() -> None:
    """Records from our own topics are checked too: one cluster serves only "", a fleet its own."""
    assert ONE.serves("")
    assert not ONE.serves("prod-eu")
    assert FLEET.serves("b")
    assert not FLEET.serves("c")
    assert not FLEET.serves("")


def test_the_windows_stage_creates_the_actions_topics_of_the_declared_clusters_only() -> None:
    """One cluster: streamproc.actions; a fleet: one topic per member, none for anything else."""
    loaded = topologies.load_path(ROOT / "topologies")
    assert "streamproc.actions" in stage_topics(Settings(), loaded, ["windows"])
    fleet = stage_topics(Settings(cluster="a", clusters="b"), loaded, ["windows"])
    assert [t for t in fleet if t.startswith("streamproc.actions")] == [
        "streamproc.actions.a",
        "streamproc.actions.b",
    ]


def test_sightings_report_each_name_once_and_stay_bounded() -> None:
    """A flood of made-up names cannot grow what is remembered to report them once."""
    seen = Sightings()
    assert seen.first("prod-eu")
    assert not seen.first("prod-eu")
    firsts = sum(seen.first(f"c{i}") for i in range(5 * Sightings.LIMIT))
    assert firsts == Sightings.LIMIT - 1


async def test_one_cluster_tallies_detections_that_name_a_cluster_as_its_own() -> None:
    """Falcosidekick's customfields cluster:prod-eu: tallied for this cluster, the name counted."""
    stage = ingestor(Settings())
    result = await stage.process([detection("prod-eu"), detection("prod-eu"), detection()])
    [tally] = result.tallies.values()
    assert (tally.cluster, tally.name, tally.count) == ("", "frontend", 3)
    assert tally.workload_key == "retina-observe/shop/Deployment/frontend"
    assert result.fields == {("prod-eu", "ignored"): 2}
    assert result.dead == []


async def test_a_value_that_is_no_name_is_ignored_in_one_cluster_and_refused_in_a_fleet() -> None:
    """A number or an object in the cluster field: its own in one cluster, invalid in a fleet."""
    records = [detection(7), detection({"name": "x"}), detection("x" * 64)]
    single = await ingestor(Settings()).process(records)
    assert sum(t.count for t in single.tallies.values()) == 3
    fleet = await ingestor(Settings(cluster="a")).process(records)
    assert fleet.tallies == {}
    assert [reason for _, reason, _ in fleet.dead] == ["invalid-cluster"] * 3


async def test_a_fleet_dead_letters_detections_of_clusters_it_does_not_know() -> None:
    """Named members are tallied as theirs; an unknown name is dead-lettered, saying the fix."""
    stage = ingestor(Settings(cluster="a", clusters="b"))
    result = await stage.process(
        [detection("b", "api"), detection(None, "checkout"), detection("c", "redis")]
    )
    assert sorted((t.cluster, t.name) for t in result.tallies.values()) == [
        ("a", "checkout"),
        ("b", "api"),
    ]
    [(record, reason, detail)] = result.dead
    assert orjson.loads(record.value)["output_fields"]["cluster"] == "c"
    assert reason == "unknown-cluster"
    assert "--clusters" in detail
    assert result.fields == {("c", "unknown-cluster"): 1}
    assert sum(result.consumed.values()) == 3


def test_a_topology_matching_clusters_the_deployment_does_not_route_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """match.clusters in one cluster (or beyond the fleet) can never match: say so at start."""
    matching = Topology.model_validate(
        {
            "apiVersion": "streamproc/v1",
            "kind": "Topology",
            "metadata": {"name": "eu-only"},
            "spec": {"match": {"clusters": ["prod-eu"]}, "action": {"ttl": "10m"}},
        }
    )
    with caplog.at_level(logging.WARNING, "streamproc.ingest"):
        Ingestor(Settings(), [matching], WorkloadResolver(None, cache_size=1, ttl_s=1))
        Ingestor(
            Settings(clusters="prod-eu"), [matching], WorkloadResolver(None, cache_size=1, ttl_s=1)
        )
    [warning] = caplog.messages
    assert "eu-only matches clusters prod-eu" in warning
    assert "one, unnamed" in warning
