"""Whether a workload's window qualifies: threshold, deduplication and escalation, without Faust.

The windows stage (:mod:`streamproc.windowing`) reads a window's ``[count, acted]`` and the
workload's escalation history from its changelog-backed Faust tables, asks :func:`judge`, and
writes back what changed; ``streamproc simulate`` asks the same function with plain dicts, so a
simulation decides exactly as the live stage does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamproc.model import escalation
from streamproc.model.actions import Action
from streamproc.model.tallies import Tally
from streamproc.model.topologies import Topology


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one tally does to its window."""

    #: the window's new ``[count, acted]``
    state: list[int]
    #: the action to emit, when the window qualified with this tally
    action: Action | None
    #: detections counted past the threshold of a window already acted on
    deduplicated: int
    #: the workload's new escalation history, when it changed (only with a ladder)
    history: escalation.History | None


def decide(state: Sequence[int], tally_count: int, threshold: int) -> tuple[list[int], bool, int]:
    """New ``[count, acted]``, whether to act now, and how many detections were deduplicated."""
    count, acted = (state[0], state[1]) if state else (0, 0)
    new_count = count + tally_count
    if acted:
        return [new_count, 1], False, tally_count
    if new_count >= threshold:
        return [new_count, 1], True, new_count - threshold
    return [new_count, 0], False, 0


def action_for(topology: Topology, tally: Tally, count: int, level: int = 1) -> Action:
    """The action a qualifying window emits; its id is the same however often it is replayed."""
    size_ms = int(topology.spec.window.size * 1000)
    return Action(
        id=f"{tally.workload_key}/{tally.window_start}",
        topology=topology.name,
        namespace=tally.namespace,
        kind=tally.kind,
        name=tally.name,
        resolved_by=tally.resolved_by,
        pod=tally.pod,
        window_start=tally.window_start // 1000,
        window_end=(tally.window_start + size_ms) // 1000,
        rule=tally.rule,
        priority=tally.priority,
        count=count,
        first_append_ms=tally.first_append_ms,
        uuids=tally.uuids,
        cluster=tally.cluster,
        level=level,
    )


def judge(
    topology: Topology, tally: Tally, state: Sequence[int], history: Sequence[int] | None
) -> Verdict:
    """Count ``tally`` into its window (``state``); act once when the threshold is reached.

    ``history`` is the workload's escalation history (None for a topology without a ladder);
    it is consulted, and changes, only when the window acts: an offence is an action.
    """
    new_state, act, deduplicated = decide(state, tally.count, topology.spec.window.threshold)
    if not act:
        return Verdict(new_state, None, deduplicated, None)
    ladder = topology.spec.action.escalation
    level, new_history = 1, None
    if ladder is not None:
        before = list(history or ())
        end_ms = tally.window_start + int(topology.spec.window.size * 1000)
        after, level = escalation.escalate(
            before, tally.window_start, end_ms, ladder.ttls, ladder.forget_after
        )
        new_history = after if after != before else None
    return Verdict(
        new_state, action_for(topology, tally, new_state[0], level), deduplicated, new_history
    )
