"""``streamproc.io/observed-since``: written when an observation opens, kept on extension, read
back bounded (a tenant may edit it), removed with the other bookkeeping."""

from __future__ import annotations

import pytest

from streamproc.model import conventions, marks, patches
from tests.model.test_marks import ACTION, LABELLED, NOW, decode, written

SINCE = NOW - 3600


def pod(annotations: dict[str, str], labels: dict[str, str] = LABELLED) -> dict[str, object]:
    return {"metadata": {"annotations": annotations, "labels": labels, "resourceVersion": "1"}}


def observe(
    current: dict[str, object], previous: marks.Read, *, until: float, now: float
) -> patches.Patch | None:
    return patches.observe(
        current,
        annotations={"retina.sh": "observe"},
        until=until,
        topology="retina-observe",
        rule="r",
        action_id=ACTION.replace("1799999990000", str(int(now) * 1000)),
        previous=previous,
        level="1/3",
        now=now,
    )


def test_opening_an_observation_writes_when_it_opened() -> None:
    """A pod without marks gets observed-since = now (whole seconds, as written)."""
    patch = observe(pod({}, {}), None, until=NOW + 900, now=NOW + 0.7)
    assert patch is not None
    assert patch.annotations[conventions.OBSERVED_SINCE] == conventions.format_time(NOW)
    assert patch.since == NOW


def test_an_extension_keeps_the_start() -> None:
    """Extending an observation that opened an hour ago writes that hour-old start again."""
    current = written(**{conventions.OBSERVED_SINCE: conventions.format_time(SINCE)})
    previous = decode(current)
    assert isinstance(previous, marks.Marks)
    assert previous.since == SINCE
    patch = observe(pod(current), previous, until=NOW + 7 * 3600, now=NOW)
    assert patch is not None
    assert patch.annotations[conventions.OBSERVED_SINCE] == conventions.format_time(SINCE)
    assert patch.since == SINCE


def test_marks_written_before_observed_since_existed_stay_valid_and_get_no_guess() -> None:
    """No observed-since: the marks pass, since is unknown, and an extension invents none."""
    previous = decode(written())
    assert isinstance(previous, marks.Marks)
    assert previous.since is None
    patch = observe(pod(written()), previous, until=NOW + 7 * 3600, now=NOW)
    assert patch is not None
    assert conventions.OBSERVED_SINCE not in patch.annotations


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("yesterday", "malformed"),
        ("1800000000", "malformed"),
        (conventions.format_time(NOW + marks.SKEW_S + 60), "beyond-policy"),
        (conventions.format_time(NOW + 7 * 3600), "beyond-policy"),  # after its own expiry
    ],
)
def test_a_forged_start_is_refused(value: str, reason: str) -> None:
    """Not RFC 3339, in the future beyond the skew, or after the expiry: refused marks."""
    found = decode(written(**{conventions.OBSERVED_SINCE: value}))
    assert isinstance(found, marks.Refusal)
    assert found.reason == reason
    assert "observed-since" in found.detail


def test_a_forged_ancient_start_is_clamped_so_no_query_range_is_unbounded() -> None:
    """The epoch as a start reads as expires-at minus MAX_OBSERVED_S: a week, not 57 years."""
    found = decode(written(**{conventions.OBSERVED_SINCE: "1970-01-01T00:00:00Z"}))
    assert isinstance(found, marks.Marks)
    assert found.since == found.until - marks.MAX_OBSERVED_S


def test_the_release_removes_observed_since_with_the_other_bookkeeping() -> None:
    """It is bookkeeping: the end of the observation takes it away."""
    current = written(**{conventions.OBSERVED_SINCE: conventions.format_time(SINCE)})
    patch = patches.release(pod(current), decode(current))
    assert conventions.OBSERVED_SINCE in patch.annotations
    assert patch.annotations[conventions.OBSERVED_SINCE] is None
