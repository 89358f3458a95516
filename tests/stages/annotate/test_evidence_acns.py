"""Evidence under the acns-metric-filters backend: Hubble's series move for the pods in
streamproc's include filters, and each expiry's record carries them (a real Prometheus)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from streamproc.clients import kube, prometheus
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.retina_exporter import ExportedPod, RetinaExporter, filtered_in
from streamproc.model import marks
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from streamproc.stages.annotate.filtering import FilterReconciler
from tests import doubles as testing
from tests.conftest import action_for, async_wait_for, topology, workload
from tests.prometheus_server import running_prometheus

pytestmark = pytest.mark.e2e
TTL_S = 5


async def test_acns_observations_expire_with_hubbles_evidence(
    tmp_path: Path, client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Filters, not annotations, select the pods: their hubble_* flows are the evidence."""
    redis = workload(cluster, "redis")
    topologies = [topology(TTL_S, backend="acns-metric-filters")]
    exporter = RetinaExporter(
        [
            ExportedPod("shop", p, workload_kind="StatefulSet", workload_name="redis")
            for p in redis.pods
        ],
        families=("hubble",),
        observed=filtered_in(lambda: emulator.list("ContainerNetworkMetric")),
    )
    with exporter, running_prometheus(tmp_path, {"retina": exporter.target}) as prom:
        filters = FilterReconciler(
            client, topologies, default_backend="retina-annotation", resync_s=3600, clock=time.time
        )
        evidence_from = prometheus.Prometheus(prom.url, timeout_s=5)
        auditor = testing.MemoryAuditor()
        expirer = Expirer(
            client,
            resync_s=3600,
            auditor=auditor,
            policy=marks.Policy.of(topologies),
            changed=filters.changed,
            evidence_from=evidence_from,
            evidence_delay_s=1.0,
        )
        resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
        annotator = Annotator(
            Settings(), topologies, client, resolver, expirer, changed=filters.changed
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(expirer.run(stop)), asyncio.create_task(filters.run(stop))]
        try:
            await annotator.apply(action_for(redis, window_start=int(time.time()) - 10))
            await async_wait_for(
                lambda: sum(r["result"] == "expired" for r in auditor.records) == len(redis.pods),
                timeout=60,
                what="the expiries with their evidence",
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
            await evidence_from.close()
    for record in (r for r in auditor.records if r["result"] == "expired"):
        found = record["evidence"]
        assert found["source"] == "hubble_*", found
        assert found["forward"]["egress"]["packets"] > 0
        assert found["drops"] == {"POLICY_DENIED": found["drops"]["POLICY_DENIED"]}
