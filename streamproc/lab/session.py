"""``streamproc lab``: the whole system on one machine, with one command and nothing else installed.

It starts an embedded Kafka-protocol broker and the emulated API server seeded with the sample
cluster (unless ``--broker``/``--kubeconfig`` point at real ones), runs the real pipeline stages
in this process with windows and TTL time-lapsed by ``--speed``, replays realistic detections,
shows what happens, and at the end checks that every observation it opened was removed on expiry.
The TTL is also capped at a third of ``--duration`` so a run shows observations open *and* end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streamproc import running, stopping
from streamproc.clients import kafka, kube, metrics
from streamproc.doctor import diagnosing
from streamproc.lab import platforms
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import sample_cluster
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.platforms import PlatformName
from streamproc.lab.replay import stamp, timeline
from streamproc.lab.view import View, counted
from streamproc.model import conventions, topologies
from streamproc.model.durations import format_duration
from streamproc.settings import LAB_SPEED, Settings

log = logging.getLogger("streamproc.lab")


@dataclass
class LabOptions:
    """What the ``lab`` command was asked to do."""

    duration_s: float = 60.0
    speed: float = LAB_SPEED
    topology_path: Path | None = None
    broker: str | None = None
    kubeconfig: str | None = None
    metrics_port: int = 9108
    live: bool = True
    #: the emulated cluster's platform (``platforms.py``); ``retina``: the sample cluster as is
    platform: PlatformName = "retina"


@dataclass
class Observed:
    """One workload the run observed, as the audit trail tells it."""

    namespace: str
    kind: str
    name: str
    topology: str
    rule: str
    pods: list[str] = field(default_factory=list)
    #: from the first patch to the expiry it was last given (seconds); to the end of the run
    #: for one still open then
    lasted_s: float = 0.0
    #: its expiry was still ahead when the run ended (Ctrl-C, or a run shorter than the TTL)
    still_open: bool = False


@dataclass
class Summary:
    """What the run did, printed at the end and checked by the tests."""

    detections_in: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    actions: int = 0
    pods_annotated: int = 0
    patches: int = 0
    api_requests: int = 0
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    expired: int = 0
    still_active: int = 0
    observed: list[Observed] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    interrupted: bool = False
    #: the run's time-lapse: a second here stands for ``speed`` seconds of a real cluster
    speed: float = 1.0
    #: ``streamproc doctor`` on the lab's broker and cluster, run as the stages started
    doctor: list[dict[str, str]] = field(default_factory=list)
    #: the replay's detections sent, of all it had (0 of 0: it never started)
    replay_sent: int = 0
    replay_total: int = 0
    #: the cluster was the lab's emulated one, gone with the run (not ``--kubeconfig``'s)
    emulated_cluster: bool = True
    #: the emulated platform, and how pods were to be put under observation there
    platform: str = "retina"
    backend: str = "retina-annotation"
    #: the ContainerNetworkMetric's streamproc.io include filters, at most and at the end, and
    #: the user's own filters at the start and at the end (None: no ContainerNetworkMetric here)
    metric_filters_peak: int | None = None
    metric_filters_end: int | None = None
    user_filters_start: int | None = None
    user_filters_end: int | None = None

    @property
    def clean(self) -> bool:
        """Every observation that ended left nothing of streamproc's behind."""
        return not self.leftovers

    def as_dict(self) -> dict[str, object]:
        """The summary as JSON (``lab --output json``)."""
        return {**dataclasses.asdict(self), "clean": self.clean}

    @property
    def replay_finished(self) -> bool:
        """Every detection of the replay went out."""
        return self.replay_total > 0 and self.replay_sent >= self.replay_total

    def lines(self) -> list[str]:
        """Human-readable summary: the counts, then what they mean."""
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.dead_letter_reasons.items()))
        latency = (
            f"p50 {self.latency_p50_s * 1000:.0f} ms, p99 {(self.latency_p99_s or 0) * 1000:.0f} ms"
            if self.latency_p50_s is not None
            else "no patch yet"
        )
        out = [
            "streamproc lab summary" + (" (interrupted)" if self.interrupted else ""),
            f"  detections in      {self.detections_in}",
            f"  dead letters       {self.dead_letters}",
            f"  actions            {self.actions}",
            f"  pods observed      {self.pods_annotated}",
            f"  patches            {self.patches}",
            f"  API requests       {self.api_requests}",
            f"  expired            {self.expired}",
            f"  still active       {self.still_active}",
            "  replay             " + self._replay_line(),
            "  expiry check       "
            + (
                "ok: every expired observation was removed"
                if self.clean
                else f"FAILED: left behind on {', '.join(self.leftovers)}"
            ),
            "  doctor             " + self._doctor_line(),
            *self._filter_lines(),
            "",
            "What happened:",
        ]
        if not self.replay_finished:
            out.append("  " + self._replay_unfinished())
        if self.dead_letters:
            out.append(
                f"  {counted(self.dead_letters, 'dead letter')} "
                f"{'is' if self.dead_letters == 1 else 'are'} the replay's deliberately "
                f"malformed lines ({reasons}): refused with a reason, nothing else lost."
            )
        out.append(
            f"  {counted(self.actions, 'action')} (one per workload and window that reached the "
            f"threshold) put {counted(self.pods_annotated, 'pod')} under observation; "
            f"{counted(self.patches, 'patch', 'patches')} in all, opening, extending and "
            f"removing, with {counted(self.api_requests, 'API request')}."
        )
        out.append(f"  detection to first patch: {latency} (estimated from the histogram).")
        for o in self.observed:
            real = format_duration(round(o.lasted_s * self.speed))
            lasted = (
                f"still open, {o.lasted_s:.0f}s so far ({real} at --speed {self.speed:g})"
                if o.still_open
                else f"for {o.lasted_s:.0f}s ({real} at --speed {self.speed:g})"
            )
            out.append(
                f"  observed {o.namespace}/{o.kind}/{o.name}: {counted(len(o.pods), 'pod')} "
                f"{lasted}, rule {o.rule!r} (topology {o.topology})"
            )
        still_open = sum(1 for o in self.observed if o.still_open)
        if self.interrupted or still_open:
            out.append("  " + self._still_open(still_open))
        return out

    def _filter_lines(self) -> list[str]:
        """The ContainerNetworkMetric's filters: streamproc's came and went, the user's stayed."""
        if self.user_filters_start is None:
            return []
        kept = self.user_filters_end == self.user_filters_start
        return [
            f"  platform           {self.platform}, --observation-backend {self.backend}",
            (
                f"  metric filters     {self.metric_filters_peak or 0} streamproc.io at most, "
                f"{self.metric_filters_end or 0} at the end"
            ),
            (
                f"  user's filters     {self.user_filters_end or 0} of "
                f"{self.user_filters_start} "
                + ("kept as written" if kept else "FAILED: not all kept")
            ),
            # kept is not unchanged in effect: an entry that only excluded pods collected only
            # the observed ones while streamproc's include filters were in it
            (
                "                     (while streamproc's filters are in, an entry that only "
                "excluded pods collects only the observed ones: docs/aks.md)"
            ),
        ]

    def _replay_line(self) -> str:
        if not self.replay_total:
            return "not started"
        sent = f"{self.replay_sent} of {counted(self.replay_total, 'detection')} sent"
        return sent if self.replay_finished else f"{sent} (not finished)"

    def _replay_unfinished(self) -> str:
        if not self.replay_total:
            return (
                "The replay never started: the run ended before the annotator had joined its "
                "consumer group (a longer --duration gives it time)."
            )
        cause = "Ctrl-C stopped it" if self.interrupted else "the run's --duration ended first"
        return (
            f"The replay did not finish: {self.replay_sent} of {self.replay_total} detections "
            f"were sent ({cause}); the counts cover only those."
        )

    def _still_open(self, still_open: int) -> str:
        head = "Interrupted before the end: " if self.interrupted else "At the end: "
        if not still_open:
            return head + "no observation was still open."
        which = f"{counted(still_open, 'observation')} still open"
        if self.emulated_cluster:
            return (
                f"{head}{which} went away with the emulated cluster (on a real one each "
                "ends at its expires-at, or at once with `streamproc release`)."
            )
        stays = (
            "stays on its pods until its expires-at; the annotate stage removes it"
            if still_open == 1
            else "stay on their pods until their expires-at; the annotate stage removes them"
        )
        return f"{head}{which} {stays} then, or `streamproc release NAMESPACE/KIND/NAME` now."

    def _doctor_line(self) -> str:
        if not self.doctor:
            return "not run"
        counts = {
            s: sum(1 for c in self.doctor if c["status"] == s) for s in ("ok", "warn", "fail")
        }
        failed = [f"{c['area']} {c['name']}" for c in self.doctor if c["status"] == "fail"]
        return f"{counts['ok']} passed, {counts['warn']} warnings, {counts['fail']} failed" + (
            f" ({', '.join(failed)})" if failed else ""
        )


def story(records: list[dict[str, Any]], now: float) -> list[Observed]:
    """Workloads observed, from the audit trail's ``applied``/``extended`` records.

    An observation whose expiry is after ``now`` (the end of the run) is still open: it lasted
    until ``now`` so far, not the TTL it was given.
    """
    found: dict[tuple[str, str, str], Observed] = {}
    opened: dict[tuple[str, str, str], float] = {}
    for record in records:
        if record.get("result") not in ("applied", "extended"):
            continue
        key = (str(record.get("namespace")), str(record.get("kind")), str(record.get("name")))
        entry = found.setdefault(
            key, Observed(*key, str(record.get("topology", "")), str(record.get("rule", "")))
        )
        entry.pods = sorted({*entry.pods, *(str(p) for p in record.get("pods") or ())})
        at = conventions.parse_time(str(record.get("time", ""))) or 0.0
        until = conventions.parse_time(str(record.get("expires_at", ""))) or at
        opened.setdefault(key, at)
        entry.still_open = until > now
        entry.lasted_s = max(entry.lasted_s, min(until, now) - opened[key])
    return sorted(found.values(), key=lambda o: (o.namespace, o.kind, o.name))


async def _read_audit(settings: Settings) -> list[dict[str, Any]]:
    """The run's audit records (a report only: any failure leaves the story empty)."""
    try:
        records = await asyncio.wait_for(
            kafka.read_topic(settings, settings.topics.audit, idle_ms=300), timeout=10
        )
    except (kafka.KafkaError, OSError, TimeoutError) as exc:
        log.warning("could not read the audit trail for the summary: %s", exc)
        return []
    docs = []
    for record in records:
        try:
            doc = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            docs.append(doc)
    return docs


def _mark_key(workdir: Path) -> Path:
    """A fresh key to seal the lab's marks with, readable by this user only."""
    path = workdir / "mark-key"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def _infrastructure(
    options: LabOptions, workdir: Path
) -> Iterator[tuple[str, str, KubeEmulator | None]]:
    with contextlib.ExitStack() as stack:
        bootstrap = options.broker
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker(log=workdir / "tansu.log").running())
            bootstrap = broker.bootstrap
        kubeconfig = options.kubeconfig
        emulator = None
        if kubeconfig is None:
            emulator = KubeEmulator()
            if options.platform == "retina":
                for obj in sample_cluster().objects:
                    emulator.create(obj)
            else:
                platforms.build(options.platform).load(emulator)
            stack.enter_context(emulator.serve())
            kubeconfig = str(emulator.write_kubeconfig(workdir / "kubeconfig"))
        yield bootstrap, kubeconfig, emulator


def _leftovers(emulator: KubeEmulator | None, active: set[kube.ObjectRef]) -> list[str]:
    """Pods that still carry streamproc's marks although their observation is over."""
    if emulator is None:
        return []
    now = time.time()
    found = []
    for pod in emulator.list("Pod"):
        meta = pod["metadata"]
        marks = conventions.OBSERVED_LABEL in (meta.get("labels") or {}) or any(
            k in (meta.get("annotations") or {}) for k in conventions.BOOKKEEPING_KEYS
        )
        expires = conventions.parse_time(
            (meta.get("annotations") or {}).get(conventions.EXPIRES_AT, "")
        )
        still_running = kube.ObjectRef.of(pod) in active and (expires or 0) > now
        if marks and not still_running:
            found.append(f"{meta['namespace']}/{meta['name']}")
    return found


async def _replay(
    settings: Settings, topic: str, span_s: float, view: View, stop: asyncio.Event
) -> None:
    schedule = timeline(sample_cluster().workloads, span_s)
    view.replay_total = len(schedule)
    producer = kafka.producer(settings)
    await producer.start()
    try:
        started = time.monotonic()
        pending = []
        for item in schedule:
            delay = item.at - (time.monotonic() - started)
            if delay > 0:
                await stopping.pause(stop, delay)
            if stop.is_set():
                break
            pending.append(await producer.send(topic, stamp(item.value, time.time())))
            view.replay_sent += 1
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _show_doctor(task: asyncio.Task[list[diagnosing.Check]], view: View, summary: Summary) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.warning("doctor could not finish: %s", task.exception())
        return
    found = task.result()
    summary.doctor = [c.as_dict() for c in found]
    view.report(["streamproc doctor:", *diagnosing.lines(found)])


def _ready_for_replay(handles: running.Running, started: float) -> bool:
    """Replay once the annotator has joined its group, so the first actions land at once.

    A consumer group's first join on the embedded broker takes half the session timeout;
    replaying earlier only shows actions waiting for it. Bounded: after 20 s, replay anyway.
    """
    if not handles.ready.is_set():
        return False
    joined = handles.annotate is not None and handles.annotate.joined
    return joined or time.monotonic() - started > 20


async def _summarise(
    handles: running.Running,
    emulator: KubeEmulator | None,
    settings: Settings,
    *,
    read_audit: bool,
    ended: float,
) -> Summary:
    """The closing summary: the counts from metrics, the story from the audit trail."""
    active = set(handles.expirer.active) if handles.expirer else set()
    reasons = metrics.by_label("streamproc_dead_letters_total", "reason")
    latency = "streamproc_detection_to_annotation_seconds"
    summary = Summary(
        detections_in=int(metrics.total("streamproc_records_consumed_total", stage="ingest")),
        dead_letter_reasons={r: int(n) for r, n in reasons.items() if n},
        actions=int(metrics.total("streamproc_actions_emitted_total")),
        patches=int(metrics.total("streamproc_patches_total", result="ok")),
        api_requests=int(metrics.total("streamproc_api_request_duration_seconds_count")),
        latency_p50_s=metrics.quantile(latency, 0.5),
        latency_p99_s=metrics.quantile(latency, 0.99),
        pods_annotated=len(handles.annotate.annotator.observed_pods) if handles.annotate else 0,
        expired=handles.expirer.expired if handles.expirer else 0,
        still_active=len(active),
        leftovers=_leftovers(emulator, active),
    )
    summary.dead_letters = sum(summary.dead_letter_reasons.values())
    if read_audit:  # a broker of the lab's own: its audit topic holds only this run
        summary.observed = story(await _read_audit(settings), ended)
    return summary


def _lab_topologies(options: LabOptions, cap: float) -> list[topologies.Topology]:
    """The topologies time-lapsed by ``--speed``, each TTL capped so observations also end."""
    loaded = topologies.load_path(topologies.resolve_path(options.topology_path))
    found = []
    for topology in loaded:
        t = topologies.scaled(topology, options.speed)
        action = t.spec.action.model_copy(update={"ttl": min(t.spec.action.ttl, cap)})
        found.append(t.model_copy(update={"spec": t.spec.model_copy(update={"action": action})}))
    return found


async def run_lab(options: LabOptions, stop: asyncio.Event) -> Summary:
    """Run the lab until ``--duration`` passes or ``stop`` is set; return the summary."""
    cap = max(1.0, options.duration_s / 3)
    lab_topologies = _lab_topologies(options, cap)
    summary = Summary()
    with (
        tempfile.TemporaryDirectory(prefix="streamproc-lab-") as tmp,
        _infrastructure(options, Path(tmp)) as (bootstrap, kubeconfig, emulator),
    ):
        port = options.metrics_port
        if port:
            try:
                metrics.serve(port, "127.0.0.1")
            except OSError:
                port = free_port()
                metrics.serve(port, "127.0.0.1")
        settings = Settings(
            bootstrap_servers=bootstrap,
            kubeconfig=kubeconfig,
            session_timeout_s=6.0,
            speed=options.speed,
            expiry_resync_s=max(2.0, cap),
            observation_backend=platforms.BACKENDS[options.platform],
            # sealed marks, as a deployment should run (docs/reliability.md): a key of its own
            mark_key_file=_mark_key(Path(tmp)),
        )
        view = View(live=options.live)
        view.intro(bootstrap, emulator.url if emulator else "", kubeconfig, port, lab_topologies)
        handles = running.Running()
        pipeline_stop = asyncio.Event()
        pipeline = asyncio.create_task(
            running.run_stages(settings, lab_topologies, running.STAGES, pipeline_stop, handles)
        )
        started = time.monotonic()
        deadline = started + options.duration_s
        replay: asyncio.Task[None] | None = None
        doctor: asyncio.Task[list[diagnosing.Check]] | None = None
        with view.showing():
            while time.monotonic() < deadline and not stop.is_set() and not pipeline.done():
                if doctor is None and handles.ready.is_set():
                    # once the stages created their topics: what a user's first check would say
                    doctor = asyncio.create_task(
                        diagnosing.diagnose(settings, options.topology_path, evidence=False)
                    )
                    doctor.add_done_callback(lambda t: _show_doctor(t, view, summary))
                if replay is None and _ready_for_replay(handles, started):
                    span = max(1.0, options.duration_s * 0.4)
                    topic = lab_topologies[0].spec.source.topic
                    replay = asyncio.create_task(_replay(settings, topic, span, view, stop))
                watch_filters(emulator, options.platform, view, summary)
                view.refresh(handles)
                await stopping.pause(stop, 0.5)
        summary.interrupted = stop.is_set()
        ended = time.time()  # observations still open now were open when the run ended
        stop.set()
        if doctor is not None and not doctor.done():
            doctor.cancel()
            await asyncio.gather(doctor, return_exceptions=True)
        checked = summary.doctor
        watch_filters(emulator, options.platform, view, summary)
        filters = {
            k: getattr(summary, k)
            for k in (
                "metric_filters_peak",
                "metric_filters_end",
                "user_filters_start",
                "user_filters_end",
            )
        }
        if replay is not None:
            await replay
        pipeline_stop.set()
        await pipeline
        summary = dataclasses.replace(
            await _summarise(
                handles, emulator, settings, read_audit=not options.broker, ended=ended
            ),
            interrupted=summary.interrupted,
            speed=options.speed,
            doctor=checked,
            replay_sent=view.replay_sent,
            replay_total=view.replay_total,
            emulated_cluster=emulator is not None,
            platform=options.platform,
            backend=settings.observation_backend,
            **filters,
        )
    return summary


def watch_filters(
    emulator: KubeEmulator | None, platform: PlatformName, view: View, summary: Summary
) -> None:
    """Read the cluster's ContainerNetworkMetric, where the platform has one, into the view."""
    if emulator is None or platform not in platforms.METRIC_FILTERS:
        return
    ours, theirs = platforms.filter_counts(
        emulator.get("ContainerNetworkMetric", "", platforms.CNM_NAME)
    )
    view.filters = (ours, theirs)
    summary.metric_filters_peak = max(summary.metric_filters_peak or 0, ours)
    summary.metric_filters_end = ours
    if summary.user_filters_start is None:
        summary.user_filters_start = theirs
    summary.user_filters_end = theirs


def next_steps(options: LabOptions, summary: Summary) -> list[str]:
    """What a person can try after the run; the lab's own servers are gone by then."""
    out = ["", "What to try next:"]
    if summary.interrupted:
        out.append(
            f"  the whole story, without Ctrl-C: streamproc lab --duration "
            f"{options.duration_s:g} --speed {options.speed:g}"
        )
    elif not summary.replay_finished:
        longer = max(60, round(options.duration_s * 2))
        out.append(
            f"  the whole story: streamproc lab --duration {longer:g} --speed {options.speed:g}"
        )
    out += [
        "  your topologies (as the lab found them) on the sample detections, offline:",
        "    streamproc samples --span 600 > falco.jsonl && streamproc simulate falco.jsonl",
    ]
    if summary.emulated_cluster:
        out += [
            "  the sample cluster for kubectl (the lab's API server stopped with the run):",
            "    python -m streamproc.lab.kubeemu --kubeconfig lab.kubeconfig"
            + (f" --platform {summary.platform}" if summary.platform != "retina" else "")
            + "   (until Ctrl-C)",
            "    KUBECONFIG=lab.kubeconfig kubectl get pods -A -o wide",
        ]
    out += [
        "  before you deploy, check your Kafka, cluster and Retina:",
        "    streamproc doctor --bootstrap-servers HOST:9092 --kubeconfig ~/.kube/config",
        "  the manual: docs/getting-started.md (a real broker and cluster), docs/deploying.md",
    ]
    return out
