"""Applying an action: the workload's pods as they are now get the topology's observation.

For each action the annotator finds the workload's pods, merge-patches each pod's metadata
with the topology's annotations plus bookkeeping (``patches.observe``), and hands the expiry to
the expirer. Annotations come from the annotator's own loaded topology, never from the action's
payload, so a record forged on the actions topic cannot choose what gets written, and before
anything is written each action is checked against that topology's rules (:mod:`guarding`): the
annotator holds the write permissions, so it is the last line. Reading actions from Kafka,
retrying and committing is the stage's job (:mod:`streamproc.annotating`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from streamproc.clients import kube, metrics
from streamproc.cluster import marking
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.model import conventions, guarding, marks, outcomes, patches
from streamproc.model.actions import Action
from streamproc.model.durations import format_duration
from streamproc.model.topologies import ACNS, Topology, resolve_backend
from streamproc.model.workloads import WorkloadRef
from streamproc.settings import Settings
from streamproc.stages.annotate import auditing, capturing
from streamproc.stages.annotate.node_budget import NodeBudget, Scheduler

log = logging.getLogger("streamproc.annotate")
#: per-pod outcomes after which the pod is under observation
_OBSERVED: tuple[outcomes.PodOutcome, ...] = ("opened", "extended", "not-due", "unchanged")


def _target(action: Action, topology: Topology) -> WorkloadRef:
    """What the action observes: the whole workload, or only the pod that fired (scope: pod)."""
    if topology.spec.action.scope == "pod" or action.kind == "Pod":
        return WorkloadRef(action.namespace, "Pod", action.pod, "api")
    return WorkloadRef(action.namespace, action.kind, action.name, "api")


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
        level: str = "",
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
        *,
        clock: Callable[[], float] = time.time,
        changed: Callable[[str], None] | None = None,
        policy: marks.Policy | None = None,
    ) -> None:
        #: what "now" is (tests and the extension benchmark move it instead of waiting)
        self.clock = clock
        self.settings = settings
        #: each with its backend settled (its own, else ``--observation-backend``)
        self.topologies = {
            t.name: resolve_backend(t, settings.observation_backend) for t in topologies
        }
        #: told the topology whenever a pod's observation opened or was extended (the
        #: ``acns-metric-filters`` backend then reconciles its ContainerNetworkMetric)
        self._changed = changed or (lambda _topology: None)
        #: what the topologies write: the bounds the pods' own marks are read against, and the
        #: key that seals them (``running`` builds one for every part of the stage)
        self.policy = policy or marks.Policy.of(topologies)
        self.kube = client
        self.resolver = resolver
        self.scheduler = scheduler
        #: each pod's observation start as scheduled, until its action's record names it
        self._starts: dict[tuple[str, str], float] = {}
        self.auditor = auditor or auditing.NullAuditor()
        self.follower = follower
        self._in_flight = asyncio.Semaphore(settings.actions_in_flight)
        #: topology -> workloads being opened right now: they count against maxObservations
        #: from the check on, so a batch of workloads applied concurrently cannot all pass it
        self._opening: dict[str, set[tuple[str, str, str]]] = {}
        #: pods this annotator opened or extended an observation on (the lab reports it).
        self.observed_pods: set[tuple[str, str]] = set()
        #: shared with the follower where both run (``running``)
        self.budget = budget or NodeBudget(scheduler, settings.node_budget)
        self._refusals_logged: set[str] = set()

    def refuse(self, action: Action) -> tuple[guarding.Refusal, str] | None:
        """Why this annotator's own topology forbids ``action`` (counted, logged), or None."""
        refused = guarding.refusal(action, self.topologies.get(action.topology))
        if refused is not None:
            reason, detail = refused
            metrics.actions_refused.labels(reason=reason).inc()
            # the first of each reason is a warning; a flood of forged records is not a log flood
            level = logging.INFO if reason in self._refusals_logged else logging.WARNING
            self._refusals_logged.add(reason)
            log.log(level, "refused action %s: %s (%s)", action.id[:200], reason, detail)
        return refused

    async def apply(
        self, action: Action, listing: list[kube.Json] | None = None
    ) -> outcomes.Applied:
        """Apply one action; the outcome is a short code (also the metric and audit result).

        ``listing`` is the namespace's pods as listed for this batch, if the caller has it.
        """
        touched: list[str] = []
        until = 0.0
        # audited only once the outcome is known: an error not listed below (a cancellation at
        # shutdown, a bug) propagates as itself, unaudited, and the batch is read again
        result: outcomes.Applied | None = None
        topology = self.topologies.get(action.topology)
        try:
            result, touched, until = await self._apply(action, listing)
            if result == "applied" and topology is not None:
                level = topology.spec.action.level_of(action.level)
                metrics.observations_opened.labels(topology=topology.name, level=level).inc()
        except kube.Forbidden:
            result = "forbidden"
            raise
        except kube.Unavailable:
            result = None  # retried as part of the batch; audited when it finishes
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
                    annotations=topology.spec.action.pod_annotations() if topology else {},
                    expires_at=conventions.format_time(until) if until else None,
                    **self._observed_since(action.namespace, touched),
                    dry_run=result == "dry-run",
                    **_level_fields(topology, action),
                )
        return result

    def _observed_since(self, namespace: str, pods: list[str]) -> dict[str, Any]:
        """Each touched pod's observation start (RFC 3339), as streamproc scheduled it.

        The record keeps it whatever the pod's tenant edits in ``observed-since`` later.
        """
        starts = {p: self._starts.pop((namespace, p), None) for p in pods}
        known = {p: conventions.format_time(s) for p, s in starts.items() if s is not None}
        return {"observed_since": known} if known else {}

    async def _apply(
        self, action: Action, listing: list[kube.Json] | None
    ) -> tuple[outcomes.Applied, list[str], float]:
        refused = self.refuse(action)
        topology = self.topologies.get(action.topology)
        if refused is not None or topology is None:
            return refused[0] if refused else "unknown-topology", [], 0.0
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
        opening = self._opening.setdefault(topology.name, set())
        key = (target.namespace, target.kind, target.name)
        opening.add(key)  # no await since the check: the slot is this action's
        try:
            return await self._observe_workload(action, topology, target, until, listing)
        finally:
            opening.discard(key)

    async def _observe_workload(  # noqa: C901 - one outcome per branch
        self,
        action: Action,
        topology: Topology,
        target: WorkloadRef,
        until: float,
        listing: list[kube.Json] | None,
    ) -> tuple[outcomes.Applied, list[str], float]:
        pods = await self.resolver.pods_of(target, listing)
        if not pods:
            return "no-pods", [], 0.0
        workload = WorkloadRef(action.namespace, action.kind, action.name, "api")
        pods, reserved = self.budget.admit(
            pods, self.auditor, workload, topology=topology.name, rule=action.rule, action=action.id
        )
        if not pods:
            return "refused-node-budget", [], 0.0
        try:
            # Every pod gets its answer before the action's outcome is decided: no patch is
            # left running unobserved when another pod's patch fails.
            answers = await asyncio.gather(
                *(self._observe_pod(pod, topology, action, until) for pod in pods),
                return_exceptions=True,
            )
        finally:
            self.budget.release(reserved)
        done: list[tuple[outcomes.PodOutcome, float]] = []
        for outcome in answers:
            if isinstance(outcome, BaseException):
                raise outcome
            done.append(outcome)
        results = [r for r, _ in done]
        names = [str((p.get("metadata") or {}).get("name")) for p in pods]
        touched = [n for n, r in zip(names, results, strict=True) if r in ("opened", "extended")]
        # the workload is observed as long as its longest-observed pod (what new pods get)
        lasting = max((u for r, u in done if r in _OBSERVED), default=0.0)
        if lasting:
            self._follow(target, lasting, topology, action)
        if touched:
            metrics.detection_to_annotation.observe(
                max(0.0, time.time() - action.first_append_ms / 1000)
            )
        if touched or "not-due" in results:
            # a window strong enough for a capture gets one, due extension or not
            await capturing.capture(self.kube, self.auditor, action, topology, pods)
        if touched:
            return ("applied" if "opened" in results else "extended"), touched, until
        if "not-due" in results:
            return "extension-not-due", [], lasting
        if "unchanged" in results:
            return "already-applied", [], lasting
        return "no-pods", [], 0.0

    async def _observe_namespace(
        self, action: Action, topology: Topology, until: float
    ) -> tuple[outcomes.Applied, list[str], float]:
        """scope: namespace: the Namespace object itself, which Retina honours like a pod."""
        ref = kube.ObjectRef.namespace_object(action.namespace)
        outcome, lasting = await self._observe_pod(
            await self.kube.get_observable(ref), topology, action, until
        )
        if outcome in ("opened", "extended"):
            return ("applied" if outcome == "opened" else "extended"), [action.namespace], until
        kept: dict[outcomes.PodOutcome, outcomes.Applied] = {
            "not-due": "extension-not-due",
            "unchanged": "already-applied",
        }
        return kept.get(outcome, "no-pods"), [], lasting

    def _until(self, action: Action, topology: Topology) -> tuple[float, outcomes.Skipped | None]:
        """When the observation would end, or why nothing is written at all.

        It ends a TTL after the window, by the action's own times, and never more than a TTL
        from now. Those times come from other clocks (Kafka records', ingest's) that may
        disagree with this one by up to ``--clock-tolerance``, so a window that ended less than
        that ago cannot be told from one ending now: it is observed a full TTL from now. Only an
        action later than that is shortened by its lateness, or expired before apply.
        """
        now = self.clock()
        ttl = topology.spec.action.ttl_at(action.level)
        timely = action.window_end >= now - self.settings.tolerance_s
        until = now + ttl if timely else action.window_end + ttl
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
        return until, None

    def _over_cap(self, target: WorkloadRef, topology: Topology) -> bool:
        if self.follower is None:
            return False
        active = self.follower.observing(topology.name) | self._opening.get(topology.name, set())
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
                level=_level_text(topology, action),
            )

    def _extend_within(self, topology: Topology, action: Action) -> float:
        """How much observation left makes an extension due (lazy extension).

        A share of the TTL (``--extend-below``), but at least two windows: a workload that keeps
        offending qualifies again within about one window, and finds its observation still on.
        """
        spec = topology.spec
        ttl = spec.action.ttl_at(action.level)
        return max(ttl * self.settings.extend_below, 2 * spec.window.size)

    async def _observe_pod(
        self, pod: kube.Json, topology: Topology, action: Action, until: float
    ) -> tuple[outcomes.PodOutcome, float]:
        """Open or extend one pod's observation: the outcome, and when it now ends."""
        ref = kube.ObjectRef.of(pod)
        annotate = topology.spec.action.pod_annotations()
        for _attempt in range(3):
            previous = marking.read(pod, now=self.clock(), policy=self.policy)
            patch = patches.observe(
                pod,
                annotations=annotate,
                until=until,
                topology=topology.name,
                rule=action.rule,
                action_id=action.id,
                previous=previous,
                level=_level_text(topology, action),
                now=self.clock(),
                metric_filters=topology.spec.action.filter_metrics(),
                sealer=self.policy.sealer,
            )
            lasting = previous.until if isinstance(previous, marks.Marks) else until
            since, workload = _known(previous)
            if ref.kind == "Pod" and (start := patch.since if patch else since) is not None:
                self._starts[ref.namespace, ref.name] = start
            if patch is None:
                marking.patched("observe", "unchanged")
                self.scheduler.schedule(ref, lasting, topology.name, since=since, workload=workload)
                return "unchanged", lasting
            due = self.clock() + self._extend_within(topology, action)
            if patches.lasts(pod, annotate, beyond=due, previous=previous, topology=topology.name):
                # still observed for long enough: no write until an extension is due
                marking.patched("observe", "not-due")
                self.scheduler.schedule(ref, lasting, topology.name, since=since, workload=workload)
                return "not-due", lasting
            if patch.foreign:
                log.warning(
                    "%s: %s set by someone else to another value; left alone",
                    ref,
                    ", ".join(patch.foreign),
                )
            try:
                await self.kube.write_patch(ref, patch)
            except kube.Conflict:
                marking.patched("observe", "conflict")
                pod = await self.kube.get_observable(ref)
                continue
            except kube.NotFound:
                marking.patched("observe", "not-found")
                return "not-found", 0.0
            marking.patched("observe", "ok")
            if patch.yielded:
                self._yielded(ref, topology, action, patch.yielded)
            opened = not isinstance(previous, marks.Marks) or not previous.labelled
            self.kube.post_event(
                pod,
                "ObservationStarted" if opened else "ObservationExtended",
                f"{observed_how(topology)} until {conventions.format_time(until)} (topology "
                f"{topology.name}, rule {action.rule!r}{_level_event(topology, action)})",
            )
            self._changed(topology.name)
            self.observed_pods.add((ref.namespace, ref.name))
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            workload = (action.namespace, action.kind, action.name)
            self.scheduler.schedule(
                ref, until, topology.name, node, since=patch.since, workload=workload
            )
            return ("opened" if opened else "extended"), until
        return "conflict", 0.0

    def _yielded(
        self, ref: kube.ObjectRef, topology: Topology, action: Action, keys: tuple[str, ...]
    ) -> None:
        """A person changed or removed keys streamproc had added: theirs now, said once."""
        log.info("%s: %s changed by a person; left as they are", ref, ", ".join(keys))
        self.auditor.record(
            result="yielded",
            action=action.id,
            topology=topology.name,
            rule=action.rule,
            namespace=ref.namespace,
            kind=ref.kind,
            name=ref.name,
            pods=[ref.name] if ref.kind == "Pod" else [],
            annotations=list(keys),
        )

    async def handle(self, actions: Sequence[Action]) -> None:
        """Apply a batch; raise the first kube.Unavailable once every workload had its turn.

        For callers that retry a batch as a whole (what already landed is then a no-op); the
        stage retries each failing workload on its own instead (:meth:`attempt`).
        """
        failed = await self.attempt(actions)
        if failed:
            raise next(iter(failed.values()))

    async def attempt(self, actions: Sequence[Action]) -> dict[str, kube.Unavailable]:
        """Apply a batch: workloads concurrently, each workload's actions in order.

        Returns the actions (by id) that met a transient failure, with it: the one that failed
        and the later actions of its workload, which wait behind it so windows land in order.
        Every other action finished (applied, skipped, refused or failed for good); one object
        that keeps failing holds back nothing but its own workload.
        """
        by_workload: dict[str, list[Action]] = {}
        seen: set[str] = set()
        for action in actions:
            if action.id in seen:
                auditing.handled("duplicate")
                continue  # a re-delivery of an action already in this batch
            seen.add(action.id)
            by_workload.setdefault(workload_key(action), []).append(action)
        # One pod list per namespace for the whole batch; a pod deleted since is a 404 later.
        # Beside it, the ReplicaSet each Deployment's firing pod names (no second round trip).
        # An action the topology refuses costs no request at all.
        allowed = [
            a for a in actions if guarding.refusal(a, self.topologies.get(a.topology)) is None
        ]
        namespaces = sorted({a.namespace for a in allowed if a.kind != "Pod"})
        guesses = {(a.namespace, a.pod) for a in allowed if self._will_walk_owners(a)}
        found = await asyncio.gather(
            *(self._list(ns) for ns in namespaces),
            *(self._prefetch(ns, pod) for ns, pod in guesses),
        )
        listings = dict(zip(namespaces, found[: len(namespaces)], strict=True))
        groups = list(by_workload.values())
        outcomes = await asyncio.gather(
            *(self._handle_in_order(group, listings) for group in groups),
            return_exceptions=True,
        )
        failed: dict[str, kube.Unavailable] = {}
        for group, outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is not None:
                index, exc = outcome
                failed |= dict.fromkeys((a.id for a in group[index:]), exc)
        return failed

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
            except (kube.Forbidden, kube.Unavailable):
                # reported per action below (the missing permission), or retried per workload
                return None

    async def _handle_in_order(
        self, actions: list[Action], listings: dict[str, list[kube.Json] | None]
    ) -> tuple[int, kube.Unavailable] | None:
        """Apply one workload's actions in order; where a transient failure stopped them."""
        for index, action in enumerate(actions):
            # The batch's listing is only fresh for the workload's first action; later ones
            # (later windows) read the pods again rather than patch against stale versions.
            listing = listings.get(action.namespace) if index == 0 else None
            async with self._in_flight:
                result: outcomes.Handled
                try:
                    result = await self.apply(action, listing)
                except kube.Forbidden as exc:
                    result = "forbidden"
                    log.error(  # noqa: TRY400 - an expected refusal; a traceback adds nothing
                        "RBAC refused %s: %s (needs get/list/patch on pods)", action.id, exc
                    )
                except kube.Unavailable as exc:
                    return index, exc  # transient: this one and the later ones wait
                except kube.KubeError as exc:
                    result = "failed"
                    log.error("action %s failed permanently: %s", action.id, exc)  # noqa: TRY400
            auditing.handled(result)
            log.info("action %s: %s", action.id, result)
        return None


def observed_how(topology: Topology) -> str:
    """What an Event says the observation is: the annotation, or the ACNS metric filters."""
    spec = topology.spec.action
    if spec.backend == ACNS:
        return f"ContainerNetworkMetric include filters ({', '.join(spec.metrics)})"
    return ", ".join(f"{k}={v}" for k, v in spec.annotate.items())


def workload_key(action: Action) -> str:
    """The workload an action is for: its actions are applied one after another, in order."""
    return f"{action.namespace}/{action.kind}/{action.name}"


def _known(previous: marks.Read) -> tuple[float | None, tuple[str, str, str] | None]:
    """What the marks as read say of an observation left as it is: its start and workload."""
    if isinstance(previous, marks.Marks):
        return previous.since, previous.workload
    return None, None


def _level_text(topology: Topology, action: Action) -> str:
    """The ``streamproc.io/level`` annotation ("3/4"); empty for a topology without a ladder."""
    spec = topology.spec.action
    return f"{spec.level_of(action.level)}/{spec.levels}" if spec.escalation else ""


def _level_event(topology: Topology, action: Action) -> str:
    """What an Event says of the level: ", level 3 of 4, 6h"; nothing without a ladder."""
    spec = topology.spec.action
    if spec.escalation is None:
        return ""
    level = spec.level_of(action.level)
    return f", level {level} of {spec.levels}, {format_duration(spec.ttl_at(level))}"


def _level_fields(topology: Topology | None, action: Action) -> dict[str, int]:
    """The audit record's ``level``, for a topology with a ladder."""
    if topology is None or topology.spec.action.escalation is None:
        return {}
    return {"level": topology.spec.action.level_of(action.level)}
