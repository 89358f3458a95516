"""Escalation: a workload that keeps offending is observed for longer each time.

An *offence* is a new observation of a workload; an action inside an observation still running
extends it at the level it was opened with. Offences older than ``forgetAfter`` no longer count,
so a workload quiet for that long starts again at the bottom of the ladder. (Wazuh's
``repeated_offenders`` and CrowdSec's ``duration_expr`` do this for hosts and IPs.)

The windows stage keeps one history per topology and workload in a changelog-backed table and
asks :func:`escalate` at each action; this module is that decision, without Faust. A history is
``[until_ms, level, offence_ms, ...]``: when the observation last opened or extended ends, its
level, and the latest offences (at most one per step of the ladder: more could not raise the
level further), so an entry's size is bounded by the ladder, and the table's by the workloads
that offended within ``forgetAfter``.
"""

from __future__ import annotations

from collections.abc import Sequence

History = list[int]


def escalate(
    history: Sequence[int],
    window_start_ms: int,
    window_end_ms: int,
    ttls_s: Sequence[float],
    forget_after_s: float,
) -> tuple[History, int]:
    """The history after an action for the window ``[start, end)``, and that action's level.

    Idempotent for a window already counted (a replayed tally): its level comes back unchanged.
    """
    until, level = (history[0], history[1]) if len(history) >= 2 else (0, 0)
    offences = [t for t in history[2:] if t > window_start_ms - forget_after_s * 1000]
    counted = bool(history[2:]) and window_start_ms <= history[-1]
    if level and (counted or window_start_ms < until):
        level = min(level, len(ttls_s))  # the ladder may have been shortened since
    else:
        offences = [*offences, window_start_ms][-len(ttls_s) :]
        level = len(offences)
    until = max(until, window_end_ms + int(ttls_s[level - 1] * 1000))
    return [until, level, *offences], level


def forgotten(history: Sequence[int], now_ms: int, forget_after_s: float) -> bool:
    """Whether a history no longer matters: its observation ended, its offences too old."""
    if len(history) < 2:
        return True
    newest = max(history[2:], default=0)
    return history[0] <= now_ms and newest <= now_ms - forget_after_s * 1000
