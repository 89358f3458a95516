"""Retina's rules, judged from its objects alone: versions, config, overrides, budgets, captures."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.doctor import retina
from streamproc.doctor.checks import Check
from streamproc.lab.cluster import ClusterBuilder


def _objects(**kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(agent DaemonSet, its ConfigMap) as the sample cluster's Retina install has them."""
    builder = ClusterBuilder()
    builder.retina(**kwargs)
    by_kind = {o["kind"]: o for o in builder.objects}
    return by_kind["DaemonSet"], by_kind["ConfigMap"]


def _statuses(found: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in found}


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("ghcr.io/microsoft/retina/retina-agent:v1.2.6", (1, 2, 6)),
        ("mcr.microsoft.com/containernetworking/retina-agent:v1.2.0-linux-amd64", (1, 2, 0)),
        ("registry:5000/retina-agent:1.10.3", (1, 10, 3)),
        ("ghcr.io/microsoft/retina/retina-agent:latest", None),
        ("ghcr.io/microsoft/retina/retina-agent@sha256:" + "a" * 64, None),
        ("registry:5000/retina-agent", None),
    ],
)
def test_the_agent_version_is_read_from_its_image_tag(
    image: str, version: tuple[int, int, int] | None
) -> None:
    """Tags with or without v and suffixes count; a digest or latest says nothing."""
    agent = retina.Agent("kube-system", "retina-agent", image, (), {})
    assert agent.version == version


def test_a_windows_agent_is_not_taken_for_the_linux_one() -> None:
    """Retina's chart installs retina-agent-win next to retina-agent; only Linux runs eBPF."""
    daemonset, _ = _objects()
    windows = {
        **daemonset,
        "metadata": {**daemonset["metadata"], "name": "retina-agent-win"},
    }
    found = retina.find_agents([windows, daemonset])
    assert [a.name for a in found] == ["retina-agent"]
    assert found[0].config_maps == ("retina-config",)


@pytest.mark.parametrize(
    ("version", "status"),
    [("v1.1.9", "fail"), ("v1.2.0", "ok"), ("v1.2.6", "ok"), ("latest", "warn")],
)
def test_agents_before_1_2_fail_for_the_filter_map_leak(version: str, status: str) -> None:
    """Retina < 1.2.0 leaks a filter-map entry per removed annotation (microsoft/retina#2114)."""
    daemonset, _ = _objects(version=version)
    (check,) = retina.agent_checks(retina.find_agents([daemonset]))
    assert check.status == status
    if status == "fail":
        assert "2114" in check.detail
        assert check.fix


def test_the_chart_defaults_are_read_as_the_agent_reads_them() -> None:
    """The sample install passes; unset filterMapMaxEntries means the eBPF default of 255."""
    daemonset, config_map = _objects(config={"filterMapMaxEntries": None})
    config = retina.read_config(config_map, retina.find_agents([daemonset])[0].env)
    assert config.enable_annotations
    assert config.enable_pod_level
    assert not config.bypass_lookup
    assert config.filter_map_max_entries == retina.DEFAULT_FILTER_MAP_ENTRIES
    assert set(
        _statuses(retina.config_checks(config, "kube-system/retina-config", 200)).values()
    ) == {"ok"}


@pytest.mark.parametrize(
    ("config", "env", "failing"),
    [
        ({"enableAnnotations": False}, {}, "annotations"),
        ({"enableAnnotations": None}, {}, "annotations"),
        ({"enablePodLevel": False}, {}, "pod-level metrics"),
        ({"bypassLookupIPOfInterest": True}, {}, "IP lookup"),
        ({}, {"RETINA_ENABLEANNOTATIONS": "false"}, "annotations"),
        ({}, {"RETINA_BYPASSLOOKUPIPOFINTEREST": "TRUE"}, "IP lookup"),
        ({"filterMapMaxEntries": 128}, {}, "node budget"),
    ],
)
def test_each_setting_that_silences_annotations_fails(
    config: dict[str, Any], env: dict[str, str], failing: str
) -> None:
    """Each documented way of making Retina ignore retina.sh: observe is a failure, with a fix."""
    daemonset, config_map = _objects(config=config, env=env)
    agent = retina.find_agents([daemonset])[0]
    found = retina.config_checks(retina.read_config(config_map, agent.env), "ns/cm", 200)
    failed = [c for c in found if c.status == "fail"]
    assert [c.name for c in failed] == [failing]
    assert failed[0].fix


def test_an_environment_override_can_also_turn_annotations_on() -> None:
    """RETINA_ENABLEANNOTATIONS=true beats the file's false, as viper's AutomaticEnv does."""
    daemonset, config_map = _objects(
        config={"enableAnnotations": False}, env={"RETINA_ENABLEANNOTATIONS": "true"}
    )
    agent = retina.find_agents([daemonset])[0]
    assert retina.read_config(config_map, agent.env).enable_annotations


def test_a_node_budget_of_zero_is_a_warning() -> None:
    """Off is allowed, but the operator is told what a busy node then does to the agent."""
    _, config_map = _objects()
    config = retina.read_config(config_map, {})
    assert _statuses(retina.config_checks(config, "ns/cm", 0))["node budget"] == "warn"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"enable-hubble": "true", "cluster-name": "c"}, "Hubble control plane"),
        ({}, "no config.yaml"),
        ({"config.yaml": "enableAnnotations: [true"}, "not YAML"),
        ({"config.yaml": "- a list"}, "not a mapping"),
        ({"config.yaml": "filterMapMaxEntries: lots"}, "not a number"),
    ],
)
def test_a_config_map_that_is_not_the_standard_plane_is_refused(
    data: dict[str, str], reason: str
) -> None:
    """Hubble's plane, a missing key, broken YAML: said plainly, never a crash."""
    with pytest.raises(retina.ConfigUnreadable, match=reason):
        retina.read_config({"data": data}, {})


def test_metrics_configurations_in_use_fail() -> None:
    """Retina does not mix MetricsConfiguration objects with annotations."""
    assert retina.metrics_configuration_check(["all-pods"]).status == "fail"
    assert retina.metrics_configuration_check([]).status == "ok"
    assert retina.metrics_configuration_check(None).status == "ok"


def test_captures_need_the_crd_and_a_retina_that_reads_relative_host_paths() -> None:
    """No CRD with a capturing topology fails; Retina 1.2.0 warns about the relative hostPath."""
    assert retina.capture_checks(None, wanted=True, version=(1, 2, 6), host_path=True)[
        0
    ].status == ("fail")
    assert retina.capture_checks({"captures"}, wanted=False, version=None, host_path=False)[
        0
    ].status == ("ok")
    found = retina.capture_checks({"captures"}, wanted=True, version=(1, 2, 0), host_path=True)
    assert [c.status for c in found] == ["ok", "warn"]
    assert "2335" in found[1].detail
