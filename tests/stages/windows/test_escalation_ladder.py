"""The escalation ladder's decision: offences climb it, extensions do not, old offences fade."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamproc.model.escalation import escalate, forgotten

MIN, HOUR, DAY = 60, 3600, 86400
LADDER = (15 * MIN, HOUR, 6 * HOUR, DAY)
WEEK = 7 * DAY
T0 = 1_796_000_000_000


def offend(history: list[int], start_s: float, size_s: float = 60) -> tuple[list[int], int]:
    start = T0 + int(start_s * 1000)
    return escalate(history, start, start + int(size_s * 1000), LADDER, WEEK)


def test_four_offences_climb_the_ladder_and_stay_on_its_last_step() -> None:
    """Each new observation (the previous one over) is one step up; the fifth stays at 4."""
    history: list[int] = []
    levels = []
    at = 0.0
    for _ in range(5):
        history, level = offend(history, at)
        levels.append(level)
        at += 60 + LADDER[level - 1] + 60  # after this observation has ended
    assert levels == [1, 2, 3, 4, 4]
    assert len(history) == 2 + len(LADDER)  # bounded by the ladder, not by the offences


def test_an_action_inside_a_running_observation_extends_it_at_its_level() -> None:
    """Windows that qualify while observed are extensions: no new offence, same level."""
    history, level = offend([], 0)
    for minute in range(1, 10):
        history, again = offend(history, minute * 60)
        assert again == level == 1
    assert history[0] == T0 + (9 * 60 + 60 + LADDER[0]) * 1000  # extended to the last window
    assert history[2:] == [T0]


def test_a_replayed_window_gets_the_same_level_and_counts_once() -> None:
    """The same tally after a crash: no second offence."""
    first, level = offend([], 0)
    after = LADDER[0] + 600
    second, level2 = offend(first, after)
    again, level3 = offend(second, after)
    assert (level, level2, level3) == (1, 2, 2)
    assert again == second


def test_offences_older_than_forget_after_no_longer_count() -> None:
    """Two offences, then eight quiet days: the next observation is level 1 again."""
    history, _ = offend([], 0)
    history, level = offend(history, DAY)
    assert level == 2
    history, level = offend(history, DAY + 8 * DAY)
    assert level == 1
    assert history[2:] == [T0 + 9 * DAY * 1000]


def test_a_history_is_forgotten_only_when_its_observation_and_offences_are_over() -> None:
    history, _ = offend([], 0)
    assert not forgotten(history, history[0] + 1, WEEK)  # the offence still counts
    assert not forgotten(history, T0 + 1000, 1)  # the observation still runs
    assert forgotten(history, T0 + (WEEK + 1) * 1000, WEEK)
    assert forgotten([], T0, WEEK)


@given(st.lists(st.integers(min_value=0, max_value=30 * DAY), max_size=40))
def test_the_level_is_always_a_step_of_the_ladder_and_the_history_bounded(
    starts: list[int],
) -> None:
    history: list[int] = []
    for start in sorted(starts):
        history, level = offend(history, start)
        assert 1 <= level <= len(LADDER)
        assert len(history) <= 2 + len(LADDER)
        assert history[0] >= T0 + (start + 60 + LADDER[level - 1]) * 1000
