"""Reading Falco detections: both producers' formats, Kubernetes context, and refusals."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.lab import samples
from streamproc.model import events
from streamproc.model.events import ParseError
from tests.conftest import FIXTURES
from tests.strategies import json_values


def test_a_falcosidekick_payload_yields_rule_priority_and_pod() -> None:
    """Falcosidekick's Kafka payload is read with its Kubernetes context."""
    detection = events.parse((FIXTURES / "falcosidekick.json").read_bytes())
    assert detection.rule == "Read sensitive file untrusted"
    assert detection.priority_name == "Warning"
    assert detection.source == "syscall"
    assert (detection.namespace, detection.pod) == ("shop", "frontend-7d4b9c8f5x-x2x7k")
    assert detection.uuid == "4a3a5e4c-3c7e-4b5e-9c0a-1f9d2f4c6b7e"
    assert "mitre_credential_access" in detection.tags
    assert detection.owners == ()


def test_falco_json_output_without_uuid_is_accepted_with_owner_fields() -> None:
    """Falco's own json_output line (no uuid) parses, and k8smeta owner fields are kept."""
    detection = events.parse((FIXTURES / "falco-json-output.json").read_bytes())
    assert detection.uuid == ""
    assert detection.priority_name == "Critical"
    assert detection.owners == (("StatefulSet", "postgres"),)


@pytest.mark.parametrize("missing", [None, "<NA>", ""])
def test_a_host_event_has_no_kubernetes_context(missing: str | None) -> None:
    """Null, <NA> or empty namespace/pod mean the detection happened on the host."""
    doc = {
        "rule": "r",
        "priority": "Warning",
        "time": "2026-11-28T02:03:16.349478045Z",
        "output_fields": {"k8s.ns.name": missing, "k8s.pod.name": missing},
    }
    detection = events.parse(orjson.dumps(doc))
    assert not detection.has_kubernetes_context


@pytest.mark.parametrize(("raw", "reason"), samples.MALFORMED)
def test_malformed_lines_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    """Each bad line the lab replays is refused with the reason the dead-letter topic records."""
    with pytest.raises(ParseError) as caught:
        events.parse(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"k8s.ns.name": "Shop", "k8s.pod.name": "p"}, "invalid-namespace"),
        ({"k8s.ns.name": "shop", "k8s.pod.name": "a/b"}, "invalid-pod-name"),
        ({"k8s.ns.name": "shop", "k8s.pod.name": "x" * 254}, "invalid-pod-name"),
        ({"k8s.ns.name": "shop\n", "k8s.pod.name": "p"}, "invalid-namespace"),
    ],
)
def test_names_that_could_reach_a_url_must_be_dns1123(fields: dict[str, str], reason: str) -> None:
    """Traversal, slashes, upper case, control characters and over-long names are refused."""
    with pytest.raises(ParseError) as caught:
        events.parse(orjson.dumps({"rule": "r", "priority": "Warning", "output_fields": fields}))
    assert caught.value.reason == reason


def test_oversize_messages_are_refused_before_parsing() -> None:
    """A message over the size limit is not decoded at all."""
    with pytest.raises(ParseError) as caught:
        events.parse(b"{" + b" " * events.MAX_MESSAGE_BYTES + b"}")
    assert caught.value.reason == "too-large"


def test_too_many_output_fields_are_refused() -> None:
    """A payload with an absurd number of fields is dead-lettered, not processed."""
    fields = {f"f{i}": i for i in range(events.MAX_OUTPUT_FIELDS + 1)}
    with pytest.raises(ParseError) as caught:
        events.parse(orjson.dumps({"rule": "r", "priority": "Warning", "output_fields": fields}))
    assert caught.value.reason == "too-many-fields"


def test_priorities_compare_in_falcos_order() -> None:
    """Emergency is the most severe and Debug the least, as in Falco."""
    ranks = [events.PRIORITY_RANK[p] for p in events.PRIORITIES]
    assert ranks == sorted(ranks, reverse=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_either_parse_or_raise_parse_error(raw: bytes) -> None:
    """No input makes the parser raise anything but ParseError."""
    try:
        events.parse(raw)
    except ParseError as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["rule", "priority", "output_fields", "tags", "source", "uuid", "time"]),
        json_values,
    )
)
def test_arbitrary_json_objects_either_parse_or_raise_parse_error(doc: dict[str, object]) -> None:
    """Well-formed JSON with wrong types anywhere is refused cleanly."""
    try:
        events.parse(orjson.dumps(doc))
    except ParseError as exc:
        assert exc.reason


@pytest.mark.parametrize("tags", [[["nested"]], [{"a": 1}], [1, 2], "container"])
def test_tags_that_are_not_a_list_of_strings_are_refused(tags: object) -> None:
    """Nested lists, objects or numbers in tags are an invalid-tags refusal, not a crash."""
    with pytest.raises(ParseError) as caught:
        events.parse(orjson.dumps({"rule": "r", "priority": "Warning", "tags": tags}))
    assert caught.value.reason == "invalid-tags"


def test_priority_names_are_read_case_insensitively() -> None:
    """'warning' and 'WARNING' are Falco's Warning."""
    for spelling in ("warning", "WARNING", "Warning"):
        doc = {"rule": "r", "priority": spelling, "time": "2026-11-28T02:03:16Z"}
        detection = events.parse(orjson.dumps(doc))
        assert detection.priority_name == "Warning"
