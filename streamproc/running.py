"""Starting and stopping stages: all three in one process (``run``) or each alone.

The stages never import each other; they meet only through Kafka topics and the cluster. This
module wires them to their clients, runs them until asked to stop, and stops every client it
started, in reverse order, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from streamproc import auditing, kafka, kube
from streamproc.annotating import Annotator
from streamproc.expiring import Expirer
from streamproc.following import Follower
from streamproc.ingesting import Ingestor
from streamproc.resolving import WorkloadResolver
from streamproc.settings import Settings
from streamproc.topologies import Topology
from streamproc.windowing import build_app

log = logging.getLogger("streamproc")
STAGES = ("ingest", "windows", "annotate")


@dataclass
class Running:
    """Handles on what a run started, for the lab's live view and summary."""

    expirer: Expirer | None = None
    annotator: Annotator | None = None
    follower: Follower | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _kube_or_none(settings: Settings, *, required: bool) -> kube.Kube | None:
    try:
        limits = kube.Limits(
            qps=settings.api_qps,
            burst=settings.api_burst,
            concurrency=settings.api_concurrency,
            events=settings.kube_events,
        )
        return await kube.Kube.connect(
            settings.kubeconfig, timeout_s=settings.api_timeout_s, limits=limits
        )
    except Exception as exc:
        if required:
            raise
        log.warning(
            "no Kubernetes access (%s); workloads resolved from owner fields and names", exc
        )
        return None


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
    resolver = WorkloadResolver(
        client, cache_size=settings.resolver_cache_size, ttl_s=settings.resolver_cache_ttl_s
    )
    audit_producer = kafka.producer(settings)
    await audit_producer.start()
    cleanups.append(audit_producer.stop)
    auditor = auditing.KafkaAuditor(audit_producer, settings.topics.audit)
    cleanups.append(auditor.flush)
    expirer = Expirer(
        client, resync_s=settings.expiry_resync_s, dry_run=settings.dry_run, auditor=auditor
    )
    follower = Follower(client, resolver, topologies, expirer, auditor)
    annotator = Annotator(settings, topologies, client, resolver, expirer, auditor, follower)
    running.expirer, running.annotator, running.follower = expirer, annotator, follower
    return [
        asyncio.create_task(expirer.run(stop)),
        asyncio.create_task(annotator.run(stop)),
        asyncio.create_task(follower.run(stop)),
    ]


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
        "annotate": [topics.actions, topics.audit],
    }
    names = [name for stage in stages for name in uses[stage]] + [topics.dead_letters]
    return list(dict.fromkeys(names))


async def run_stages(  # noqa: C901 - one place that starts and stops every stage
    settings: Settings,
    topologies: Sequence[Topology],
    stages: Sequence[str],
    stop: asyncio.Event,
    running: Running | None = None,
) -> None:
    """Run the given stages until ``stop`` is set or one of them fails."""
    running = running or Running()
    await kafka.wait_for_broker(settings)
    await kafka.ensure_topics(
        settings,
        [
            kafka.TopicSpec(name, settings.partitions)
            for name in stage_topics(settings, topologies, stages)
        ],
    )
    cleanups: list[Callable[[], Awaitable[None]]] = []
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(kafka.watch_broker(settings, stop))]
    try:
        if "ingest" in stages:
            client = await _kube_or_none(settings, required=False)
            if client is not None:
                cleanups.append(client.close)
            resolver = WorkloadResolver(
                client,
                cache_size=settings.resolver_cache_size,
                ttl_s=settings.resolver_cache_ttl_s,
                lookups_per_s=settings.resolver_lookups_per_s,
            )
            tasks.append(asyncio.create_task(Ingestor(settings, topologies, resolver).run(stop)))
        if "windows" in stages:
            # Faust keeps table metadata on disk; state itself lives in the changelog topics.
            scratch = tempfile.TemporaryDirectory(prefix="streamproc-windows-")

            async def remove_scratch() -> None:
                scratch.cleanup()

            cleanups.append(remove_scratch)
            app = build_app(settings, topologies, scratch.name)
            app.finalize()
            await app.start()
            cleanups.append(app.stop)
        if "annotate" in stages:
            tasks += await _start_annotate(settings, topologies, stop, running, cleanups)
        running.ready.set()
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=15)
            if not task.done():
                task.cancel()
        for cleanup in reversed(cleanups):
            try:
                await cleanup()
            except Exception as exc:
                log.warning("error while stopping: %s", exc)
