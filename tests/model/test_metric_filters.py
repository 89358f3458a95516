"""The ContainerNetworkMetric projection (pure) and the topology fields that choose a backend."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.cli import options
from streamproc.doctor import diagnosing
from streamproc.model import metric_filters as projection
from streamproc.model import topologies
from streamproc.model.topologies import Backend, TopologyError
from streamproc.settings import OBSERVATION_BACKENDS, Settings
from tests.conftest import topology

FRONTEND = ("shop", "Deployment", "frontend")
REDIS = ("shop", "StatefulSet", "redis")
#: a user's spec as the AKS docs' examples write one (MicrosoftDocs/azure-aks-docs fb060abe)
USERS: dict[str, Any] = {
    "filters": [
        {"metric": "dns", "excludeFilters": [{"from": {"namespacedPod": ["kube-system/coredns"]}}]},
        {
            "metric": "tcp",
            "includeFilters": [
                {"protocol": ["tcp"]},
                {"from": {"labelSelector": {"matchLabels": {"environment": "production"}}}},
            ],
        },
        {"metric": "flow", "excludeFilters": [{"from": {"namespacedPod": ["default/debug-*"]}}]},
        {"metric": "drop", "includeFilters": [{"reason": ["Policy denied", "Invalid"]}]},
    ]
}


def seen(*pods: str, metrics: tuple[str, ...] = topologies.METRICS) -> projection.Observed:
    return projection.Observed(frozenset(pods), frozenset(metrics))  # type: ignore[arg-type]


def project(spec: object, observed: dict[projection.Workload, projection.Observed]) -> Any:
    done = projection.project(spec, observed)
    assert done is not None
    return done


def test_an_empty_cluster_gets_one_entry_per_metric_with_a_from_and_a_to_filter() -> None:
    """Per metric, two include filters per workload, named after it, listing its pods."""
    done = project(None, {FRONTEND: seen("b", "a")})
    assert [e["metric"] for e in done.spec["filters"]] == ["flow", "drop", "tcp", "dns"]
    assert done.spec["filters"][0]["includeFilters"] == [
        {
            "name": "streamproc.io.shop.Deployment.frontend.from",
            "from": {"namespacedPod": ["shop/a", "shop/b"]},
        },
        {
            "name": "streamproc.io.shop.Deployment.frontend.to",
            "to": {"namespacedPod": ["shop/a", "shop/b"]},
        },
    ]
    assert (done.pods, done.left_out, done.any_filters) == (2, 0, True)


def test_the_users_entries_survive_adding_and_removing_object_for_object() -> None:
    """After open and end, the spec equals the user's, key order and all."""
    before = copy.deepcopy(USERS)
    during = project(USERS, {FRONTEND: seen("a"), REDIS: seen("redis-0", metrics=("dns",))})
    assert before == USERS  # the input is never mutated
    entries = during.spec["filters"]
    assert [e["metric"] for e in entries] == ["dns", "tcp", "flow", "drop"]
    assert entries[1]["includeFilters"][:2] == USERS["filters"][1]["includeFilters"]
    assert entries[0]["excludeFilters"] is USERS["filters"][0]["excludeFilters"]
    dns = [f["name"] for f in entries[0]["includeFilters"]]
    assert dns == [
        "streamproc.io.shop.Deployment.frontend.from",
        "streamproc.io.shop.Deployment.frontend.to",
        "streamproc.io.shop.StatefulSet.redis.from",
        "streamproc.io.shop.StatefulSet.redis.to",
    ]
    after = project(during.spec, {})
    assert after.spec == before
    assert [list(e) for e in after.spec["filters"]] == [list(e) for e in before["filters"]]
    assert not after.pods


def test_an_entry_streamproc_created_goes_when_its_filters_go() -> None:
    """An entry holding only streamproc's filters is dropped (it needs at least one filter)."""
    during = project({"filters": USERS["filters"][:1]}, {FRONTEND: seen("a")})
    assert len(during.spec["filters"]) == 4
    after = project(during.spec, {})
    assert after.spec == {"filters": USERS["filters"][:1]}
    emptied = project(project(None, {FRONTEND: seen("a")}).spec, {})
    assert emptied.spec == {"filters": []}
    assert not emptied.any_filters


def test_duplicates_of_streamproc_filters_in_later_entries_are_cleaned_up() -> None:
    """Two entries of one metric (a race, a person): streamproc's filters end up in the first."""
    ours = {"name": "streamproc.io.shop.Pod.x.from", "from": {"namespacedPod": ["shop/x"]}}
    spec = {
        "filters": [
            {"metric": "flow", "includeFilters": [{"protocol": ["tcp"]}]},
            {"metric": "flow", "includeFilters": [ours]},
        ]
    }
    done = project(spec, {})
    assert done.spec == {"filters": [spec["filters"][0]]}


def test_a_spec_streamproc_cannot_read_is_left_alone() -> None:
    """filters that is not a list, or a spec that is not a mapping: nothing to write."""
    assert projection.project({"filters": {"metric": "dns"}}, {FRONTEND: seen("a")}) is None
    assert projection.project(["x"], {FRONTEND: seen("a")}) is None


def test_the_pods_named_are_bounded() -> None:
    """Beyond MAX_PODS pods, the rest are left out and counted, whole workloads first."""
    many = {("ns", "Deployment", f"w{i:04}"): seen(f"w{i}-a", f"w{i}-b") for i in range(1500)}
    done = project(None, many)
    assert done.pods == projection.MAX_PODS
    assert done.left_out == 3000 - projection.MAX_PODS
    assert len(projection.named_pods(done.spec)) == projection.MAX_PODS


def test_filters_of_other_tools_are_not_streamproc_s() -> None:
    """Only a name under streamproc.io. (or the first cut's streamproc.io/) is ours."""
    assert projection.ours({"name": "streamproc.io.a.Pod.b.from"})
    assert projection.ours({"name": "streamproc.io/a/Pod/b/from"})
    assert "/" not in projection.filter_name(("a", "Deployment", "b.c"), "to")
    for other in ({"name": "team/x"}, {"name": 3}, {}, "streamproc.io/x", None):
        assert not projection.ours(other)


@given(
    entries=st.lists(
        st.dictionaries(
            st.sampled_from(["metric", "includeFilters", "excludeFilters", "x"]),
            st.one_of(
                st.sampled_from(["flow", "dns", "tcp", "drop", "other"]),
                st.lists(st.dictionaries(st.sampled_from(["name", "from"]), st.text(max_size=3))),
            ),
        ),
        max_size=5,
    )
)
def test_any_valid_spec_round_trips_to_itself_once_nothing_is_observed(
    entries: list[Any],
) -> None:
    """Whatever valid spec the user wrote (each entry with a filter) comes back from open+end."""
    spec = {"filters": [e for e in entries if _valid(e) and not _mentions_ours(e)]}
    during = project(spec, {FRONTEND: seen("a")})
    assert project(during.spec, {}).spec == spec


def _valid(entry: dict[str, Any]) -> bool:
    """The docs' rule: an entry has at least one include or exclude filter.

    An empty ``includeFilters: []`` beside exclude filters means what no key means, and the round
    trip may drop it (streamproc cannot tell it from the list it added itself).
    """
    if entry.get("includeFilters") == []:
        return False
    return any(
        isinstance(entry.get(k), list) and entry[k] for k in ("includeFilters", "excludeFilters")
    )


def _mentions_ours(entry: dict[str, Any]) -> bool:
    return any(
        projection.ours(f)
        for key in ("includeFilters", "excludeFilters")
        for f in (entry.get(key) if isinstance(entry.get(key), list) else [])
    )


# ---- the topology fields -------------------------------------------------------------------

GOOD = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: t1
spec:
  action:
    ttl: 15m
    backend: acns-metric-filters
    metrics: [flow, dns]
"""


def test_the_backends_are_the_settings_backends() -> None:
    """The topology's backend values and --observation-backend's are the same list."""
    assert get_args(Backend) == OBSERVATION_BACKENDS


def test_an_acns_topology_may_omit_or_empty_annotate(tmp_path: Path) -> None:
    """backend: acns-metric-filters writes no annotation, so annotate may be empty."""
    path = tmp_path / "t.yaml"
    path.write_text(GOOD + "    annotate: {}\n")
    action = topologies.load_file(path).spec.action
    assert (action.backend, action.metrics) == ("acns-metric-filters", ("flow", "dns"))
    assert action.pod_annotations() == {}


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("acns-metric-filters", "acns-metric-filter", 8, "spec.action.backend"),
        ("acns-metric-filters", "hubble", 8, "spec.action.backend"),
        ("[flow, dns]", "[flow, http]", 9, "spec.action.metrics.1"),
        ("[flow, dns]", "[]", 9, "spec.action.metrics"),
        ("[flow, dns]", "[dns, dns]", 9, "spec.action.metrics"),
        (
            "backend: acns-metric-filters",
            "backend: retina-annotation\n    annotate: {}",
            7,
            "spec.action",
        ),
        ("ttl: 15m", "ttl: 15m\n    scope: namespace", 7, "spec.action"),
    ],
)
def test_a_bad_backend_field_is_refused_with_file_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str
) -> None:
    """A misspelt backend or metric stops the load, naming file, line and field."""
    path = tmp_path / "t.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(TopologyError) as caught:
        topologies.load_file(path)
    assert (caught.value.field, caught.value.line) == (field, line)
    assert f"{path}:{line}: {field}:" in str(caught.value)


def test_the_deployments_backend_settles_a_topology_without_one(tmp_path: Path) -> None:
    """resolve_backend fills in --observation-backend; a topology's own choice wins."""
    path = tmp_path / "t.yaml"
    path.write_text(GOOD.replace("    backend: acns-metric-filters\n", ""))
    plain = topologies.load_file(path)
    assert plain.spec.action.backend is None
    settled = topologies.resolve_backend(plain, "acns-metric-filters")
    assert settled.spec.action.backend == "acns-metric-filters"
    assert settled.spec.action.pod_annotations() == {}
    assert topologies.resolve_backend(plain, "retina-annotation").spec.action.pod_annotations() == {
        "retina.sh": "observe"
    }


def test_a_namespace_scope_under_the_deployments_acns_default_is_refused() -> None:
    """Valid on its own, refused once the default backend settles it: naming topology and flag."""

    scoped = topology(scope="namespace", name="ns-wide")
    assert topologies.resolve_backend(scoped, "retina-annotation").spec.action.backend == (
        "retina-annotation"
    )
    with pytest.raises(TopologyError) as refused:
        topologies.resolve_backend(scoped, "acns-metric-filters")
    text = str(refused.value)
    assert text.startswith("topology ns-wide: spec.action: under the deployment's")
    assert "--observation-backend acns-metric-filters" in text
    assert "scope: namespace" in text
    [failed] = diagnosing.backend_checks([scoped], "acns-metric-filters")
    assert failed.status == "fail"
    assert "ns-wide" in failed.detail
    assert not diagnosing.backend_checks([scoped], "retina-annotation")


def test_run_refuses_such_a_topology_at_load(tmp_path: Path) -> None:
    """The command's loader says 'invalid topology: ...' with the topology, no traceback."""

    (tmp_path / "ns.yaml").write_text(
        "apiVersion: streamproc/v1\nkind: Topology\nmetadata: {name: ns-wide}\n"
        "spec:\n  window: {size: 10s}\n  action:\n    scope: namespace\n"
        "    annotate: {retina.sh: observe}\n",
        encoding="utf-8",
    )
    settings = Settings(topology_path=tmp_path, observation_backend="acns-metric-filters")
    with pytest.raises(click.ClickException) as refused:
        options.load_topologies(settings)
    assert refused.value.message.startswith("invalid topology: topology ns-wide: spec.action:")
    assert options.load_topologies(Settings(topology_path=tmp_path))


A, B = ("shop", "Deployment", "a"), ("shop", "Deployment", "b")


def test_named_pods_reads_no_string_as_a_list_and_no_empty_name() -> None:
    """namespacedPod: "shop/a" (a string, not a list) names no pod, not "s", "h", ...; "" none."""
    spec = {
        "filters": [
            {
                "metric": "flow",
                "includeFilters": [
                    {
                        "name": "streamproc.io/shop/Deployment/a/from",
                        "from": {"namespacedPod": "shop/a"},
                    },
                    {
                        "name": "streamproc.io/shop/Deployment/b/to",
                        "to": {"namespacedPod": ["", "shop/b"]},
                    },
                ],
            }
        ]
    }
    assert projection.named_pods(spec) == {"shop/b"}


def test_an_empty_pod_name_never_becomes_a_whole_namespace_pattern() -> None:
    """A pod read without a name is left out: no "shop/" entry, and no filter for it alone."""
    workload = ("shop", "Deployment", "a")
    assert projection.merge([(workload, "", ("flow",))]) == {}
    merged = projection.merge([(workload, "", ("flow",)), (workload, "a-1", ("flow",))])
    assert merged[workload].pods == frozenset({"a-1"})


def test_filters_named_the_first_cuts_way_are_replaced_by_the_new_names() -> None:
    """A streamproc.io/… filter left by the first cut is streamproc's: replaced, not kept."""
    workload = ("shop", "Deployment", "a")
    old = {"name": "streamproc.io/shop/Deployment/a/from", "from": {"namespacedPod": ["shop/a-1"]}}
    spec = {"filters": [{"metric": "flow", "includeFilters": [old]}]}
    observed = {workload: projection.Observed(frozenset({"a-1"}), frozenset({"flow"}))}
    done = projection.project(spec, observed)
    assert done is not None
    names = [f["name"] for f in done.spec["filters"][0]["includeFilters"]]
    assert names == [
        projection.filter_name(workload, "from"),
        projection.filter_name(workload, "to"),
    ]
