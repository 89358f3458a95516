"""The windows stage's own decisions, without Faust: when a window acts, and what it emits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.model.qualifying import action_for, decide
from streamproc.model.tallies import start_tally
from streamproc.model.topologies import Topology
from streamproc.model.workloads import WorkloadRef
from streamproc.settings import Settings
from streamproc.stages.windows import build_app

TOPOLOGY = Topology.model_validate(
    {
        "apiVersion": "streamproc/v1",
        "kind": "Topology",
        "metadata": {"name": "retina-observe"},
        "spec": {"window": {"size": "60s", "threshold": 3}, "action": {"ttl": "15m"}},
    }
)
TALLY = start_tally(
    "retina-observe",
    WorkloadRef("shop", "Deployment", "frontend", "api"),
    1_796_000_040_000,
    1_796_000_041_500,
    "Read sensitive file untrusted",
    4,
    "frontend-7d4b9c8f5x-x2x7k",
    "4a3a5e4c-3c7e-4b5e-9c0a-1f9d2f4c6b7e",
)


def test_a_window_below_its_threshold_only_counts() -> None:
    """Two of three: no action, nothing deduplicated."""
    state, act, dedup = decide([], 2, threshold=3)
    assert (state, act, dedup) == ([2, 0], False, 0)


def test_the_tally_that_reaches_the_threshold_acts_once_and_the_excess_is_deduplicated() -> None:
    """2 then 4 with threshold 3: act on the second; 3 of its 4 went beyond the threshold."""
    state, act, dedup = decide([2, 0], 4, threshold=3)
    assert (state, act, dedup) == ([6, 1], True, 3)


def test_after_acting_every_further_detection_is_deduplicated() -> None:
    """The window already acted: count on, never act again."""
    state, act, dedup = decide([6, 1], 5, threshold=3)
    assert (state, act, dedup) == ([11, 1], False, 5)


@given(st.lists(st.integers(min_value=1, max_value=1000), max_size=30), st.integers(1, 500))
def test_a_window_acts_at_most_once_and_counts_every_detection(
    counts: list[int], threshold: int
) -> None:
    """Whatever the tallies, at most one action; acted iff the total reached the threshold."""
    state: list[int] = []
    actions = deduplicated = 0
    for count in counts:
        state, act, dedup = decide(state, count, threshold)
        actions += act
        deduplicated += dedup
    total = sum(counts)
    assert actions == (1 if total >= threshold else 0)
    assert (state[0] if state else 0) == total
    assert deduplicated == (total - threshold if total >= threshold else 0)


def test_the_action_names_the_window_and_is_the_same_when_replayed() -> None:
    """The id is topology/workload/window: a replayed tally gives an identical action."""
    action = action_for(TOPOLOGY, TALLY, 3)
    assert action == action_for(TOPOLOGY, TALLY, 3)
    assert action.id == f"{TALLY.workload_key}/{TALLY.window_start}"
    assert (action.window_start, action.window_end) == (1_796_000_040, 1_796_000_100)
    assert (action.namespace, action.kind, action.name) == ("shop", "Deployment", "frontend")
    assert (action.rule, action.priority, action.count) == (TALLY.rule, 4, 3)
    assert action.uuids == TALLY.uuids
    assert action.first_append_ms == TALLY.first_append_ms


@pytest.mark.parametrize("field", ["ttl", "annotations", "scope", "dry_run"])
def test_the_action_carries_nothing_the_annotator_takes_from_its_own_topology(field: str) -> None:
    """What to write and for how long is the annotator's topology's, so the record lacks it."""
    assert field not in {f.name for f in dataclasses.fields(action_for(TOPOLOGY, TALLY, 3))}


def test_every_stage_waits_the_same_rebalance_timeout(tmp_path: Path) -> None:
    """Faust's (default 60 s) follows the session timeout, as the aiokafka stages' does."""
    settings = Settings(session_timeout_s=6.0)
    app = build_app(settings, [TOPOLOGY], str(tmp_path))
    assert app.conf.broker_rebalance_timeout == settings.rebalance_timeout_s == 10
