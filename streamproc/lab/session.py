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
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streamproc import conventions, kafka, metrics, running, topologies
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import sample_cluster
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.replay import stamp, timeline
from streamproc.lab.view import View
from streamproc.settings import Settings

log = logging.getLogger("streamproc.lab")


@dataclass
class LabOptions:
    """What the ``lab`` command was asked to do."""

    duration_s: float = 60.0
    speed: float = 12.0
    topology_path: Path = Path("topologies")
    broker: str | None = None
    kubeconfig: str | None = None
    metrics_port: int = 9108
    live: bool = True


@dataclass
class Summary:
    """What the run did, printed at the end and checked by the tests."""

    detections_in: int = 0
    dead_letters: int = 0
    actions: int = 0
    pods_annotated: int = 0
    expired: int = 0
    still_active: int = 0
    leftovers: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def clean(self) -> bool:
        """Every observation that ended left nothing of streamproc's behind."""
        return not self.leftovers

    def lines(self) -> list[str]:
        """Human-readable summary."""
        return [
            "streamproc lab summary",
            f"  detections in      {self.detections_in}",
            f"  dead letters       {self.dead_letters}",
            f"  actions            {self.actions}",
            f"  pods annotated     {self.pods_annotated}",
            f"  expired            {self.expired}",
            f"  still active       {self.still_active}",
            "  expiry check       "
            + (
                "ok: every expired observation was removed"
                if self.clean
                else f"FAILED: left behind on {', '.join(self.leftovers)}"
            ),
        ]


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
            for obj in sample_cluster().objects:
                emulator.create(obj)
            stack.enter_context(emulator.serve())
            kubeconfig = str(emulator.write_kubeconfig(workdir / "kubeconfig"))
        yield bootstrap, kubeconfig, emulator


def _leftovers(emulator: KubeEmulator | None, active: set[tuple[str, str]]) -> list[str]:
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
        still_running = (meta["namespace"], meta["name"]) in active and (expires or 0) > now
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                break
            pending.append(await producer.send(topic, stamp(item.value, time.time())))
            view.replay_sent += 1
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def run_lab(options: LabOptions, stop: asyncio.Event) -> Summary:
    """Run the lab until ``--duration`` passes or ``stop`` is set; return the summary."""
    loaded = topologies.load_path(options.topology_path)
    cap = max(1.0, options.duration_s / 3)
    lab_topologies = []
    for topology in loaded:
        t = topologies.scaled(topology, options.speed)
        action = t.spec.action.model_copy(update={"ttl": min(t.spec.action.ttl, cap)})
        lab_topologies.append(
            t.model_copy(update={"spec": t.spec.model_copy(update={"action": action})})
        )
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
        )
        view = View(live=options.live)
        view.intro(bootstrap, emulator.url if emulator else "", kubeconfig, port, lab_topologies)
        handles = running.Running()
        pipeline_stop = asyncio.Event()
        pipeline = asyncio.create_task(
            running.run_stages(settings, lab_topologies, running.STAGES, pipeline_stop, handles)
        )
        deadline = time.monotonic() + options.duration_s
        replay: asyncio.Task[None] | None = None
        with view.showing():
            while time.monotonic() < deadline and not stop.is_set() and not pipeline.done():
                if replay is None and handles.ready.is_set():
                    span = max(1.0, options.duration_s * 0.4)
                    topic = lab_topologies[0].spec.source.topic
                    replay = asyncio.create_task(_replay(settings, topic, span, view, stop))
                view.refresh(handles)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
        summary.interrupted = stop.is_set()
        stop.set()
        if replay is not None:
            await replay
        pipeline_stop.set()
        await pipeline
        active = set(handles.expirer.active) if handles.expirer else set()
        summary.detections_in = int(
            metrics.total("streamproc_records_consumed_total", stage="ingest")
        )
        summary.dead_letters = int(metrics.total("streamproc_dead_letters_total"))
        summary.actions = int(metrics.total("streamproc_actions_emitted_total"))
        summary.pods_annotated = len(handles.annotator.observed_pods) if handles.annotator else 0
        summary.expired = handles.expirer.expired if handles.expirer else 0
        summary.still_active = len(active)
        summary.leftovers = _leftovers(emulator, active)
    return summary
