"""The ``acns-metric-filters`` backend: one coalescing task keeps the filters the pods' projection.

Observations through this backend are opened, extended, followed and ended on the pods exactly
as Retina's annotation is (bookkeeping marks, label, schedule, caps, node budget, audit, Events),
only without the topology's ``annotate`` keys. The pods' marks stay the truth; ACNS's one
``ContainerNetworkMetric`` is made to mirror them (:mod:`streamproc.cluster.metric_filters`).
The annotator, the follower and the expirer only say that something changed (:meth:`changed`);
one task per process then lists the observed pods and rewrites the object, however many changes
came in meanwhile, and again every ``resync_s`` (what another replica or a person changed).
So the writes are bounded by the rate of reconciliations (at most one a second), not by the
number of pods, and a restarted annotator (or a second replica) converges on the same object
from the same pods. The pods are listed from the API server, not from the cluster cache: a pod
just patched may not have reached the cache's watch yet, and would be missed until the next
round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from streamproc import stopping
from streamproc.clients import kube, metrics
from streamproc.cluster import metric_filters
from streamproc.model import marks
from streamproc.model.topologies import Topology

log = logging.getLogger("streamproc.metric_filters")
#: after a failed reconciliation, the next one is tried this much later
_RETRY_S = 2.0
#: rounds are at least this far apart: a storm of changes costs at most ~3 requests a second
#: (ACNS itself takes ~30 s to apply a change, so this delays nothing one could see)
_MIN_INTERVAL_S = 1.0


class FilterReconciler:
    """Coalesces "the observed pods changed" into one reconciliation of the singleton at a time."""

    def __init__(
        self,
        client: kube.Kube,
        topologies: Sequence[Topology],
        *,
        default_backend: str,
        resync_s: float,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        policy: marks.Policy | None = None,
    ) -> None:
        self._kube = client
        #: topology -> the Hubble metrics its observations include (only acns-backend ones)
        self.wanted = metric_filters.metrics_of(topologies, default_backend)
        self._policy = policy or marks.Policy.of(topologies)
        self._resync_s = resync_s
        self._dry_run = dry_run
        #: what "now" is: the same clock as the expirer's, so filters end when the marks do
        self.clock = clock
        self._dirty = asyncio.Event()
        self._dirty.set()  # the first turn reconciles: a restart picks up what the pods say
        #: reconciliations finished (tests wait on it)
        self.rounds = 0
        self.last: metric_filters.Written | None = None
        #: the lasting error last warned about: said once, not once a resync
        self._warned = ""

    @property
    def enabled(self) -> bool:
        """Whether any topology observes through the filters."""
        return bool(self.wanted)

    def changed(self, topology: str) -> None:
        """An observation of ``topology`` opened, was extended, followed or ended."""
        if topology in self.wanted:
            self._dirty.set()

    async def reconcile(self) -> metric_filters.Written:
        """List the observed pods and write the object now."""
        written = await metric_filters.sync(
            self._kube, self.wanted, policy=self._policy, now=self.clock(), dry_run=self._dry_run
        )
        self.last = written
        self.rounds += 1
        return written

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile whenever something changed, and every ``resync_s``, until ``stop``.

        Without a topology observing through the filters there is nothing to do: it waits for
        ``stop`` (a stage task that ends early would end the process).
        """
        if not self.enabled:
            await stop.wait()
            return
        while not stop.is_set():
            self._dirty.clear()
            try:
                with kube.lane("expire"):  # beside the expiries: never ahead of new actions
                    await self.reconcile()
                wait = self._resync_s
            except kube.KubeError as exc:
                metrics.stage_errors.labels(stage="filters", error=type(exc).__name__).inc()
                # only an unreachable API server or a race (409s exhausted) may be gone in 2 s; a
                # missing CRD or permission, a refused body (422), anything else: once a resync
                lasting = not isinstance(exc, kube.Unavailable | kube.Conflict)
                if not lasting or str(exc) != self._warned:
                    log.warning(
                        "ContainerNetworkMetric not reconciled: %s; trying again in %gs",
                        exc,
                        self._resync_s if lasting else _RETRY_S,
                    )
                self._warned = str(exc) if lasting else ""
                self._dirty.set()
                await stopping.pause(stop, self._resync_s if lasting else _RETRY_S)
                continue
            self._warned = ""
            await stopping.pause(stop, _MIN_INTERVAL_S)
            dirty = asyncio.ensure_future(self._dirty.wait())
            halted = asyncio.ensure_future(stop.wait())
            await asyncio.wait({dirty, halted}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            dirty.cancel()
            halted.cancel()
