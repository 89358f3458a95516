"""A real Prometheus scrapes a Retina-shaped exporter: each expiry's evidence is what was served
over exactly its observation's range, in the audit record and in the ObservationExpired Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamproc.clients import kube, prometheus
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.retina_exporter import (
    ONCE,
    ExportedPod,
    Family,
    RetinaExporter,
    annotated_in,
    series,
)
from streamproc.model import conventions
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from tests import doubles as testing
from tests.conftest import action_for, async_wait_for, make, workload
from tests.prometheus_server import RunningPrometheus, running_prometheus

pytestmark = pytest.mark.e2e
#: the observation lasts this long in real time (Prometheus keeps real time)
TTL_S = 5


@contextlib.contextmanager
def scraped(
    tmp_path: Path, emulator: KubeEmulator, pods: list[ExportedPod], families: tuple[Family, ...]
) -> Iterator[tuple[RetinaExporter, RunningPrometheus]]:
    """An exporter whose series move while the emulator's pods carry ``retina.sh: observe``."""
    exporter = RetinaExporter(
        pods, families=families, observed=annotated_in(lambda: emulator.list("Pod"))
    )
    with exporter, running_prometheus(tmp_path, {"retina": exporter.target}) as prom:
        yield exporter, prom


@contextlib.asynccontextmanager
async def expiring(
    client: kube.Kube, url: str
) -> AsyncIterator[tuple[Annotator, Expirer, testing.MemoryAuditor]]:
    """An annotator and an expirer on real time, reading evidence from ``url``."""
    annotator, made = make(client, ttl=TTL_S)
    auditor = testing.MemoryAuditor()
    evidence_from = prometheus.Prometheus(url, timeout_s=5)
    expirer = Expirer(
        client,
        resync_s=60,
        auditor=auditor,
        policy=made.policy,
        evidence_from=evidence_from,
        evidence_delay_s=1.0,  # one scrape interval: the last sample before the end lands
    )
    annotator.scheduler = expirer
    stop = asyncio.Event()
    task = asyncio.create_task(expirer.run(stop))
    try:
        yield annotator, expirer, auditor
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await evidence_from.close()


def since_of(emulator: KubeEmulator, pod: str) -> float:
    raw = (emulator.get("Pod", "shop", pod) or {})["metadata"]["annotations"][
        conventions.OBSERVED_SINCE
    ]
    parsed = conventions.parse_time(raw)
    assert parsed is not None
    return parsed


def close_to(found: float, served: float, rate: float) -> bool:
    """Within the scrape interval's worth (1 s) at each end of the range, and some slack."""
    return served > 0 and abs(found - served) <= rate * 2.5


def range_of(record: dict[str, Any]) -> tuple[float, float]:
    start, end = (conventions.parse_time(t) for t in record["evidence"]["range"])
    assert start is not None
    assert end is not None
    return start, end


async def observe_until_expired(
    annotator: Annotator, auditor: testing.MemoryAuditor, workload_: Any
) -> list[dict[str, Any]]:
    await annotator.apply(action_for(workload_, window_start=int(time.time()) - 10))
    await async_wait_for(
        lambda: sum(r["result"] == "expired" for r in auditor.records) == len(workload_.pods),
        timeout=60,
        what="the expiries with their evidence",
    )
    return [r for r in auditor.records if r["result"] == "expired"]


async def test_the_evidence_of_an_expiry_is_what_retina_served_over_its_range(
    tmp_path: Path, client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Packets, bytes, drops, TCP flags, retransmissions and DNS, per pod, from since to the end."""
    redis = workload(cluster, "redis")
    pods = [
        ExportedPod("shop", p, workload_kind="StatefulSet", workload_name="redis")
        for p in redis.pods
    ]
    before = testing.metric("streamproc_evidence_total", result="found")
    with scraped(tmp_path, emulator, pods, ("retina",)) as (exporter, prom):
        async with expiring(client, prom.url) as (annotator, _expirer, auditor):
            await annotator.apply(action_for(redis, window_start=int(time.time()) - 10))
            since = {p: since_of(emulator, p) for p in redis.pods}
            await async_wait_for(
                lambda: sum(r["result"] == "expired" for r in auditor.records) == len(redis.pods),
                timeout=60,
                what="the expiries with their evidence",
            )
    assert testing.metric("streamproc_evidence_total", result="found") == before + len(redis.pods)
    for record in (r for r in auditor.records if r["result"] == "expired"):
        pod = record["name"]
        found = record["evidence"]
        start, end = range_of(record)
        assert start == since[pod]  # exactly the observation's range: since to the removal
        assert end - start >= TTL_S - 1
        assert found["source"] == "networkobservability_adv_*"
        assert "missing" not in found

        def served(name: str, rate: float, value: float, **labels: str) -> None:
            key = series(
                f"networkobservability_adv_{name}",
                **labels,
                ip="10.0.0.1",
                namespace="shop",
                podname=pod,  # noqa: B023 - used at once
                workload_kind="StatefulSet",
                workload_name="redis",
            )
            expected = exporter.increase(key, start, end)  # noqa: B023 - used at once
            assert close_to(value, expected, rate), (name, labels, value, expected)

        served("forward_count", 100, found["forward"]["egress"]["packets"], direction="egress")
        served("forward_count", 40, found["forward"]["ingress"]["packets"], direction="ingress")
        served("forward_bytes", 150_000, found["forward"]["egress"]["bytes"], direction="egress")
        served(
            "drop_count",
            3,
            found["drops"]["IPTABLE_RULE_DROP"],
            reason="IPTABLE_RULE_DROP",
            direction="egress",
        )
        served("tcpflags_count", 8, found["tcp"]["flags"]["SYN"], flag="SYN")
        served("tcpretrans_count", 1, found["tcp"]["retransmissions"]["egress"], direction="egress")
        dns, once = found["dns"]
        assert dns["query"] == "evil.example.com."
        # a name asked once is a series born at 1 inside the range: it counts, from 0
        assert once == {"query": ONCE, "count": 1, "return_codes": {"NXDOMAIN": 1}}
        # DNS series move for every pod, observed or not: only the range's increase counts
        served("dns_request_count", 2, dns["count"], query_type="A", query="evil.example.com.")
        assert set(dns["return_codes"]) == {"NXDOMAIN"}
    events = [
        e["message"] for e in emulator.list("Event") if e.get("reason") == "ObservationExpired"
    ]
    assert len(events) == len(redis.pods)
    for message in events:
        assert message.startswith("removed ")
        assert re.search(r"; egress [\d,]+ packets / [\d.]+ kB; ingress [\d,]+ packets", message)
        assert " drops (IPTABLE_RULE_DROP)" in message
        assert "DNS: evil.example.com. NXDOMAIN \N{MULTIPLICATION SIGN}" in message


async def test_evidence_reads_hubbles_families_where_retinas_are_absent(
    tmp_path: Path, client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """ACNS: no networkobservability_adv_* series, so flows, drops and DNS come from hubble_*."""
    redis = workload(cluster, "redis")
    pods = [
        ExportedPod("shop", p, workload_kind="StatefulSet", workload_name="redis")
        for p in redis.pods
    ]
    with scraped(tmp_path, emulator, pods, ("hubble",)) as (exporter, prom):
        async with expiring(client, prom.url) as (annotator, _expirer, auditor):
            records = await observe_until_expired(annotator, auditor, redis)
    for record in records:
        found = record["evidence"]
        assert found["source"] == "hubble_*", found
        assert found["unit"] == "flows"
        start, end = range_of(record)
        key = series(
            "hubble_flows_processed_total",
            source=f"shop/{record['name']}",
            protocol="TCP",
            subtype="to-stack",
            type="Trace",
            verdict="FORWARDED",
        )
        assert close_to(
            found["forward"]["egress"]["packets"], exporter.increase(key, start, end), 20
        )
        assert "bytes" not in found["forward"]["egress"]  # Hubble counts flows, not bytes
        assert set(found["drops"]) == {"POLICY_DENIED"}
        assert found["dns"][0]["query"] == "evil.example.com."
        assert set(found["dns"][0]["return_codes"]) == {"Non-Existent Domain"}
