"""Starting and stopping stages: all three in one process (``run``) or each alone.

The stages never import each other; they meet only through Kafka topics and the cluster. This
module wires them to their clients, runs them until asked to stop, and stops every client it
started, in reverse order, whatever happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamproc import auditing, kafka, kube
from streamproc.annotating import AnnotateStage
from streamproc.applying import Annotator
from streamproc.cluster_cache import ClusterCache
from streamproc.expiring import Expirer
from streamproc.following import Follower
from streamproc.ingesting import Ingestor
from streamproc.node_budget import NodeBudget
from streamproc.ownership import Ownership
from streamproc.resolving import WorkloadResolver
from streamproc.settings import Settings
from streamproc.topologies import Topology
from streamproc.windowing import build_app, until_crashed

log = logging.getLogger("streamproc")
STAGES = ("ingest", "windows", "annotate")


@dataclass
class Running:
    """Handles on what a run started, for the lab's live view and summary."""

    expirer: Expirer | None = None
    #: the process's copy of the cluster's pods, shared by the stages that read pods
    cache: ClusterCache | None = None
    annotate: AnnotateStage | None = None
    follower: Follower | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _kube_or_none(
    settings: Settings, *, required: bool, context: str | None = None
) -> kube.Kube | None:
    try:
        return await kube.Kube.connect(
            settings.kubeconfig,
            timeout_s=settings.api_timeout_s,
            limits=kube.Limits.of(settings),
            context=context,
        )
    except Exception as exc:
        if required:
            raise
        log.warning(
            "no Kubernetes access (%s); workloads resolved from owner fields and names", exc
        )
        return None


def _cache_of(
    client: kube.Kube, running: Running, stop: asyncio.Event, tasks: list[asyncio.Task[None]]
) -> ClusterCache:
    """The process's cluster cache: made and started by the first stage that needs it."""
    if running.cache is None:
        running.cache = _started_cache(client, stop, tasks, "cluster-cache")
    return running.cache


def _started_cache(
    client: kube.Kube, stop: asyncio.Event, tasks: list[asyncio.Task[None]], name: str
) -> ClusterCache:
    """A cluster cache kept current by a task of its own until ``stop``."""
    cache = ClusterCache(client)
    tasks.append(asyncio.create_task(cache.run(stop), name=name))
    return cache


async def _start_annotate(
    settings: Settings,
    topologies: Sequence[Topology],
    stop: asyncio.Event,
    running: Running,
    cleanups: list[Callable[[], Awaitable[None]]],
) -> list[asyncio.Task[None]]:
    """The annotator and the expirer, sharing one API connection, its limits and the audit."""
    client = await _kube_or_none(settings, required=True)
    assert client is not None
    cleanups.append(client.close)
    tasks: list[asyncio.Task[None]] = []
    cache = _cache_of(client, running, stop, tasks)
    resolver = WorkloadResolver(
        client,
        cache_size=settings.resolver_cache_size,
        ttl_s=settings.resolver_cache_ttl_s,
        cache=cache,
    )
    audit_producer = kafka.producer(settings)
    cleanups.append(audit_producer.stop)  # also when its start fails: it holds connections
    await audit_producer.start()
    auditor = auditing.KafkaAuditor(audit_producer, settings.topics.audit, cluster=settings.cluster)
    cleanups.append(auditor.flush)
    # what this replica expires and follows: the workloads of the action partitions it holds
    ownership = Ownership(kafka.partition_of)
    # every replica keeps the API server's time, so all read the pods' expiry times alike
    expirer = Expirer(
        client,
        resync_s=settings.expiry_resync_s,
        dry_run=settings.dry_run,
        auditor=auditor,
        clock=client.now,
        ownership=ownership,
        cache=cache,
    )
    budget = NodeBudget(expirer, settings.node_budget)  # one per process: both patch pods
    follower = Follower(
        client,
        resolver,
        topologies,
        expirer,
        auditor,
        budget=budget,
        ownership=ownership,
        cache=cache,
        clock=client.now,
    )
    annotator = Annotator(
        settings,
        topologies,
        client,
        resolver,
        expirer,
        auditor,
        follower,
        budget=budget,
        clock=client.now,
    )
    stage = AnnotateStage(settings, annotator, ownership)
    running.expirer, running.annotate, running.follower = expirer, stage, follower
    return [
        *tasks,
        asyncio.create_task(expirer.run(stop), name="expirer"),
        asyncio.create_task(stage.run(stop), name="annotate"),
        asyncio.create_task(follower.run(stop), name="follower"),
    ]


async def _ingestor(
    settings: Settings,
    topologies: Sequence[Topology],
    stop: asyncio.Event,
    running: Running,
    cleanups: list[Callable[[], Awaitable[None]]],
    tasks: list[asyncio.Task[None]],
) -> Ingestor:
    """Ingest with a resolver for this cluster and for each of ``--cluster-contexts``."""
    client = await _kube_or_none(settings, required=False)
    if client is not None:
        cleanups.append(client.close)

    def resolver(api: kube.Kube | None, cache: ClusterCache | None) -> WorkloadResolver:
        return WorkloadResolver(
            api,
            cache_size=settings.resolver_cache_size,
            ttl_s=settings.resolver_cache_ttl_s,
            lookups_per_s=settings.resolver_lookups_per_s,
            cache=cache,
        )

    clusters = {}
    for name, context in settings.contexts().items():
        other = await _kube_or_none(settings, required=True, context=context)
        assert other is not None
        cleanups.append(other.close)
        clusters[name] = resolver(other, _started_cache(other, stop, tasks, f"cache-{name}"))
    own = resolver(client, _cache_of(client, running, stop, tasks) if client else None)
    # record times are judged by the API server's time where ingest reaches it
    clock = client.now if client is not None else time.time
    return Ingestor(settings, topologies, own, clusters=clusters, clock=clock)


SCRATCH_PREFIX = "streamproc-windows-"


def _scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """Faust's scratch folder, named after this process; those of dead processes go first.

    A stage killed with SIGKILL (a crash, an OOM kill, a test) cannot remove its own folder,
    so the next one to start removes every folder whose process no longer runs.
    """
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{SCRATCH_PREFIX}*"):
        pid = old.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def stage_topics(
    settings: Settings, topologies: Sequence[Topology], stages: Sequence[str]
) -> list[str]:
    """The topics the given stages read or write, and so may create: nothing beyond them.

    A stage whose Kafka principal has least-privilege ACLs can then start on its own topics.
    """
    topics = settings.topics
    uses = {
        "ingest": [*(t.spec.source.topic for t in topologies), topics.tallies],
        "windows": [topics.tallies, topics.actions],
        "annotate": [settings.actions_topic, topics.audit],
    }
    names = [name for stage in stages for name in uses[stage]] + [topics.dead_letters]
    return list(dict.fromkeys(names))


async def run_stages(
    settings: Settings,
    topologies: Sequence[Topology],
    stages: Sequence[str],
    stop: asyncio.Event,
    running: Running | None = None,
) -> None:
    """Run the given stages until ``stop`` is set or one of them fails."""
    running = running or Running()
    if not await kafka.wait_for_broker(settings, stop):
        return  # asked to stop before Kafka ever answered: nothing was started
    await kafka.ensure_topics(
        settings,
        [
            kafka.TopicSpec(name, settings.partitions)
            for name in stage_topics(settings, topologies, stages)
        ],
    )
    cleanups: list[Callable[[], Awaitable[None]]] = []
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(kafka.watch_broker(settings, stop), name="kafka-watch")
    ]
    try:
        if "ingest" in stages:
            ingestor = await _ingestor(settings, topologies, stop, running, cleanups, tasks)
            tasks.append(asyncio.create_task(ingestor.run(stop), name="ingest"))
        if "windows" in stages:
            # Faust keeps table metadata on disk; state itself lives in the changelog topics.
            scratch = _scratch_dir()

            async def remove_scratch() -> None:
                scratch.cleanup()

            cleanups.append(remove_scratch)
            # Faust refuses a table whose changelog has other partitions than its source topic:
            # the tables follow the tallies topic as it is, whatever --partitions says now
            found = await kafka.partition_counts(settings, [settings.topics.tallies])
            partitions = found.get(settings.topics.tallies, settings.partitions)
            app = build_app(
                dataclasses.replace(settings, partitions=partitions), topologies, scratch.name
            )
            app.finalize()
            await app.start()
            cleanups.append(app.stop)
            tasks.append(asyncio.create_task(until_crashed(app, stop), name="windows"))
        if "annotate" in stages:
            tasks += await _start_annotate(settings, topologies, stop, running, cleanups)
        running.ready.set()
        log.info("running: %s", ", ".join(stages))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        await _stop_all(tasks, cleanups, settings.shutdown_timeout_s)


async def _stop_all(
    tasks: Sequence[asyncio.Task[None]],
    cleanups: Sequence[Callable[[], Awaitable[None]]],
    budget_s: float,
) -> None:
    """Let the stages finish their batch and commit, then close clients, within ``budget_s``.

    Most of the budget goes to the stages (a commit while the broker is slow); what is left
    is shared by the cleanups, each bounded, so a client that cannot reach its server is
    abandoned with a log line instead of holding up the exit.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s * 0.6
    if tasks:
        await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()))
    for task in tasks:
        if not task.done():
            log.warning(
                "%s did not finish in time; its uncommitted records will be re-read",
                task.get_name(),
            )
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    end = loop.time() + budget_s * 0.3
    for cleanup in reversed(cleanups):
        try:
            await asyncio.wait_for(cleanup(), timeout=max(0.1, end - loop.time()))
        except TimeoutError:
            log.warning(
                "stopping %s took too long; abandoned", getattr(cleanup, "__qualname__", cleanup)
            )
        except Exception as exc:
            log.warning("error while stopping: %s", exc)
