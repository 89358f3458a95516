"""The time policy itself: which record and tally times are believed, and the skew estimate."""

from __future__ import annotations

import email.utils
import math
import time

import pytest

from streamproc import clocks

NOW_S = 1_796_534_400.0
NOW_MS = int(NOW_S * 1000)
TOLERANCE_MS = 60_000


def test_record_time_keeps_what_is_near_its_arrival_and_replaces_the_rest() -> None:
    """Own time within the tolerance; arrival for none, far ahead, or fresh and far behind."""
    for stamped in (NOW_MS, NOW_MS - 59_000, NOW_MS + 59_000):
        assert clocks.record_time(stamped, NOW_MS, TOLERANCE_MS, None) == (stamped, None)
    assert clocks.record_time(-1, NOW_MS, TOLERANCE_MS, None) == (NOW_MS, "absent")
    assert clocks.record_time(NOW_MS + 61_000, NOW_MS, TOLERANCE_MS, None) == (NOW_MS, "ahead")
    late = NOW_MS - 20 * 60_000
    assert clocks.record_time(late, NOW_MS, TOLERANCE_MS, NOW_MS - 50) == (NOW_MS, "behind")
    # a backlog (freshness unknown) keeps its time, however old, and so does 1970
    assert clocks.record_time(late, NOW_MS, TOLERANCE_MS, None) == (late, None)
    assert clocks.record_time(0, NOW_MS, TOLERANCE_MS, None) == (0, None)


@pytest.mark.parametrize(
    ("message_s", "window_start_ms", "size_s", "refused"),
    [
        (NOW_S, NOW_MS, 60, None),
        (NOW_S - 86_400 * 30, NOW_MS - 86_400_000 * 30, 60, None),  # a month's backlog
        (0.0, 0, 1, None),
        (253_402_300_800.0, NOW_MS, 60, "record time"),  # year 9999: Faust's ranges never end
        (NOW_S, 253_402_300_800_000, 60, "window_start"),
        (NOW_S + 3601, NOW_MS, 60, "ahead of this stage's clock"),
        (NOW_S, NOW_MS + 3_601_000, 60, "ahead of this stage's clock"),
        (NOW_S + 3599, NOW_MS + 3_599_000, 60, None),
        (-0.001, NOW_MS, 60, "before 1970"),  # Kafka's -1 ms, "no timestamp"
        (math.nan, NOW_MS, 60, "before 1970"),
        (float(2**31), NOW_MS, 1, "beyond what Faust's windows hold"),
    ],
)
def test_the_windows_stage_refuses_times_faust_cannot_window(
    message_s: float, window_start_ms: int, size_s: float, refused: str | None
) -> None:
    """An hour ahead of its clock, negative, or past size x 2**31 s: refused with the reason."""
    now_s = NOW_S if size_s > 1 else 2.0**31 - 86_400 * 2
    ahead_s = clocks.ahead_bound_s(60)
    reason = clocks.tally_time_refused(message_s, window_start_ms, size_s, now_s, ahead_s)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason


def _date(server_s: float) -> str:
    return email.utils.formatdate(server_s, usegmt=True)


def test_the_skew_estimate_narrows_to_the_round_trip_from_whole_second_dates() -> None:
    """Answers at different sub-second phases bound a 90.3 s lead within the round trip."""
    skew = clocks.Skew()
    lead = 90.3
    for step in range(12):
        sent = NOW_S + step * 0.37
        received = sent + 0.02
        skew.add(_date(int(sent + 0.01 - lead)), sent, received)
    assert skew.measured
    assert abs(skew.seconds - lead) < 0.1


def test_a_stepped_clock_is_followed_and_nonsense_is_ignored() -> None:
    """After a clock step newer answers win; unreadable or absurd dates change nothing applied."""
    skew = clocks.Skew()
    for step in range(5):
        sent = NOW_S + step
        skew.add(_date(sent - 30), sent, sent + 0.01)
    assert abs(skew.seconds - 30) < 1
    sent = NOW_S + 10
    skew.add(_date(sent), sent, sent + 0.01)  # stepped into line
    assert abs(skew.seconds) < 1
    assert not skew.add("Fri, 99 Foo 20xx", sent, sent)
    assert not skew.add(None, sent, sent)
    assert not skew.add("Mon, 01 Jan 2024 00:00:00", sent, sent)  # no zone
    far = clocks.Skew()
    far.add(_date(253_402_200_000.0), NOW_S, NOW_S)
    assert far.seconds < -clocks.MAX_CORRECTION_S
    assert far.applied == 0.0


def test_the_windows_stages_bound_is_an_hour_or_twice_the_tolerance() -> None:
    """Ingest's tallies are at most the tolerance ahead of a clock the tolerance ahead."""
    assert clocks.ahead_bound_s(60) == 3600
    assert clocks.ahead_bound_s(7200) == 14_400


def test_a_clock_in_step_is_not_corrected_and_a_corrected_one_never_runs_backwards() -> None:
    """Below a Date's one-second resolution nothing is applied; estimates moving back are not."""
    skew = clocks.Skew()
    now = time.time()
    skew.add(_date(int(now)), now, now + 0.01)
    assert abs(skew.seconds) <= 1
    assert skew.applied == 0.0
    skew.add(_date(int(now) - 90), now, now + 0.01)  # 90 s ahead, newest answer wins
    assert skew.applied > 85
    before = skew.now()
    skew.add(_date(int(now) - 80), now, now + 0.01)  # the estimate drops by 10 s
    assert skew.now() >= before
