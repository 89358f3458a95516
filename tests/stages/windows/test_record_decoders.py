"""The decoders of streamproc's own records: anything on an internal topic is untrusted.

A record that is not a valid tally or action must come out as TallyError/ActionError (the
stage dead-letters it), never as another exception that would stop the stage and stop it
again after every restart.
"""

from __future__ import annotations

import contextlib
import dataclasses

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.model.actions import Action, ActionError
from streamproc.model.tallies import Tally, TallyError, start_tally
from streamproc.model.workloads import WorkloadRef
from tests.strategies import json_values

TALLY = start_tally(
    "retina-observe",
    WorkloadRef("shop", "Deployment", "frontend", "api"),
    1_796_000_000_000,
    1_796_000_000_123,
    "Read sensitive file untrusted",
    4,
    "frontend-7d4b9c8f5x-x2x7k",
    "4a3a5e4c-3c7e-4b5e-9c0a-1f9d2f4c6b7e",
)
ACTION = Action(
    id="retina-observe/shop/Deployment/frontend/1796000000000",
    topology="retina-observe",
    namespace="shop",
    kind="Deployment",
    name="frontend",
    resolved_by="api",
    pod="frontend-7d4b9c8f5x-x2x7k",
    window_start=1_796_000_000,
    window_end=1_796_000_060,
    rule="Read sensitive file untrusted",
    priority=4,
    count=3,
    first_append_ms=1_796_000_000_123,
)


def test_a_tally_and_an_action_survive_their_own_encoding() -> None:
    """What the stages write, they read back unchanged."""
    assert Tally.decode(TALLY.encode()) == TALLY
    assert Action.decode(ACTION.encode()) == ACTION


@pytest.mark.parametrize(
    "changes",
    [
        {"topology": []},  # a list where a name belongs: used to raise TypeError in windows
        {"count": True},  # a bool is not a count
        {"count": 0},
        {"count": "3"},
        {"window_start": 2**64},
        {"namespace": "../etc"},
        {"kind": "Secret"},
        {"priority": 9},
        {"uuids": ["x"] * 1000},
        {"unexpected": 1},
    ],
)
def test_a_hostile_tally_is_a_tally_error(changes: dict[str, object]) -> None:
    """Wrong types, bounds, names and fields: all refused with the field named."""
    doc = {**dataclasses.asdict(TALLY), **changes}
    with pytest.raises(TallyError) as caught:
        Tally.decode(_dumps(doc))
    assert str(caught.value).startswith("not a tally: ")


def _dumps(doc: dict[str, object]) -> bytes:
    """JSON, with integers of 2**63 and beyond written by hand (orjson refuses them)."""
    big = {
        k: v
        for k, v in doc.items()
        if isinstance(v, int) and not isinstance(v, bool) and v >= 2**63
    }
    raw = orjson.dumps({k: (0 if k in big else v) for k, v in doc.items()})
    for key, value in big.items():
        raw = raw.replace(f'"{key}":0'.encode(), f'"{key}":{value}'.encode())
    return raw


@pytest.mark.parametrize(
    "changes",
    [
        {"namespace": 5},  # used to raise TypeError inside the DNS-1123 check
        {"name": "Frontend!"},
        {"pod": "a/b"},
        {"window_end": 1},  # before the window's start
        {"count": True},
        {"priority": 99},
    ],
)
def test_a_hostile_action_is_an_action_error(changes: dict[str, object]) -> None:
    """The annotator only ever sees actions whose every field is what it claims."""
    doc = {**dataclasses.asdict(ACTION), **changes}
    with pytest.raises(ActionError):
        Action.decode(_dumps(doc))


def test_fields_older_versions_wrote_are_ignored_not_refused() -> None:
    """A rolling upgrade: actions in flight still carry ttl/annotations/scope/dry_run."""
    legacy = {
        **dataclasses.asdict(ACTION),
        "ttl": 900.0,
        "annotations": {"retina.sh": "observe"},
        "scope": "workload",
        "dry_run": False,
    }
    assert Action.decode(_dumps(legacy)) == ACTION


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"null", b'"x"', b"{}"])
def test_anything_that_is_not_an_object_of_the_right_shape_is_refused(raw: bytes) -> None:
    """Both decoders refuse with their own error."""
    with pytest.raises(TallyError):
        Tally.decode(raw)
    with pytest.raises(ActionError):
        Action.decode(raw)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(dataclasses.asdict(TALLY))), json_values))
def test_any_json_object_is_a_tally_or_a_tally_error(changes: dict[str, object]) -> None:
    """The property the windows stage relies on."""
    doc = {**dataclasses.asdict(TALLY), **changes}
    with contextlib.suppress(TallyError):
        Tally.decode(orjson.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(dataclasses.asdict(ACTION))), json_values))
def test_any_json_object_is_an_action_or_an_action_error(changes: dict[str, object]) -> None:
    """The property the annotator relies on."""
    doc = {**dataclasses.asdict(ACTION), **changes}
    with contextlib.suppress(ActionError):
        Action.decode(orjson.dumps(doc))
