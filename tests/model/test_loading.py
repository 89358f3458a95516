"""Topology files: the shipped default loads; bad files are refused naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.model import topologies
from streamproc.model.topologies import TopologyError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: t1
spec:
  match:
    priority: ">=Warning"
  window:
    size: 60s
    threshold: 2
  action:
    annotate:
      retina.sh: observe
    ttl: 15m
"""


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_default_topology_loads() -> None:
    """topologies/retina-observe.yaml is valid and does what the README says."""
    [topology] = topologies.load_path(ROOT / "topologies")
    assert topology.name == "retina-observe"
    assert topology.spec.window.size == 60
    assert topology.spec.action.ttl == 900
    assert topology.spec.action.annotate == {"retina.sh": "observe"}
    assert "kube-system" in topology.spec.match.namespaces.exclude


def test_durations_and_priority_expressions_are_read(tmp_path: Path) -> None:
    """'60s', '15m' and '>=Warning' become seconds and a priority bound."""
    topology = topologies.load_file(write(tmp_path, GOOD))
    assert topology.spec.window.size == 60
    assert topology.spec.window.threshold == 2
    assert topology.spec.action.ttl == 900
    assert topology.spec.match.priority.op == ">="


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("size: 60s", "size: sixty", 9, "spec.window.size"),
        ("threshold: 2", "threshold: 0", 10, "spec.window.threshold"),
        ('priority: ">=Warning"', 'priority: ">=Loud"', 7, "spec.match.priority"),
        ("retina.sh: observe", "streamproc.io/x: observe", 13, "spec.action.annotate"),
        ("ttl: 15m", "tll: 15m", 14, "spec.action.tll"),
        # a duration past a year would overflow the expiry written on pods (and Faust's ranges)
        ("ttl: 15m", "ttl: 9000h", 14, "spec.action.ttl"),
        ("ttl: 15m", "ttl: 1e300", 14, "spec.action.ttl"),
        ("name: t1", "name: Bad_Name", 4, "metadata.name"),
    ],
)
def test_a_bad_field_is_reported_with_file_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str
) -> None:
    """Each mistake names the file, the line it is on and the field's path."""
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(TopologyError) as caught:
        topologies.load_file(path)
    error = caught.value
    assert error.path == str(path)
    assert error.field == field
    assert error.line == line
    assert f"{path}:{line}: {field}:" in str(error)


LADDER = """\
    escalation:
      ttls: [15m, 1h, 6h, 24h]
      forgetAfter: 7d
    capture:
      minLevel: 3
"""


def test_an_escalation_ladder_and_a_capture_level_are_read(tmp_path: Path) -> None:
    action = topologies.load_file(write(tmp_path, GOOD + LADDER)).spec.action
    assert action.escalation is not None
    assert action.escalation.ttls == (900, 3600, 21600, 86400)
    assert action.escalation.forget_after == 7 * 86400
    assert action.capture is not None
    assert action.capture.min_level == 3
    assert [action.ttl_at(level) for level in (0, 1, 4, 99)] == [900, 900, 86400, 86400]
    scaled = topologies.scaled(topologies.load_file(write(tmp_path, GOOD + LADDER)), 900)
    assert scaled.spec.action.escalation is not None
    assert scaled.spec.action.escalation.ttls == (1, 4, 24, 96)


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "reason"),
    [
        ("[15m, 1h, 6h, 24h]", "[1h, 15m]", 16, "spec.action.escalation.ttls", "at least as long"),
        ("[15m, 1h, 6h, 24h]", "[]", 16, "spec.action.escalation.ttls", "at least 1"),
        ("[15m, 1h, 6h, 24h]", "[15m, 1h]", 12, "spec.action", "above the ladder's last step"),
        ("forgetAfter: 7d", "forgetafter: 7d", 17, "spec.action.escalation.forgetafter", ""),
        ("forgetAfter: 7d", "forgetAfter: soon", 17, "spec.action.escalation.forgetAfter", ""),
        ("minLevel: 3", "minLevel: 0", 19, "spec.action.capture.minLevel", ""),
    ],
)
def test_a_bad_ladder_is_refused_with_file_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, reason: str
) -> None:
    path = write(tmp_path, GOOD + LADDER.replace(old, new))
    with pytest.raises(TopologyError) as caught:
        topologies.load_file(path)
    assert (caught.value.field, caught.value.line) == (field, line)
    assert reason in str(caught.value)


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    """A YAML syntax error names the line where the parser stopped."""
    path = write(tmp_path, GOOD.replace("  window:\n", "  window: [\n"))
    with pytest.raises(TopologyError) as caught:
        topologies.load_file(path)
    assert caught.value.line is not None
    assert "invalid YAML" in str(caught.value)


def test_two_topologies_with_one_name_are_refused(tmp_path: Path) -> None:
    """Names identify topologies in metrics and annotations, so they must be unique."""
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(TopologyError, match="also in"):
        topologies.load_path(tmp_path)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    """Running with no topology at all is a mistake, not a quiet no-op."""
    with pytest.raises(TopologyError, match=r"no \*\.yaml"):
        topologies.load_path(tmp_path)


def test_speed_scales_windows_and_ttl(tmp_path: Path) -> None:
    """The lab's --speed divides window size and TTL."""
    topology = topologies.scaled(topologies.load_file(write(tmp_path, GOOD)), 30)
    assert topology.spec.window.size == 2
    assert topology.spec.action.ttl == 30


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=400))
def test_any_text_either_loads_or_is_refused_with_a_topology_error(
    tmp_path: Path, text: str
) -> None:
    """No file content makes the loader raise anything but TopologyError (naming the file)."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        topologies.load_file(path)
    except TopologyError as exc:
        assert exc.path == str(path)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(
        [
            "size: 60s",
            "threshold: 2",
            'priority: ">=Warning"',
            "ttl: 15m",
            "retina.sh: observe",
            "name: t1",
        ]
    ),
    st.one_of(st.text(max_size=12), st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
)
def test_any_value_in_any_field_is_accepted_or_refused_cleanly(
    tmp_path: Path, line: str, value: object
) -> None:
    """Replacing one field's value by anything gives a Topology or a located TopologyError."""
    key = line.split(":", maxsplit=1)[0]
    path = tmp_path / "t.yaml"
    path.write_text(
        GOOD.replace(
            line, f"{key}: {yaml.safe_dump(value).splitlines()[0] if value is not None else '~'}"
        )
    )
    try:
        topologies.load_file(path)
    except TopologyError as exc:
        assert exc.path == str(path)
