"""A simulation's report for a person (rich tables) and for programs (JSON), one or two sets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

from streamproc.simulating.report import IDENTITY_SOURCES, Report, TopologyStats

if TYPE_CHECKING:
    from rich.console import Console


def _levels(stats: TopologyStats) -> str:
    return " ".join(f"{level}:{n}" for level, n in sorted(stats.levels.items())) or "-"


_ROWS: tuple[tuple[str, Callable[[TopologyStats], object]], ...] = (
    ("detections matched", lambda s: s.detections),
    ("windows", lambda s: s.windows),
    ("actions (windows that qualified)", lambda s: s.actions),
    ("observations opened", lambda s: s.opened),
    ("observations extended", lambda s: s.extended),
    ("extensions not due yet", lambda s: s.not_due),
    ("workloads observed", lambda s: len(s.workloads)),
    ("pods observed", lambda s: len(s.pods)),
    ("observation-minutes", lambda s: f"{s.observed_s / 60:,.0f}"),
    ("levels reached (level:opened)", _levels),
    ("captures", lambda s: s.captures),
    ("refused: maxObservations", lambda s: s.refused_cap),
    (
        "refused: node budget (actions/pods)",
        lambda s: f"{s.refused_budget}/{s.refused_budget_pods}",
    ),
    ("refused: excluded namespace (detections)", lambda s: s.excluded),
    ("no pods found", lambda s: s.no_pods),
    ("API writes: applies + expiries", lambda s: f"{s.patches} + {s.expiries}"),
)


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def compared(a: Report, b: Report) -> dict[str, list[str]]:
    """Workloads only one of the two topology sets would observe."""
    seen_a, seen_b = a.observed(), b.observed()
    return {
        "only_a": sorted("/".join(w) for w in seen_a - seen_b),
        "only_b": sorted("/".join(w) for w in seen_b - seen_a),
    }


def as_json(reports: Sequence[Report]) -> dict[str, Any]:
    """One report, or two side by side with the workloads only one would observe."""
    if len(reports) == 1:
        return reports[0].as_dict()
    a, b = reports
    return {"a": a.as_dict(), "b": b.as_dict(), **compared(a, b)}


def show(reports: Sequence[Report], console: Console) -> None:
    """Print the report(s) as tables."""
    _overview(reports[0], console)
    table = Table("", box=None, title="what the topologies would have done")
    columns: list[TopologyStats] = []
    for index, report in enumerate(reports):
        label = f"{'AB'[index]}: " if len(reports) > 1 else ""
        for name, stats in report.stats.items():
            table.add_column(f"{label}{name}", justify="right")
            columns.append(stats)
    for title, value in _ROWS:
        table.add_row(title, *(_n(value(s)) for s in columns))
    console.print(table)
    for index, report in enumerate(reports):
        label = f" ({'AB'[index]})" if len(reports) > 1 else ""
        writes = report.api_writes()
        console.print(
            f"estimated API writes{label}: {writes['applies']:,} applies, "
            f"{writes['expiries']:,} expiries, {writes['events']:,} events, "
            f"{writes['captures']:,} captures"
        )
    _tops(reports[0], console)
    if len(reports) == 2:
        only = compared(*reports)
        for key, label in (("only_a", "only A"), ("only_b", "only B")):
            listed = ", ".join(only[key][:20]) or "none"
            more = f" (and {len(only[key]) - 20} more)" if len(only[key]) > 20 else ""
            console.print(f"workloads {label} would observe: {listed}{more}")


def _overview(first: Report, console: Console) -> None:
    span = first.time_range()
    console.print(
        f"simulated {first.records:,} records from {span[0] or '-'} to {span[1] or '-'}; "
        f"windows from {first.windows_from}"
    )
    identities = ", ".join(f"{k} {first.identities.get(k, 0):,}" for k in IDENTITY_SOURCES)
    console.print(f"workload identities (detections): {identities}")
    if first.ambiguous:
        pods = sorted(first.ambiguous)
        more = f" and {len(pods) - 5:,} more" if len(pods) > 5 else ""
        console.print(
            f"ambiguous identities: {len(pods):,} pods named as a DaemonSet's or a Job's, taken "
            f"for bare Pods ({', '.join(pods[:5])}{more}); give --pods or --kubeconfig for owners"
        )
    if first.out_of_step:
        console.print(
            f"payload times out of step with their neighbours: {first.out_of_step:,} (e.g. "
            f"{', '.join(first.out_of_step_examples)}), windowed at the running clock as live "
            "windows on the record time"
        )
    skipped = ", ".join(f"{k} {v:,}" for k, v in first.skipped.items() if v)
    if skipped:
        console.print(f"not counted: {skipped}")
    if first.dead:
        dead = ", ".join(
            f"{reason} {n:,} (e.g. {', '.join(first.dead_examples.get(reason, []))})"
            for reason, n in first.dead.most_common()
        )
        console.print(f"dead letters: {dead}")


def _tops(first: Report, console: Console) -> None:
    top = Table("WORKLOAD", "DETECTIONS", box=None, title="top workloads")
    for workload, n in first.workload_detections.most_common(10):
        top.add_row(workload, f"{n:,}")
    console.print(top)
    rules = Table("TOPOLOGY", "RULE", "DETECTIONS", box=None, title="top rules")
    for name, stats in first.stats.items():
        for rule, n in stats.rules.most_common(5):
            rules.add_row(name, rule, f"{n:,}")
    console.print(rules)
