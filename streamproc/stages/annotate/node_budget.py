"""Retina's per-node filter map as a budget the annotator and the follower share.

Below both of them, with the expirer's side of the contract (:class:`Scheduler`), so neither
stage imports the other.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from streamproc.clients import kube, metrics
from streamproc.model.workloads import WorkloadRef
from streamproc.stages.annotate import auditing

log = logging.getLogger("streamproc.annotate")


class Scheduler(Protocol):
    """Where the annotator hands expiries (the expirer), and what it knows is observed."""

    def schedule(
        self,
        key: kube.ObjectRef,
        until: float,
        topology: str,
        node: str = "",
        *,
        since: float | None = None,
        workload: tuple[str, str, str] | None = None,
    ) -> None:
        """Remember when an observation ends (the node, its start and workload where known)."""

    def observed_on(self, node: str) -> int:
        """Pods under observation on ``node``."""

    def observing(self, ref: kube.ObjectRef) -> bool:
        """Whether the pod is under observation now."""


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
        self,
        pods: Sequence[kube.Json],
        auditor: auditing.Auditor,
        workload: WorkloadRef,
        *,
        topology: str,
        rule: str,
        action: str | None = None,
    ) -> tuple[list[kube.Json], Counter[str]]:
        """Pods that may be observed and the slots reserved for them; the refused are reported.

        Each refused pod is said once: a log line, the metric and an audit record.
        """
        reserved: Counter[str] = Counter()
        if self.limit <= 0:
            return list(pods), reserved
        keep, refused = [], []
        for pod in pods:
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            ref = kube.ObjectRef.of(pod)
            if not node or self._scheduler.observing(ref):
                keep.append(pod)
            elif self._scheduler.observed_on(node) + self._reserved[node] >= self.limit:
                refused.append((ref.name, node))
            else:
                self._reserved[node] += 1
                reserved[node] += 1
                keep.append(pod)
        if refused:
            self._report(auditor, refused, workload, topology=topology, rule=rule, action=action)
        return keep, reserved

    def release(self, reserved: Counter[str]) -> None:
        """Give back the slots of :meth:`admit` once the patches are done."""
        self._reserved.subtract(reserved)

    def _report(
        self,
        auditor: auditing.Auditor,
        refused: Sequence[tuple[str, str]],
        workload: WorkloadRef,
        *,
        topology: str,
        rule: str,
        action: str | None,
    ) -> None:
        metrics.pods_refused.labels(topology=topology, reason="node-budget").inc(len(refused))
        log.warning(
            "%s/%s/%s: %d pods not observed, their node already has %d observed pods "
            "(--node-budget; Retina's filter map holds filterMapMaxEntries per node): %s",
            workload.namespace,
            workload.kind,
            workload.name,
            len(refused),
            self.limit,
            ", ".join(f"{pod} on {node}" for pod, node in refused),
        )
        auditor.record(
            result="refused-node-budget",
            **({"action": action} if action else {}),
            topology=topology,
            rule=rule,
            namespace=workload.namespace,
            kind=workload.kind,
            name=workload.name,
            pods=[pod for pod, _ in refused],
            nodes=sorted({node for _, node in refused}),
            node_budget=self.limit,
        )
