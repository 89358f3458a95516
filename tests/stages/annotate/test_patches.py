"""Patch planning: what opening, extending and ending an observation writes."""

from __future__ import annotations

from streamproc.model import conventions, patches


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
        action_id="a1",
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
        action_id="a1",
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
        action_id="a1",
    )
    assert other is not None
    assert other.foreign == ("retina.sh",)
    assert "retina.sh" not in other.annotations


def test_an_extension_never_shortens_the_observation() -> None:
    """An older window arriving late keeps the later expiry."""
    current = pod(
        {
            conventions.EXPIRES_AT: "2033-05-18T03:33:20Z",
            conventions.ACTION_ID: "a2",
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
            action_id="a1",
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
    patch = patches.release(current)
    assert patch.annotations == {
        "retina.sh": None,
        conventions.OWNED_KEYS: None,
        conventions.EXPIRES_AT: None,
        conventions.TOPOLOGY: None,
    }
    assert patch.labels == {conventions.OBSERVED_LABEL: None}
