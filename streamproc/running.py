"""Starting and stopping stages: all three in one process (``run``) or each alone.

The stages never import each other; they meet only through Kafka topics and the cluster. This
module wires them to their clients, runs them until asked to stop, and stops every client it
started, in reverse order, whatever happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamproc import stopping
from streamproc.clients import kafka, kube, prometheus
from streamproc.cluster import marking
from streamproc.cluster.cache import ClusterCache
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.model import fleets, marks, seals
from streamproc.model.ownership import Ownership
from streamproc.model.topologies import Topology, resolve_backend
from streamproc.settings import Settings
from streamproc.stages.annotate import auditing
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer, concurrency_of
from streamproc.stages.annotate.filtering import FilterReconciler
from streamproc.stages.annotate.following import Follower
from streamproc.stages.annotate.loop import AnnotateStage
from streamproc.stages.annotate.node_budget import NodeBudget
from streamproc.stages.ingest import Ingestor
from streamproc.stages.windows import build_app, until_crashed

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


#: how often a stage still waiting for the API server says so again
API_WAIT_REPORT_S = 30.0


async def wait_for_api_server(
    client: kube.Kube, stop: asyncio.Event, *, report_every_s: float = API_WAIT_REPORT_S
) -> bool:
    """Wait until the API server answers, or ``stop`` is set; True when it answered.

    The annotator may start before the cluster is reachable (a control-plane upgrade, a VPN not
    yet up, a wrong server address). Starting its watches anyway would log a warning per watch
    every few seconds and say nothing of the cause; instead one line says what it waits for, and
    again every ``report_every_s``, as the wait for the broker does. Any answer ends the wait,
    a refusal too: the stages then meet it and explain it.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    next_report = began
    reported = False
    delay = 0.5
    while not stop.is_set():
        try:
            answered = await stopping.unless_stopped(client.server_version(), stop)
        except kube.Unavailable as exc:
            if loop.time() >= next_report:
                log.warning(
                    "waiting for the API server at %s%s (%s); check that the cluster is up and "
                    "that the kubeconfig's server address is right",
                    client.server,
                    f", for {loop.time() - began:.0f}s now" if reported else "",
                    exc,
                )
                next_report = loop.time() + report_every_s
                reported = True
        except kube.KubeError:
            return True  # it answered, if only to refuse
        else:
            return answered is not None
        await stopping.pause(stop, delay)
        delay = min(delay * 2, 5.0)
    return False


async def _start_annotate(
    settings: Settings,
    topologies: Sequence[Topology],
    stop: asyncio.Event,
    running: Running,
    client: kube.Kube,
    cleanups: list[Callable[[], Awaitable[None]]],
    tasks: list[asyncio.Task[None]],
    *,
    sealer: seals.Sealer | None = None,
) -> None:
    """The annotator and the expirer, sharing one API connection, its limits and the audit.

    Their tasks go into ``tasks`` as each starts, so whatever started is stopped, also when a
    later start fails.
    """
    # every part agrees on how each topology observes: its own backend, else the deployment's
    topologies = [resolve_backend(t, settings.observation_backend) for t in topologies]
    # one policy for every reader and writer of marks: the bounds, and the key that seals them
    policy = marks.Policy.of(topologies, sealer=sealer)
    cache = _cache_of(client, running, stop, tasks)
    resolver = WorkloadResolver(
        client,
        cache_size=settings.resolver_cache_size,
        ttl_s=settings.resolver_cache_ttl_s,
        cache=cache,
    )
    started = await kafka.start_when_reachable(
        settings, stop, lambda: (kafka.producer(settings),), "the audit producer was connecting"
    )
    if started is None:
        return  # asked to stop while Kafka was away
    (audit_producer,) = started
    cleanups.append(audit_producer.stop)
    auditor = auditing.KafkaAuditor(audit_producer, settings.topics.audit, cluster=settings.cluster)
    cleanups.append(auditor.flush)
    # what this replica expires and follows: the workloads of the action partitions it holds
    ownership = Ownership(kafka.partition_of)
    evidence_from = None
    if settings.prometheus_url:  # each expiry's network evidence is read there (docs/evidence.md)
        evidence_from = prometheus.Prometheus(
            settings.prometheus_url,
            timeout_s=settings.evidence_timeout_s,
            token_file=settings.prometheus_token_file,
            ca_file=settings.prometheus_ca_file,
        )
        cleanups.append(evidence_from.close)
    # every replica keeps the API server's time, so all read the pods' expiry times alike
    expirer = Expirer(
        client,
        resync_s=settings.expiry_resync_s,
        dry_run=settings.dry_run,
        auditor=auditor,
        clock=client.now,
        ownership=ownership,
        cache=cache,
        policy=policy,
        concurrency=concurrency_of(settings.api_concurrency),
        evidence_from=evidence_from,
        evidence_total_s=2 * settings.evidence_timeout_s,
        evidence_delay_s=settings.evidence_delay_s,
    )
    # acns-metric-filters: one task per process keeps ACNS's ContainerNetworkMetric the
    # projection of the observed pods, woken by every change the three below make
    filters = FilterReconciler(
        client,
        topologies,
        default_backend=settings.observation_backend,
        resync_s=settings.expiry_resync_s,
        dry_run=settings.dry_run,
        clock=client.now,
        policy=policy,
    )
    expirer.changed = filters.changed
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
        changed=filters.changed,
        policy=policy,
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
        changed=filters.changed,
        policy=policy,
    )
    stage = AnnotateStage(settings, annotator, ownership)
    running.expirer, running.annotate, running.follower = expirer, stage, follower
    if filters.enabled:
        tasks.append(asyncio.create_task(filters.run(stop), name="metric-filters"))
    tasks += [
        asyncio.create_task(expirer.run(stop), name="expirer"),
        asyncio.create_task(stage.run(stop), name="annotate"),
        asyncio.create_task(follower.run(stop), name="follower"),
    ]


async def _start_windows(
    settings: Settings,
    topologies: Sequence[Topology],
    stop: asyncio.Event,
    cleanups: list[Callable[[], Awaitable[None]]],
) -> asyncio.Task[None] | None:
    """The Faust app, started; its task ends when ``stop`` is set or raises if the app crashed.

    None when asked to stop before the app started.
    """
    # Faust keeps table metadata on disk; state itself lives in the changelog topics.
    scratch = _scratch_dir()

    async def remove_scratch() -> None:
        scratch.cleanup()

    cleanups.append(remove_scratch)
    # Faust refuses a table whose changelog has other partitions than its source topic: the
    # tables follow the tallies topic as it is, whatever --partitions says now
    counts = functools.partial(kafka.partition_counts, settings, [settings.topics.tallies])
    found = await kafka.when_reachable(settings, stop, counts, "topics were described")
    if found is None:
        return None  # asked to stop while Kafka was away
    partitions = found.get(settings.topics.tallies, settings.partitions)
    app = build_app(dataclasses.replace(settings, partitions=partitions), topologies, scratch.name)
    app.finalize()
    await app.start()
    cleanups.append(app.stop)
    return asyncio.create_task(until_crashed(app, stop), name="windows")


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
        "windows": [
            topics.tallies,
            *(settings.actions_topic_of(c) for c in fleets.Fleet.of(settings).clusters),
        ],
        "annotate": [settings.actions_topic, topics.audit],
    }
    names = [name for stage in stages for name in uses[stage]] + [topics.dead_letters]
    return list(dict.fromkeys(names))


async def _ready(
    settings: Settings,
    topologies: Sequence[Topology],
    stages: Sequence[str],
    stop: asyncio.Event,
    api: kube.Kube | None,
) -> bool:
    """Wait for Kafka and the API server, then create the stages' topics; False if stopped."""
    if not await kafka.wait_for_broker(settings, stop):
        return False
    if api is not None and not await wait_for_api_server(api, stop):
        return False
    specs = [
        kafka.TopicSpec(name, settings.partitions)
        for name in stage_topics(settings, topologies, stages)
    ]

    async def create() -> bool:
        await kafka.ensure_topics(settings, specs)
        return True

    return await kafka.when_reachable(settings, stop, create, "topics were checked") is not None


async def run_stages(
    settings: Settings,
    topologies: Sequence[Topology],
    stages: Sequence[str],
    stop: asyncio.Event,
    running: Running | None = None,
) -> None:
    """Run the given stages until ``stop`` is set or one of them fails."""
    running = running or Running()
    cleanups: list[Callable[[], Awaitable[None]]] = []
    tasks: list[asyncio.Task[None]] = []
    # Credentials are read before waiting for anything: without them the annotator cannot run,
    # and a person hears so at once, in one line, not after the broker answered. So is the key
    # that seals marks: every reader and writer of marks gets it through one policy
    sealer = marking.sealer(settings.mark_key_file) if "annotate" in stages else None
    api = await _kube_or_none(settings, required=True) if "annotate" in stages else None
    if api is not None:
        cleanups.append(api.close)
    try:
        if not await _ready(settings, topologies, stages, stop, api):
            return  # asked to stop before Kafka (or the API server) answered: nothing started
        tasks.append(asyncio.create_task(kafka.watch_broker(settings, stop), name="kafka-watch"))
        if "ingest" in stages:
            ingestor = await _ingestor(settings, topologies, stop, running, cleanups, tasks)
            tasks.append(asyncio.create_task(ingestor.run(stop), name="ingest"))
        if "windows" in stages and (
            windows := await _start_windows(settings, topologies, stop, cleanups)
        ):
            tasks.append(windows)
        if "annotate" in stages:
            assert api is not None
            await _start_annotate(
                settings, topologies, stop, running, api, cleanups, tasks, sealer=sealer
            )
        if stop.is_set():
            return  # asked to stop while the stages were starting
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
