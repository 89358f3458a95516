"""Patch planning: what opening, extending and ending an observation writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamproc.cluster import marking
from streamproc.model import conventions, marks, patches

NOW = 1_999_000_000.0
POLICY = marks.Policy(ttls={"t": 30 * 86400.0}, writes={"t": {"retina.sh": "observe"}})
A1 = "t/n/Deployment/web/1000"
A2 = "t/n/Deployment/web/2000"


def read(current: Mapping[str, Any]) -> marks.Read:
    """The pod's marks as the annotator reads them, on the tests' clock."""
    return marking.read(current, now=NOW, policy=POLICY)


def pod(
    annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> dict[str, object]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "resourceVersion": "7",
            "annotations": annotations or {},
            "labels": labels or {},
        }
    }


def test_opening_adds_annotation_bookkeeping_and_label() -> None:
    """A fresh pod gets the topology's annotation, bookkeeping and the observed label."""
    patch = patches.observe(
        pod(),
        annotations={"retina.sh": "observe"},
        until=2_000_000_000,
        topology="t",
        rule="r",
        action_id=A1,
        previous=None,
    )
    assert patch is not None
    assert patch.annotations["retina.sh"] == "observe"
    assert patch.annotations[conventions.OWNED_KEYS] == "retina.sh"
    assert patch.annotations[conventions.EXPIRES_AT] == "2033-05-18T03:33:20Z"
    assert patch.labels == {conventions.OBSERVED_LABEL: "true"}
    assert patch.resource_version == "7"


def test_a_foreign_annotation_is_not_owned_and_not_overwritten() -> None:
    """retina.sh set by someone else is neither claimed nor changed."""
    same = patches.observe(
        pod({"retina.sh": "observe"}),
        annotations={"retina.sh": "observe"},
        until=2_000_000_000,
        topology="t",
        rule="r",
        action_id=A1,
        previous=None,
    )
    assert same is not None
    assert "retina.sh" not in same.annotations
    assert same.annotations[conventions.OWNED_KEYS] == ""
    other = patches.observe(
        pod({"retina.sh": "off"}),
        annotations={"retina.sh": "observe"},
        until=2_000_000_000,
        topology="t",
        rule="r",
        action_id=A1,
        previous=None,
    )
    assert other is not None
    assert other.foreign == ("retina.sh",)
    assert "retina.sh" not in other.annotations


def test_an_extension_never_shortens_the_observation() -> None:
    """An older window arriving late keeps the later expiry."""
    current = pod(
        {
            conventions.EXPIRES_AT: "2033-05-18T03:33:20Z",
            conventions.TOPOLOGY: "t",
            conventions.ACTION_ID: A2,
            conventions.OWNED_KEYS: "retina.sh",
            "retina.sh": "observe",
        },
        {conventions.OBSERVED_LABEL: "true"},
    )
    assert (
        patches.observe(
            current,
            annotations={"retina.sh": "observe"},
            until=1_900_000_000,
            topology="t",
            rule="r",
            action_id=A1,
            previous=read(current),
        )
        is None
    )


def test_release_removes_owned_keys_and_bookkeeping_only() -> None:
    """The end of an observation leaves every other annotation and label alone."""
    current = pod(
        {
            "retina.sh": "observe",
            "team": "x",
            conventions.OWNED_KEYS: "retina.sh",
            conventions.EXPIRES_AT: "2033-05-18T03:33:20Z",
            conventions.TOPOLOGY: "t",
        },
        {conventions.OBSERVED_LABEL: "true", "app": "web"},
    )
    patch = patches.release(current, read(current), lambda k, v: POLICY.ours("t", k, v))
    assert patch.annotations == {
        "retina.sh": None,
        conventions.OWNED_KEYS: None,
        conventions.EXPIRES_AT: None,
        conventions.TOPOLOGY: None,
    }
    assert patch.labels == {conventions.OBSERVED_LABEL: None}


def observed(annotations: dict[str, str]) -> dict[str, object]:
    """A pod streamproc observes by topology t until 2033, plus ``annotations``."""
    return pod(
        {
            conventions.EXPIRES_AT: "2033-05-18T03:33:20Z",
            conventions.TOPOLOGY: "t",
            conventions.ACTION_ID: A2,
            conventions.OWNED_KEYS: "retina.sh",
            **annotations,
        },
        {conventions.OBSERVED_LABEL: "true"},
    )


def extend(current: dict[str, object]) -> patches.Patch | None:
    """What a later window writes on ``current``."""
    return patches.observe(
        current,
        annotations={"retina.sh": "observe"},
        until=2_100_000_000,
        topology="t",
        rule="r",
        action_id="t/n/Deployment/web/3000",
        previous=read(current),
    )


def test_an_owned_key_a_person_changed_is_yielded_not_overwritten() -> None:
    """retina.sh streamproc added, then set to another value by a person, is theirs now."""
    patch = extend(observed({"retina.sh": "off"}))
    assert patch is not None
    assert patch.yielded == ("retina.sh",)
    assert "retina.sh" not in patch.annotations
    assert patch.annotations[conventions.OWNED_KEYS] == ""


def test_an_owned_key_a_person_removed_is_yielded_not_added_back() -> None:
    """retina.sh streamproc added, then removed by a person, is not written again."""
    first = extend(observed({}))
    assert first is not None
    assert first.yielded == ("retina.sh",)
    assert "retina.sh" not in first.annotations
    after = observed({conventions.OWNED_KEYS: ""})
    again = extend(after)
    assert again is not None
    assert "retina.sh" not in again.annotations
    assert again.yielded == ()
    assert patches.lasts(
        after, {"retina.sh": "observe"}, beyond=1_900_000_000, previous=read(after), topology="t"
    )


def test_release_leaves_a_changed_owned_key_and_reports_it() -> None:
    """At the end, an owned key with another value than streamproc wrote stays."""
    current = observed({"retina.sh": "off"})
    patch = patches.release(current, read(current), lambda k, v: POLICY.ours("t", k, v))
    assert "retina.sh" not in patch.annotations
    assert patch.yielded == ("retina.sh",)
    assert patch.annotations[conventions.EXPIRES_AT] is None
    assert patch.labels == {conventions.OBSERVED_LABEL: None}


def test_refused_marks_extend_nothing() -> None:
    """A forged expiry in the year 10000 is replaced by the topology's own, not kept."""
    current = observed(
        {conventions.EXPIRES_AT: "9999-12-31T23:59:59-14:00", "retina.sh": "observe"}
    )
    previous = read(current)
    assert isinstance(previous, marks.Refusal)
    assert previous.reason == "beyond-policy"
    patch = patches.observe(
        current,
        annotations={"retina.sh": "observe"},
        until=NOW + 600,
        topology="t",
        rule="r",
        action_id=A1,
        previous=previous,
    )
    assert patch is not None
    assert patch.annotations[conventions.EXPIRES_AT] == conventions.format_time(NOW + 600)
    assert patch.annotations[conventions.OWNED_KEYS] == "retina.sh"
