"""The decoder of streamproc's marks on pods: what it writes passes, anything else is refused."""

from __future__ import annotations

import pytest

from streamproc.cluster import marking
from streamproc.model import conventions, marks
from streamproc.model.topologies import Topology
from tests.conftest import topology

NOW = 1_800_000_000.0
LADDER = topology(ttl=600, escalation={"ttls": ["15m", "1h", "6h"], "forgetAfter": "7d"})
POLICY = marks.Policy.of([LADDER])
ACTION = "retina-observe/shop/Deployment/frontend/1799999990000"


def written(**changes: str) -> dict[str, str]:
    """The annotations streamproc writes at level 3 of 3, with ``changes``."""
    return {
        conventions.EXPIRES_AT: conventions.format_time(NOW + 6 * 3600),
        conventions.TOPOLOGY: "retina-observe",
        conventions.RULE: "Read sensitive file untrusted",
        conventions.ACTION_ID: ACTION,
        conventions.OWNED_KEYS: "retina.sh",
        conventions.LEVEL: "3/3",
        "retina.sh": "observe",
        **changes,
    }


LABELLED = {conventions.OBSERVED_LABEL: "true"}


def decode(annotations: dict[str, str], labels: dict[str, str] = LABELLED) -> marks.Read:
    return marks.decode(annotations, labels, namespace="shop", now=NOW, policy=POLICY)


def test_what_streamproc_writes_at_the_top_of_the_ladder_passes() -> None:
    """The longest TTL the ladder writes is within the bound; every field comes back."""
    found = decode(written())
    assert isinstance(found, marks.Marks)
    assert found.until == NOW + 6 * 3600
    assert found.owned == {"retina.sh"}
    assert found.workload == ("shop", "Deployment", "frontend")
    assert found.labelled


def test_metric_filters_come_back_in_the_documented_order() -> None:
    """``metric-filters: dns,flow`` reads as (flow, dns); absent reads as ()."""
    found = decode(written(**{conventions.METRIC_FILTERS: "dns,flow"}))
    assert isinstance(found, marks.Marks)
    assert found.metric_filters == ("flow", "dns")
    plain = decode(written())
    assert isinstance(plain, marks.Marks)
    assert plain.metric_filters == ()


def test_a_pod_without_marks_has_none() -> None:
    """No label and no bookkeeping: nothing to read."""
    assert decode({"retina.sh": "observe"}, {}) is None


def test_the_policy_bound_is_the_ladders_longest_ttl_plus_the_skew_margin() -> None:
    """An expiry within the skew margin passes; just beyond it is refused."""
    edge = NOW + 6 * 3600 + marks.SKEW_S
    assert isinstance(decode(written(**{conventions.EXPIRES_AT: _at(edge)})), marks.Marks)
    beyond = decode(written(**{conventions.EXPIRES_AT: _at(edge + 1)}))
    assert isinstance(beyond, marks.Refusal)
    assert beyond.reason == "beyond-policy"


def _at(epoch: float) -> str:
    return conventions.format_time(epoch)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({conventions.EXPIRES_AT: "9999-12-31T23:59:59-14:00"}, "beyond-policy"),
        ({conventions.EXPIRES_AT: "9999-12-31T23:59:59Z"}, "beyond-policy"),
        ({conventions.EXPIRES_AT: "0001-01-01T00:00:00Z"}, "beyond-policy"),
        ({conventions.EXPIRES_AT: "tomorrow"}, "malformed"),
        ({conventions.EXPIRES_AT: "2027-01-15"}, "malformed"),
        ({conventions.EXPIRES_AT: "2027-13-45T99:00:00Z"}, "malformed"),
        ({conventions.EXPIRES_AT: ""}, "malformed"),
        ({conventions.TOPOLOGY: "Not_A_Label"}, "malformed"),
        ({conventions.LEVEL: "7/3"}, "malformed"),
        ({conventions.LEVEL: "99/99"}, "malformed"),
        ({conventions.RULE: "x" * 254}, "malformed"),
        ({conventions.ACTION_ID: "line\nbreak"}, "malformed"),
        ({conventions.OWNED_KEYS: "retina.sh,bad key"}, "malformed"),
        ({conventions.OWNED_KEYS: ",".join(f"k{i}" for i in range(100))}, "malformed"),
        ({conventions.ACTION_ID: "retina-observe/payments/Deployment/api/1"}, "foreign"),
        ({conventions.ACTION_ID: "other/shop/Deployment/frontend/1"}, "foreign"),
        ({conventions.ACTION_ID: "a1"}, "foreign"),
        ({conventions.OWNED_KEYS: "retina.sh,team.example.com/owner"}, "foreign"),
        ({conventions.METRIC_FILTERS: ""}, "malformed"),
        ({conventions.METRIC_FILTERS: "dns,dns"}, "malformed"),
        ({conventions.METRIC_FILTERS: "dns,http"}, "malformed"),
        ({conventions.METRIC_FILTERS: "dns "}, "malformed"),
    ],
)
def test_marks_streamproc_never_writes_are_refused_with_a_reason(
    changes: dict[str, str], reason: marks.Reason
) -> None:
    """Each kind of edit is refused, with the reason the metric counts."""
    found = decode(written(**changes))
    assert isinstance(found, marks.Refusal)
    assert found.reason == reason
    assert found.labelled


def test_a_forged_expiry_without_the_label_is_refused_too() -> None:
    """Bookkeeping keys without the label are read (and refused) all the same."""
    found = decode({conventions.EXPIRES_AT: "9999-12-31T23:59:59-14:00"}, {})
    assert isinstance(found, marks.Refusal)
    assert not found.labelled


def test_the_label_without_an_expiry_is_refused() -> None:
    """The observed label alone is no observation streamproc wrote."""
    found = decode({}, LABELLED)
    assert isinstance(found, marks.Refusal)
    assert found.reason == "malformed"


def test_values_of_any_json_type_are_refused_not_raised() -> None:
    """A mark that is not a string (a hand-made object) is a refusal, never an exception."""
    for value in (None, 3, 1.5, ["x"], {"a": 1}, True):
        found = marks.decode(
            {**written(), conventions.EXPIRES_AT: value},  # type: ignore[dict-item]
            LABELLED,
            namespace="shop",
            now=NOW,
            policy=POLICY,
        )
        assert isinstance(found, marks.Refusal)


def test_an_unknown_topology_is_bounded_by_the_longest_ttl_any_loaded_one_writes() -> None:
    """A topology no longer loaded: its marks stand while within every ladder's bound."""
    other = written(**{conventions.TOPOLOGY: "gone", conventions.ACTION_ID: "gone/shop/Pod/p/1"})
    assert isinstance(decode(other), marks.Marks)
    beyond = decode({**other, conventions.EXPIRES_AT: _at(NOW + 7 * 3600)})
    assert isinstance(beyond, marks.Refusal)


def test_without_topologies_only_the_generic_ceiling_bounds_the_expiry() -> None:
    """``status`` reads marks with no topology loaded: a year is fine, year 10000 is not."""
    lenient = marks.Policy()
    year = {**written(), conventions.EXPIRES_AT: _at(NOW + 300 * 86400)}
    assert isinstance(
        marks.decode(year, LABELLED, namespace="shop", now=NOW, policy=lenient), marks.Marks
    )
    forged = {**written(), conventions.EXPIRES_AT: "9999-12-31T23:59:59-14:00"}
    assert isinstance(
        marks.decode(forged, LABELLED, namespace="shop", now=NOW, policy=lenient), marks.Refusal
    )


def test_a_namespace_object_is_its_own_namespace() -> None:
    """scope: namespace marks the Namespace object; its action id names that namespace."""
    obj = {"metadata": {"name": "shop", "annotations": written(), "labels": LABELLED}}
    assert isinstance(marking.read(obj, now=NOW, policy=POLICY), marks.Marks)


def test_a_policy_knows_each_topologys_ladder() -> None:
    """The bound of a ladder is its longest step, of a plain topology its ttl."""
    plain: Topology = topology(ttl=600, name="plain")
    policy = marks.Policy.of([LADDER, plain])
    assert policy.longest("retina-observe") == 6 * 3600
    assert policy.longest("plain") == 600
    assert policy.longest("unknown") == 6 * 3600


def test_the_cluster_cache_keeps_no_oversized_mark_and_the_decoder_refuses_it() -> None:
    """A 200 KiB rule on a pod costs the cache a placeholder, which reads as malformed."""
    from streamproc.cluster.cache import PodInfo

    pod = {
        "metadata": {
            "namespace": "shop",
            "name": "frontend-1",
            "labels": LABELLED,
            "annotations": written(**{conventions.RULE: "x" * 200_000}),
        }
    }
    info = PodInfo.of(pod)
    assert len(info.marks[conventions.RULE]) < 100
    found = marking.read(info.object(), now=NOW, policy=POLICY)
    assert isinstance(found, marks.Refusal)
    assert found.reason == "malformed"
