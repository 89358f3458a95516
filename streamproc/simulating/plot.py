"""``--plot``: a timeline of the simulated observations, one row per workload (matplotlib).

The plot shows what the table says: a row for each workload the table counts as observed (an
observation opened or extended on it), for each topology set of a ``--compare``, each set in its
own colour, named in the legend. Levels above 1 are written on their bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamproc.simulating.report import Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: rows drawn: the workloads observed longest (a plot of thousands of rows says nothing)
MAX_ROWS = 40
#: each set's colour, A then B (matplotlib's default cycle, readable in print)
COLOURS = ("tab:blue", "tab:orange")

_Row = tuple[str, str, str, str]


class PlotError(RuntimeError):
    """The plot cannot be drawn (matplotlib missing, or the file cannot be written)."""


def label(index: int, report: Report, count: int) -> str:
    """The legend's name of a topology set: ``A: topologies/`` with --compare, else its path."""
    return f"{'AB'[index]}: {report.name}" if count > 1 else report.name


def observed_spans(report: Report) -> dict[_Row, list[tuple[float, float, int]]]:
    """Spans of the workloads the table counts as observed, keyed as the rows are."""
    spans: dict[_Row, list[tuple[float, float, int]]] = {}
    for key, found in report.intervals.items():
        topology, namespace, kind, name = key
        stats = report.stats.get(topology)
        if stats is None or (namespace, kind, name, "") not in stats.workloads:
            continue  # e.g. its only action was an extension not yet due: not observed by it
        spans[key] = [(start, until, int(level or 1)) for start, until, level in found]
    return spans


def figure(reports: Sequence[Report]) -> Figure:
    """The timeline of every topology set, as a matplotlib figure (``timeline`` saves it)."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 - an optional extra

        mpl.use("Agg")  # files only: no display needed
        import matplotlib.dates as mdates  # noqa: PLC0415
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'streamproc[plot]'") from None
    sides = [observed_spans(report) for report in reports]
    total: dict[_Row, float] = {}
    for spans in sides:
        for key, found in spans.items():
            total[key] = total.get(key, 0.0) + sum(until - start for start, until, _ in found)
    ranked = sorted(total, key=lambda k: (-total[k], k))[:MAX_ROWS]
    rows = {key: row for row, key in enumerate(reversed(ranked))}
    height = 0.8 / len(reports)
    drawn, axes = plt.subplots(figsize=(12, max(2.0, 0.35 * len(ranked) * len(reports) + 1.5)))
    for index, (report, spans) in enumerate(zip(reports, sides, strict=True)):
        ys: list[float] = []
        lefts: list[float] = []
        widths: list[float] = []
        levels: list[int] = []
        for key, found in spans.items():
            if key not in rows:
                continue
            # the first set above the second within a row
            offset = 0.4 - height * (index + 0.5)
            for start, until, level in found:
                ys.append(rows[key] + offset)
                lefts.append(mdates.date2num(datetime.fromtimestamp(start, UTC)))  # type: ignore[no-untyped-call]
                widths.append((until - start) / 86400)  # matplotlib dates are in days
                levels.append(level)
        axes.barh(
            ys,
            widths,
            left=lefts,
            height=height * 0.9,
            color=COLOURS[index % len(COLOURS)],
            label=label(index, report, len(reports)),
        )
        for y, left, level in zip(ys, lefts, levels, strict=True):
            if level > 1:
                axes.annotate(f"L{level}", (left, y), fontsize=7, va="center")
    axes.set_yticks(range(len(ranked)))
    axes.set_yticklabels([f"{t}: {ns}/{kind}/{name}" for t, ns, kind, name in reversed(ranked)])
    axes.xaxis_date()
    axes.set_xlabel("time (UTC)")
    axes.set_title("simulated observations")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(reports))
    drawn.tight_layout()
    return drawn


def timeline(reports: Sequence[Report], path: Path) -> int:
    """Draw the timeline to ``path`` (PNG); how many workload rows were drawn."""
    drawn = figure(reports)
    import matplotlib.pyplot as plt  # noqa: PLC0415 - figure() checked it is installed

    try:
        drawn.savefig(path)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(drawn)
    rows: Any = drawn.axes[0].get_yticks()
    return len(rows)
