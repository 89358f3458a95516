"""``--plot``: a timeline of the simulated observations, one row per workload (matplotlib)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from streamproc.simulating.report import Report

#: rows drawn: the workloads observed longest (a plot of thousands of rows says nothing)
MAX_ROWS = 40


class PlotError(RuntimeError):
    """The plot cannot be drawn (matplotlib missing, or the file cannot be written)."""


def timeline(report: Report, path: Path) -> int:
    """Draw each workload's observations, coloured by level; how many rows were drawn."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 - an optional extra

        mpl.use("Agg")  # files only: no display needed
        import matplotlib.dates as mdates  # noqa: PLC0415
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.patches import Rectangle  # noqa: PLC0415
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'streamproc[plot]'") from None
    spans = {
        key: [(start, until, level) for start, until, level in found]
        for key, found in report.intervals.items()
    }
    ranked = sorted(spans, key=lambda k: -sum(until - start for start, until, _ in spans[k]))[
        :MAX_ROWS
    ]
    levels = sorted({str(level) or "1" for k in ranked for _, _, level in spans[k]})
    colours = plt.get_cmap("viridis", max(2, len(levels)))
    figure, axes = plt.subplots(figsize=(12, max(2.0, 0.35 * len(ranked) + 1.5)))
    for row, key in enumerate(reversed(ranked)):
        for start, until, level in spans[key]:
            begin = datetime.fromtimestamp(start, UTC)
            width = (until - start) / 86400  # matplotlib dates are in days
            colour = colours(levels.index(str(level) or "1"))
            left = mdates.date2num(begin)  # type: ignore[no-untyped-call]
            axes.barh(row, width, left=left, height=0.6, color=colour)
    axes.set_yticks(range(len(ranked)))
    axes.set_yticklabels([f"{t}: {ns}/{kind}/{name}" for t, ns, kind, name in reversed(ranked)])
    axes.xaxis_date()
    axes.set_xlabel("time (UTC)")
    axes.set_title(f"simulated observations ({report.name})")
    handles = [Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(len(levels))]
    if len(levels) > 1:
        axes.legend(handles, [f"level {lv}" for lv in levels], loc="upper left")
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    return len(ranked)
