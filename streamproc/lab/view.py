"""What the lab shows: a live terminal view (rich), or a line per change without a terminal."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from streamproc.clients import metrics
from streamproc.model.durations import format_duration
from streamproc.model.topologies import Topology
from streamproc.running import Running

_COUNTERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("detections", "streamproc_records_consumed_total", {"stage": "ingest"}),
    ("dead letters", "streamproc_dead_letters_total", {}),
    ("windows opened", "streamproc_windows_opened_total", {}),
    ("deduplicated", "streamproc_detections_deduplicated_total", {}),
    ("actions", "streamproc_actions_emitted_total", {}),
    ("patches ok", "streamproc_patches_total", {"op": "observe", "result": "ok"}),
    ("expired", "streamproc_observations_expired_total", {}),
    ("API calls", "streamproc_api_request_duration_seconds_count", {}),
)


def counted(n: int, noun: str, plural: str = "") -> str:
    """``1 pod``, ``2 pods``, ``0 dead letters``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class View:
    """Renders the lab's state; ``refresh`` is called about twice a second.

    Without a terminal (CI, a pipe, ``--output json``) it prints one short line when something a
    person follows changed (the phase, dead letters, actions, observations, expiries, the end of
    the replay), not at every tick: detections alone move on every tick of a replay.
    """

    def __init__(self, *, live: bool) -> None:
        #: progress goes to stderr when stdout carries a machine-readable summary
        self.stream = sys.stdout if live else sys.stderr
        self.live = live and sys.stdout.isatty()
        self.console = Console()
        self.replay_total = 0
        self.replay_sent = 0
        self._last: dict[str, float] = {}
        self._last_at = time.monotonic()
        self._rate = 0.0
        self._live: Live | None = None
        self.phase = "starting"
        self._started = time.monotonic()
        #: what the last line without a terminal said, to print only what changed
        self._logged_phase = ""
        self._logged: tuple[int, ...] = (0, 0, 0, 0, 0, 0, -1, -1)
        #: (streamproc.io include filters, the user's filters) in the cluster's
        #: ContainerNetworkMetric, on a platform that has one (``lab --platform aks-acns-cilium``)
        self.filters: tuple[int, int] | None = None

    def intro(
        self,
        bootstrap: str,
        api_server: str,
        kubeconfig: str,
        metrics_port: int,
        topologies: Sequence[Topology],
    ) -> None:
        """Where everything is, before it starts."""
        out = self.console.print if self.live else self._print
        out(f"broker: {bootstrap}")
        if api_server:
            out(f"api server: {api_server} (emulated)")
        out(f"cluster: KUBECONFIG={kubeconfig} kubectl get pods -A -L streamproc.io/observed")
        if metrics_port:
            out(f"metrics: http://127.0.0.1:{metrics_port}/metrics")
        for t in topologies:
            out(
                f"topology {t.name}: window {format_duration(t.spec.window.size)}, threshold "
                f"{t.spec.window.threshold}, ttl {format_duration(t.spec.action.ttl)}"
            )
        self.stream.flush()

    def report(self, lines: Sequence[str]) -> None:
        """Print a block of lines (``doctor``'s report) above the live view."""
        for line in lines:
            if self._live is not None:
                self._live.console.print(line, markup=False, highlight=False)
            else:
                self._print(line)
        self.stream.flush()

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    @contextlib.contextmanager
    def showing(self) -> Iterator[None]:
        """Keep the live view on screen for the block (no-op without a terminal)."""
        if not self.live:
            yield
            return
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def refresh(self, handles: Running) -> None:
        """Update the view, or log what changed."""
        now = time.monotonic()
        values = {label: metrics.total(name, **labels) for label, name, labels in _COUNTERS}
        elapsed = max(1e-3, now - self._last_at)
        self._rate = (values["detections"] - self._last.get("detections", 0.0)) / elapsed
        active = handles.expirer.active if handles.expirer else {}
        workloads = handles.follower.followed() if handles.follower else {}
        self.phase = _phase(handles, values, self.replay_sent)
        if self._live is not None:
            self._live.update(self._render(values, workloads, len(active)))
        else:
            self._log_changes(values, len(workloads), len(active))
        self._last, self._last_at = values, now

    @property
    def replay_done(self) -> bool:
        """Every detection of the replay was sent."""
        return self.replay_total > 0 and self.replay_sent >= self.replay_total

    def _log_changes(self, values: dict[str, float], workloads: int, pods: int) -> None:
        """One short line per change, without a terminal."""
        at = f"lab {time.monotonic() - self._started:.0f}s"
        if self.phase != self._logged_phase:
            self._logged_phase = self.phase
            if self.phase != "running":
                self._print(f"{at}: {self.phase}")
        dead, actions, expired = (int(values[k]) for k in ("dead letters", "actions", "expired"))
        filters = self.filters or (-1, -1)
        state = (dead, actions, expired, pods, workloads, int(self.replay_done), *filters)
        if state == self._logged:
            return
        self._logged = state
        replay = (
            "replay done" if self.replay_done else f"replay {self.replay_sent}/{self.replay_total}"
        )
        self._print(
            f"{at}: {counted(int(values['detections']), 'detection')}, "
            f"{counted(dead, 'dead letter')}, {counted(actions, 'action')}, "
            f"observing {counted(pods, 'pod')} ({_of_workloads(pods, workloads)}), "
            f"{expired} expired, {replay}" + self._filters_text()
        )

    def _filters_text(self) -> str:
        if self.filters is None:
            return ""
        ours, theirs = self.filters
        return f", metric filters {ours} streamproc.io + {theirs} the user's"

    def _render(
        self,
        values: dict[str, float],
        workloads: dict[tuple[str, str, str], tuple[float, str]],
        pods: int,
    ) -> Group:
        counters = Table(title=f"streamproc lab: {self.phase}", show_header=False)
        counters.add_row("detections/s", f"{self._rate:,.0f}")
        for label, value in values.items():
            counters.add_row(label, f"{int(value):,}")
        done = self.replay_sent / self.replay_total if self.replay_total else 0.0
        counters.add_row(
            "replay", f"{'#' * int(done * 20):<20} {self.replay_sent}/{self.replay_total}"
        )
        if self.filters is not None:
            counters.add_row("metric filters", self._filters_text().partition("filters ")[2])
        observed = Table(title=f"workloads under observation ({counted(pods, 'pod')})")
        for column in ("namespace", "workload", "topology", "expires in"):
            observed.add_column(column)
        now = time.time()
        for (namespace, kind, name), (until, topology) in sorted(workloads.items()):
            observed.add_row(namespace, f"{kind}/{name}", topology, f"{max(0.0, until - now):.0f}s")
        return Group(counters, observed)


def _phase(handles: Running, values: dict[str, float], sent: int) -> str:
    """What the run is doing now, in words, so a pause in the counters is not a mystery."""
    if not handles.ready.is_set():
        return "starting the stages"
    if handles.annotate is not None and not handles.annotate.joined:
        return "waiting for the annotator to join its consumer group"
    if not sent:
        return "replay starting"
    if values["actions"] > values["patches ok"] == 0:
        return "actions on their way to the annotator"
    if values["actions"] == 0:
        return "counting detections until a window reaches its threshold"
    return "running"


def _of_workloads(pods: int, workloads: int) -> str:
    """Whose pods: a workload's follow ends at its expiry, its pods a moment later (the expirer)."""
    if pods and not workloads:
        return "ending"
    return counted(workloads, "workload")
