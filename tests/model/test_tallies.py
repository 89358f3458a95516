"""``release --forget``'s records are built in the model, not in the command line."""

from __future__ import annotations

import pytest

from streamproc.model import tallies
from tests.conftest import topology


def test_forgetting_asks_each_laddered_topology_and_only_those() -> None:
    """A topology without an escalation ladder keeps no history: no record for it."""
    laddered = topology(name="ladder", escalation={"ttls": ["15m", "1h"]})
    plain = topology(name="plain")
    records = tallies.forgetting([laddered, plain], "shop", "Deployment", "frontend", "eu")
    assert [(r.topology, r.forget, r.cluster) for r in records] == [("ladder", True, "eu")]
    assert records[0].kind == "Deployment"


def test_forgetting_a_kind_streamproc_does_not_observe_is_refused() -> None:
    """The kind comes from a person's command line: an unknown one is named, nothing built."""
    with pytest.raises(ValueError, match="'ReplicaSet' is not a workload kind"):
        tallies.forgetting([topology()], "shop", "ReplicaSet", "frontend")
