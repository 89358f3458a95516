"""One ``streamproc simulate`` run: read the input once, feed every topology set, report."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from streamproc.clients import kafka, kube
from streamproc.model import topologies
from streamproc.settings import Settings
from streamproc.simulating import inputs, parallel, plot, render
from streamproc.simulating.cluster import SimulatedCluster, SnapshotError
from streamproc.simulating.engine import Simulation
from streamproc.simulating.report import Report

#: the source topic every topology reads in a simulation of files
FILES_TOPIC = "simulate-input"
#: with ``--workers 0``, inputs smaller than this are simulated in this process alone: a worker
#: starts a fresh interpreter, which costs more than it saves on a small file (the help text of
#: ``Settings.simulate_workers`` says 8 MiB and at most 8)
PARALLEL_FROM_BYTES = 8 << 20
#: every worker decompresses the whole input; past this many, that duplicated work dominates
MOST_WORKERS = 8


class SimulationError(RuntimeError):
    """A named failure: its message is the one line a person sees."""


@dataclass
class Request:
    """What to simulate (the command line, parsed)."""

    settings: Settings
    topology_sets: list[list[topologies.Topology]]
    names: list[str]
    files: list[Path] = field(default_factory=list)
    topic: str | None = None
    since_ms: int = 0
    until_ms: int = 0
    pod_files: list[Path] = field(default_factory=list)
    kubeconfig: str | None = None
    #: lines per batch (a live ``getmany`` returns batches of this order)
    batch_lines: int = inputs.BATCH_LINES


def _snapshots(paths: list[Path]) -> list[tuple[object, str]]:
    docs = []
    for path in paths:
        try:
            docs.append((orjson.loads(path.read_bytes()), str(path)))
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SimulationError(f"--pods {path}: {exc}") from None
    return docs


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Collect cyclic garbage less often while records stream through.

    Every batch makes tens of thousands of short-lived, acyclic objects (lines, payloads,
    detections) that reference counting frees; at the default threshold the cyclic collector
    still ran every 700 of them and scanned what survived, which was a sixth of the run.
    """
    before = gc.get_threshold()
    gc.freeze()  # what exists now (modules, topologies, snapshot) is never garbage
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


async def simulate(request: Request) -> list[Report]:
    """Run the simulation(s); nothing is written to Kafka or the cluster."""
    with _fewer_collections():
        try:
            return await _simulate(request)
        except (inputs.InputError, SnapshotError, parallel.WorkerError) as exc:
            raise SimulationError(str(exc)) from None


def workers_for(request: Request) -> int:
    """Processes that run the ingest code: ``--workers``, or for 0 one per CPU on big inputs."""
    if request.topic is not None:
        return 1
    if request.settings.simulate_workers:
        return request.settings.simulate_workers
    if sum(path.stat().st_size for path in request.files) < PARALLEL_FROM_BYTES:
        return 1
    return min(parallel.available_cpus(), MOST_WORKERS)


async def _simulate(request: Request) -> list[Report]:
    async with _simulations(request) as sims:
        count = workers_for(request)
        if request.topic is not None:
            async for records, bad in _topic_range(request):
                for sim in sims:
                    sim.report.undecodable(bad)
                    await sim.feed(records)
        elif count == 1:
            for batch in inputs.batches(request.files, FILES_TOPIC, request.batch_lines):
                for sim in sims:
                    await sim.feed(batch.lines, (batch.before, batch.after))
        else:
            async for results in parallel.in_order(_ingest_share, request, count):
                for sim, result in zip(sims, results, strict=True):
                    await sim.absorb(result)
        return [await sim.finish() for sim in sims]


async def _topic_range(
    request: Request,
) -> AsyncIterator[tuple[list[kafka.Record], list[kafka.BadBatch]]]:
    assert request.topic is not None
    try:
        async for found in kafka.read_range(
            request.settings, request.topic, since_ms=request.since_ms, until_ms=request.until_ms
        ):
            yield found
    except kafka.UnknownTopic:
        raise SimulationError(
            f"topic {request.topic!r} does not exist on {request.settings.bootstrap_servers}; "
            "check --topic (simulate reads a topic, it never creates one)"
        ) from None


@contextlib.asynccontextmanager
async def _simulations(request: Request) -> AsyncIterator[list[Simulation]]:
    """One Simulation per topology set, over the same pods (snapshot, read-only API)."""
    snapshots = _snapshots(request.pod_files)
    upstream = (
        await kube.Kube.connect(request.kubeconfig, attempts=3) if request.kubeconfig else None
    )
    try:
        topic = request.topic or FILES_TOPIC
        sims = []
        for topology_set, name in zip(request.topology_sets, request.names, strict=True):
            cluster = SimulatedCluster(upstream)
            for doc, origin in snapshots:
                cluster.load_snapshot(doc, origin)
            sim = Simulation(
                request.settings,
                [topologies.reading(t, topic) for t in topology_set],
                cluster,
                payload_time=request.topic is None,
                seed_pods=not snapshots and upstream is None,
                name=name,
            )
            sim.report.locations = [str(p) for p in request.files]
            sims.append(sim)
        yield sims
    finally:
        if upstream is not None:
            await upstream.close()


def _ingest_share(request: Request, index: int, count: int, put: Callable[[object], None]) -> None:
    """A worker process: the ingest code over its share of the files' batches, in order."""
    asyncio.run(_ingest_batches(request, (index, count), put))


async def _ingest_batches(
    request: Request, share: tuple[int, int], put: Callable[[object], None]
) -> None:
    with _fewer_collections():
        async with _simulations(request) as sims:
            for batch in inputs.batches(
                request.files, FILES_TOPIC, request.batch_lines, share=share
            ):
                context = (batch.before, batch.after)
                put([await sim.ingestor.process(batch.lines, context=context) for sim in sims])


def draw(reports: list[Report], path: Path) -> None:
    """``--plot``: every topology set's observations, as the table counts them."""
    try:
        plot.timeline(reports, path)
    except plot.PlotError as exc:
        raise SimulationError(str(exc)) from None


def as_json(reports: list[Report]) -> dict[str, Any]:
    """``--output json``."""
    return render.as_json(reports)


def show(reports: list[Report]) -> None:
    """The tables, on stdout."""
    render.show(reports, Console(width=160))
