"""Stage 3, annotate: actions in, pod annotations out, offsets committed only after they landed.

For each action the annotator finds the workload's pods as they are now, merge-patches each pod's
metadata with the topology's annotations plus bookkeeping (``patches.observe``), and hands the
expiry to the expirer. Annotations come from the annotator's own loaded topology, never from the
action's payload, so a record forged on the actions topic cannot choose what gets written. A
batch's offsets are committed only once every action in it was applied or deliberately skipped:
while the API server is down the batch is retried, not dropped (at-least-once; patches are
idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from streamproc import auditing, captures, conventions, kafka, kube, metrics, patches
from streamproc.actions import Action, ActionError
from streamproc.resolving import WorkloadResolver
from streamproc.settings import Settings
from streamproc.topologies import Topology
from streamproc.workloads import WorkloadRef

log = logging.getLogger("streamproc.annotate")
STAGE = "annotate"
#: the longest a batch waits between attempts while the API server is away: also the most an
#: action can lag behind the API server's return. One pod list per 8 s is nothing to a server.
_BACKOFF_MAX_S = 8.0


class Scheduler(Protocol):
    """Where the annotator hands expiries (the expirer), and what it knows is observed."""

    def schedule(
        self, namespace: str, pod: str, until: float, topology: str, node: str = ""
    ) -> None:
        """Remember when a pod's observation ends (and on which node the pod runs)."""

    def observed_on(self, node: str) -> int:
        """Pods under observation on ``node``."""

    def observing_pod(self, namespace: str, pod: str) -> bool:
        """Whether the pod is under observation now."""


def _target(action: Action, topology: Topology) -> WorkloadRef:
    """What the action observes: the whole workload, or only the pod that fired (scope: pod)."""
    if topology.spec.action.scope == "pod" or action.kind == "Pod":
        return WorkloadRef(action.namespace, "Pod", action.pod, "api")
    return WorkloadRef(action.namespace, action.kind, action.name, "api")


class NodeBudget:
    """Retina's per-node filter map as a budget of observed pods per node (``--node-budget``).

    Retina's agent keeps the IPs of observed pods in an eBPF map of ``filterMapMaxEntries``
    per node and fails past it, so a pod not yet observed is refused on a node that already
    has ``limit`` observed pods; pods already observed (an extension) are always admitted.
    Slots are reserved when admitted, before any await, and released once the patches are
    done (the scheduler counts them by then), so workloads applied concurrently, by the
    annotator and the follower alike, cannot overshoot the budget together. 0: no limit.
    """

    def __init__(self, scheduler: Scheduler, limit: int) -> None:
        self._scheduler = scheduler
        self.limit = limit
        self._reserved: Counter[str] = Counter()

    def admit(
        self, pods: Sequence[kube.Json]
    ) -> tuple[list[kube.Json], list[tuple[str, str]], Counter[str]]:
        """Pods that may be observed, (pod, node) of those refused, and the slots reserved."""
        reserved: Counter[str] = Counter()
        if self.limit <= 0:
            return list(pods), [], reserved
        keep, refused = [], []
        for pod in pods:
            meta = pod.get("metadata") or {}
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            namespace, name = str(meta.get("namespace") or ""), str(meta.get("name"))
            if not node or self._scheduler.observing_pod(namespace, name):
                keep.append(pod)
            elif self._scheduler.observed_on(node) + self._reserved[node] >= self.limit:
                refused.append((name, node))
            else:
                self._reserved[node] += 1
                reserved[node] += 1
                keep.append(pod)
        return keep, refused, reserved

    def release(self, reserved: Counter[str]) -> None:
        """Give back the slots of :meth:`admit` once the patches are done."""
        self._reserved.subtract(reserved)

    def report(
        self,
        auditor: auditing.Auditor,
        refused: Sequence[tuple[str, str]],
        *,
        topology: str,
        rule: str,
        namespace: str,
        kind: str,
        name: str,
        action: str | None = None,
    ) -> None:
        """Say which pods were refused: a log line, the metric and an audit record."""
        metrics.pods_refused.labels(topology=topology, reason="node-budget").inc(len(refused))
        log.warning(
            "%s/%s/%s: %d pods not observed, their node already has %d observed pods "
            "(--node-budget; Retina's filter map holds filterMapMaxEntries per node): %s",
            namespace,
            kind,
            name,
            len(refused),
            self.limit,
            ", ".join(f"{pod} on {node}" for pod, node in refused),
        )
        auditor.record(
            result="refused-node-budget",
            **({"action": action} if action else {}),
            topology=topology,
            rule=rule,
            namespace=namespace,
            kind=kind,
            name=name,
            pods=[pod for pod, _ in refused],
            nodes=sorted({node for _, node in refused}),
            node_budget=self.limit,
        )


class Follows(Protocol):
    """Who keeps new pods of an observed workload observed (the follower)."""

    def follow(
        self,
        namespace: str,
        kind: str,
        name: str,
        *,
        until: float,
        topology: str,
        rule: str,
        action_id: str,
    ) -> None:
        """Follow a workload until ``until``."""

    def observing(self, topology: str) -> set[tuple[str, str, str]]:
        """Workloads under an unexpired observation of ``topology``."""


class Annotator:
    """Applies actions to the cluster."""

    def __init__(
        self,
        settings: Settings,
        topologies: Sequence[Topology],
        client: kube.Kube,
        resolver: WorkloadResolver,
        scheduler: Scheduler,
        auditor: auditing.Auditor | None = None,
        follower: Follows | None = None,
        budget: NodeBudget | None = None,
    ) -> None:
        self.settings = settings
        self.topologies = {t.name: t for t in topologies}
        self.kube = client
        self.resolver = resolver
        self.scheduler = scheduler
        self.auditor = auditor or auditing.NullAuditor()
        self.follower = follower
        self._in_flight = asyncio.Semaphore(settings.actions_in_flight)
        #: pods this annotator opened or extended an observation on (the lab reports it).
        self.observed_pods: set[tuple[str, str]] = set()
        #: shared with the follower where both run (``running``)
        self.budget = budget or NodeBudget(scheduler, settings.node_budget)
        self._consumer: kafka.AIOKafkaConsumer | None = None

    @property
    def joined(self) -> bool:
        """Whether the consumer group gave this annotator partitions to read (it is ready)."""
        return self._consumer is not None and bool(self._consumer.assignment())

    async def apply(self, action: Action, listing: list[kube.Json] | None = None) -> str:
        """Apply one action; the outcome is a short code (also the metric and audit result).

        ``listing`` is the namespace's pods as listed for this batch, if the caller has it.
        """
        touched: list[str] = []
        until = 0.0
        # audited only once the outcome is known: an error not listed below (a cancellation at
        # shutdown, a bug) propagates as itself, unaudited, and the batch is read again
        result = ""
        topology = self.topologies.get(action.topology)
        try:
            result, touched, until = await self._apply(action, listing)
        except kube.Forbidden:
            result = "forbidden"
            raise
        except kube.Unavailable:
            result = ""  # retried as part of the batch; audited when it finishes
            raise
        except kube.KubeError:
            result = "failed"
            raise
        finally:
            if result:
                self.auditor.record(
                    result=result,
                    action=action.id,
                    topology=action.topology,
                    rule=action.rule,
                    detections=action.count,
                    uuids=action.uuids,
                    namespace=action.namespace,
                    kind=action.kind,
                    name=action.name,
                    pods=touched,
                    annotations=dict(topology.spec.action.annotate) if topology else {},
                    expires_at=conventions.format_time(until) if until else None,
                    dry_run=result == "dry-run",
                )
        return result

    async def _apply(  # noqa: C901, PLR0912 - guard clauses in a row, one per outcome
        self, action: Action, listing: list[kube.Json] | None
    ) -> tuple[str, list[str], float]:
        topology = self.topologies.get(action.topology)
        if topology is None:
            return "unknown-topology", [], 0.0
        until, skipped = self._until(action, topology)
        if skipped == "dry-run" and topology.spec.action.scope != "namespace":
            # say what would have been written where: the pods as they are now
            would = await self.resolver.pods_of(_target(action, topology), listing)
            return skipped, [str((p.get("metadata") or {}).get("name")) for p in would], until
        if skipped:
            return skipped, [], until
        if topology.spec.action.scope == "namespace":
            return await self._observe_namespace(action, topology, until)
        target = _target(action, topology)
        if self._over_cap(target, topology):
            log.warning(
                "%s: refused, %s already observes %d workloads (maxObservations)",
                action.id,
                topology.name,
                topology.spec.action.max_observations,
            )
            return "refused-cap", [], 0.0
        pods = await self.resolver.pods_of(target, listing)
        if not pods:
            return "no-pods", [], 0.0
        pods, refused, reserved = self.budget.admit(pods)
        if refused:
            self.budget.report(
                self.auditor,
                refused,
                topology=topology.name,
                rule=action.rule,
                namespace=action.namespace,
                kind=action.kind,
                name=action.name,
                action=action.id,
            )
        if not pods:
            return "refused-node-budget", [], 0.0
        try:
            # Every pod gets its answer before the action's outcome is decided: no patch is
            # left running unobserved when another pod's patch fails.
            outcomes = await asyncio.gather(
                *(self._observe_pod(pod, topology, action, until) for pod in pods),
                return_exceptions=True,
            )
        finally:
            self.budget.release(reserved)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        results = [str(o) for o in outcomes]
        names = [str((p.get("metadata") or {}).get("name")) for p in pods]
        touched = [n for n, r in zip(names, results, strict=True) if r in ("opened", "extended")]
        if "unchanged" in results or touched:
            self._follow(target, until, topology, action)
        if touched:
            metrics.detection_to_annotation.observe(
                max(0.0, time.time() - action.first_append_ms / 1000)
            )
            await self._capture(action, topology, pods)
            return ("applied" if "opened" in results else "extended"), touched, until
        if "unchanged" in results:
            return "already-applied", [], until
        return "no-pods", [], 0.0

    async def _observe_namespace(
        self, action: Action, topology: Topology, until: float
    ) -> tuple[str, list[str], float]:
        """scope: namespace: the Namespace object itself, which Retina honours like a pod."""
        namespace = await self.kube.get_observable("", action.namespace)
        outcome = await self._observe_pod(namespace, topology, action, until)
        if outcome in ("opened", "extended"):
            return ("applied" if outcome == "opened" else "extended"), [action.namespace], until
        return ("already-applied" if outcome == "unchanged" else "no-pods"), [], until

    def _until(self, action: Action, topology: Topology) -> tuple[float, str]:
        """When the observation would end, or why nothing is written at all."""
        now = time.time()
        ttl = topology.spec.action.ttl
        until = min(action.window_end + ttl, now + ttl)
        if until <= now:
            return 0.0, "expired-before-apply"
        if self.settings.dry_run or topology.spec.dry_run:
            log.info(
                "dry run: would observe %s/%s/%s until %s",
                action.namespace,
                action.kind,
                action.name,
                conventions.format_time(until),
            )
            return until, "dry-run"
        return until, ""

    async def _capture(self, action: Action, topology: Topology, pods: list[kube.Json]) -> None:
        """Create the topology's Retina Capture when the window's priority reaches its bound."""
        spec = topology.spec.action.capture
        if spec is None or not spec.priority.admits(action.priority):
            return
        capture_target = captures.target(spec, action.namespace, pods)
        result = "created"
        if not capture_target:
            result = "no-selector"  # an empty podSelector would capture the whole namespace
        else:
            body = captures.body(
                action_id=action.id,
                namespace=action.namespace,
                capture_target=capture_target,
                capture=spec,
                topology=topology.name,
                rule=action.rule,
            )
            try:
                await self.kube.create_capture(action.namespace, body)
            except kube.Conflict:
                result = "exists"  # this window's capture was created before (a replay)
        metrics.patches.labels(op="capture", result=result).inc()
        self.auditor.record(
            result=f"capture-{result}",
            action=action.id,
            topology=topology.name,
            rule=action.rule,
            namespace=action.namespace,
            kind=action.kind,
            name=action.name,
            capture=captures.name_for(action.id),
            target=capture_target,
            duration_s=spec.duration,
            max_capture_size_mb=spec.max_capture_size_mb,
        )

    def _over_cap(self, target: WorkloadRef, topology: Topology) -> bool:
        if self.follower is None:
            return False
        active = self.follower.observing(topology.name)
        key = (target.namespace, target.kind, target.name)
        return key not in active and len(active) >= topology.spec.action.max_observations

    def _follow(
        self, target: WorkloadRef, until: float, topology: Topology, action: Action
    ) -> None:
        if self.follower is not None:
            self.follower.follow(
                target.namespace,
                target.kind,
                target.name,
                until=until,
                topology=topology.name,
                rule=action.rule,
                action_id=action.id,
            )

    async def _observe_pod(
        self, pod: kube.Json, topology: Topology, action: Action, until: float
    ) -> str:
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name"))
        for _attempt in range(3):
            patch = patches.observe(
                pod,
                annotations=topology.spec.action.annotate,
                until=until,
                topology=topology.name,
                rule=action.rule,
                action_id=action.id,
            )
            if patch is None:
                metrics.patches.labels(op="observe", result="unchanged").inc()
                self.scheduler.schedule(
                    namespace, name, patches.expires_at(pod) or until, topology.name
                )
                return "unchanged"
            if patch.foreign:
                log.warning(
                    "%s/%s: %s set by someone else to another value; left alone",
                    namespace,
                    name,
                    ", ".join(patch.foreign),
                )
            try:
                await self.kube.write_patch(namespace, name, patch)
            except kube.Conflict:
                metrics.patches.labels(op="observe", result="conflict").inc()
                pod = await self.kube.get_observable(namespace, name)
                continue
            except kube.NotFound:
                metrics.patches.labels(op="observe", result="not-found").inc()
                return "not-found"
            metrics.patches.labels(op="observe", result="ok").inc()
            current = (pod.get("metadata") or {}).get("annotations") or {}
            opened = conventions.EXPIRES_AT not in current
            self.kube.post_event(
                pod,
                "ObservationStarted" if opened else "ObservationExtended",
                f"{', '.join(f'{k}={v}' for k, v in topology.spec.action.annotate.items())} "
                f"until {conventions.format_time(until)} (topology {topology.name}, "
                f"rule {action.rule!r})",
            )
            self.observed_pods.add((namespace, name))
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            self.scheduler.schedule(namespace, name, until, topology.name, node)
            return "opened" if opened else "extended"
        return "conflict"

    async def handle(self, actions: Sequence[Action]) -> None:
        """Apply a batch: workloads concurrently, each workload's actions in order.

        Raises the first kube.Unavailable after every workload had its turn, so the caller can
        retry the batch as a whole (what already landed is then a no-op).
        """
        by_workload: dict[str, list[Action]] = {}
        seen: set[str] = set()
        for action in actions:
            if action.id in seen:
                metrics.actions_handled.labels(result="duplicate").inc()
                continue  # a re-delivery of an action already in this batch
            seen.add(action.id)
            by_workload.setdefault(f"{action.namespace}/{action.kind}/{action.name}", []).append(
                action
            )
        # One pod list per namespace for the whole batch; a pod deleted since is a 404 later.
        # Beside it, the ReplicaSet each Deployment's firing pod names (no second round trip).
        namespaces = sorted({a.namespace for a in actions if a.kind != "Pod"})
        guesses = {(a.namespace, a.pod) for a in actions if self._will_walk_owners(a)}
        found = await asyncio.gather(
            *(self._list(ns) for ns in namespaces),
            *(self._prefetch(ns, pod) for ns, pod in guesses),
        )
        listings = dict(zip(namespaces, found[: len(namespaces)], strict=True))
        outcomes = await asyncio.gather(
            *(self._handle_in_order(group, listings) for group in by_workload.values()),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _will_walk_owners(self, action: Action) -> bool:
        """Whether applying the action looks for a Deployment's pods, through a pod that exists.

        Only for workloads ingest resolved through the API (so the firing pod was there, with
        a controller): a made-up workload would cost a wasted GET per action, and a flood of
        them (50,000 in ``bench/flood.py``) would queue real work behind those GETs. Ingest's
        lookup budget bounds how many such actions there can be.
        """
        topology = self.topologies.get(action.topology)
        return (
            topology is not None
            and action.kind == "Deployment"
            and action.resolved_by == "api"
            and bool(action.pod)
            and topology.spec.action.scope == "workload"
            and not self._over_cap(_target(action, topology), topology)
        )

    async def _prefetch(self, namespace: str, pod: str) -> None:
        async with self._in_flight:
            await self.resolver.prefetch_replicaset(namespace, pod)

    async def _list(self, namespace: str) -> list[kube.Json] | None:
        async with self._in_flight:
            try:
                return await self.kube.list_pods(namespace)
            except kube.Forbidden:
                return None  # reported per action below, with the missing permission

    async def _handle_in_order(
        self, actions: list[Action], listings: dict[str, list[kube.Json] | None]
    ) -> None:
        for index, action in enumerate(actions):
            # The batch's listing is only fresh for the workload's first action; later ones
            # (later windows) read the pods again rather than patch against stale versions.
            listing = listings.get(action.namespace) if index == 0 else None
            async with self._in_flight:
                try:
                    result = await self.apply(action, listing)
                except kube.Forbidden as exc:
                    result = "forbidden"
                    log.error(  # noqa: TRY400 - an expected refusal; a traceback adds nothing
                        "RBAC refused %s: %s (needs get/list/patch on pods)", action.id, exc
                    )
                except kube.Unavailable:
                    raise  # transient: the batch stays uncommitted and is retried
                except kube.KubeError as exc:
                    result = "failed"
                    log.error("action %s failed permanently: %s", action.id, exc)  # noqa: TRY400
            metrics.actions_handled.labels(result=result).inc()
            log.info("action %s: %s", action.id, result)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume actions until ``stop``; commit after each batch is applied."""
        consumer = kafka.consumer(
            self.settings, [self.settings.topics.actions], self.settings.groups.annotate
        )
        producer = kafka.producer(self.settings)
        async with kafka.started(producer, consumer):
            self._consumer = consumer
            await self._consume(consumer, producer, stop)

    async def _consume(
        self,
        consumer: kafka.AIOKafkaConsumer,
        producer: kafka.AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> None:
        # the batch's audit records are durable before its actions are acknowledged
        committer = kafka.Committer(consumer, STAGE, before=self.auditor.flush)
        reader = kafka.Reader(consumer, self.settings, STAGE)
        dead_letters = self.settings.topics.dead_letters
        try:
            while not stop.is_set():
                batch, bad = await reader.getmany(timeout_ms=200, max_records=2000)
                metrics.consumer_lag.labels(stage=STAGE).set(kafka.batch_lag(consumer, batch))
                if bad:
                    # an undecodable batch cannot be applied: dead-lettered, then passed
                    await kafka.dead_letter_batches(producer, dead_letters, bad, STAGE)
                if not batch:
                    if bad:
                        committer.commit(
                            {kafka.TopicPartition(b.topic, b.partition): b.next_offset for b in bad}
                        )
                    continue
                records = [r for rs in batch.values() for r in rs]
                metrics.records_consumed.labels(stage=STAGE).inc(len(records))
                actions: list[Action] = []
                for record in records:
                    try:
                        actions.append(Action.decode(record.value or b""))
                    except ActionError as exc:
                        metrics.dead_letters.labels(stage=STAGE, reason="invalid-action").inc()
                        await producer.send_and_wait(
                            dead_letters,
                            value=record.value,
                            key=record.key,
                            headers=kafka.dead_letter_headers(
                                STAGE,
                                "invalid-action",
                                str(exc),
                                record.topic,
                                record.partition,
                                record.offset,
                            ),
                        )
                await self._apply_until_done(actions, stop)
                offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items()}
                offsets |= {kafka.TopicPartition(b.topic, b.partition): b.next_offset for b in bad}
                committer.commit(offsets)
        finally:
            await committer.close()

    async def _apply_until_done(self, actions: list[Action], stop: asyncio.Event) -> None:
        delay = 1.0
        while True:
            try:
                await self.handle(actions)
            except kube.Unavailable as exc:
                metrics.stage_errors.labels(stage=STAGE, error=type(exc).__name__).inc()
                log.warning(
                    "API unavailable (%s); batch kept uncommitted, retrying in %.0fs", exc, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    raise
                delay = min(delay * 2, _BACKOFF_MAX_S)
            else:
                return
