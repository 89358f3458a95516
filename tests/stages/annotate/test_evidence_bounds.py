"""The evidence's bounds and its honesty: records come out within their deadline whatever the
backlog, stamped with the ending's time; reads wait for the last scrapes; a failing part loses
only itself; a tenant cannot shrink its own range; a release by hand is forgotten at the resync.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from streamproc.clients import kube, prometheus
from streamproc.cluster import evidencing, releasing
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions, evidence
from streamproc.stages.annotate.evidencing import Ending, Evidencer
from tests import doubles as testing
from tests.conftest import action_for, async_wait_for, make, running, time_passes, workload
from tests.stages.annotate.evidence_helpers import reading_evidence
from tests.stages.annotate.test_evidence_faults import EMPTY, answering, never, standin

TARGET = evidence.Target("shop", ("web-0",), 1_800_000_000.0, 1_800_000_600.0)
GAUGE = "streamproc_observed_pod_since_seconds"


def ending(name: str) -> Ending:
    return Ending(current={}, message=name, records=[("expired", {"name": name})], target=TARGET)


async def _nothing() -> None:
    """A flush with nothing to wait for."""


async def test_many_endings_and_a_prometheus_that_never_answers_are_written_within_the_bound() -> (
    None
):
    """60 endings, 4 readers, 0.5 s each: every one written by its deadline, not in turn."""
    loop = asyncio.get_running_loop()
    written: dict[str, tuple[float, str | None]] = {}

    def write(done: Ending, found: evidence.Evidence | None) -> None:
        written[done.message] = (loop.time(), found.missing if found is not None else None)

    async with standin(never) as url:
        client = prometheus.Prometheus(url, timeout_s=600)
        work = Evidencer(client, write, _nothing, total_s=0.5)
        try:
            submitted = loop.time()
            for n in range(60):
                work.submit(ending(f"e{n}"))
            await async_wait_for(lambda: len(written) == 60, timeout=30, what="every record")
        finally:
            await work.close()
            await client.close()
    late = {name: at - submitted for name, (at, _) in written.items() if at - submitted > 1.5}
    assert not late, late  # the bound is 0.5 s; in turn, the last would wait 60/4 x 0.5 = 7.5 s
    assert {why for _, why in written.values()} <= {"timeout", "overloaded"}
    assert sum(why == "overloaded" for _, why in written.values()) >= 50


async def test_evidence_is_read_after_the_delay_and_still_evaluated_at_the_end() -> None:
    """The first query comes ``delay_s`` after the ending, asking about the end, not now."""
    loop = asyncio.get_running_loop()
    asked: list[tuple[float, str]] = []

    async def recording(request: web.Request) -> web.Response:
        asked.append((loop.time(), str((await request.post())["time"])))
        return web.json_response(EMPTY)

    done: list[str | None] = []
    async with standin(recording) as url:
        client = prometheus.Prometheus(url, timeout_s=5)
        work = Evidencer(
            client, lambda _e, f: done.append(f and f.missing), _nothing, total_s=10, delay_s=0.3
        )
        try:
            submitted = loop.time()
            work.submit(ending("late"))
            await async_wait_for(lambda: bool(done), timeout=10, what="the record")
        finally:
            await work.close()
            await client.close()
    assert done == ["no-series"]
    assert min(at for at, _ in asked) - submitted >= 0.3
    assert {at for _, at in asked} == {f"{TARGET.end:.3f}"}


async def test_a_failing_dns_query_loses_only_the_dns_part() -> None:
    """Traffic still comes back; the record says DNS is missing and why."""

    async def dns_fails(request: web.Request) -> web.Response:
        if "dns_" in str((await request.post())["query"]):
            return web.json_response({"status": "error", "error": "boom"}, status=500)
        result = [{"metric": {"direction": "egress"}, "value": [1, "5"]}]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    async with standin(dns_fails) as url:
        client = prometheus.Prometheus(url, timeout_s=5)
        try:
            found = await evidencing.gather(client, TARGET, total_s=10)
        finally:
            await client.close()
    assert found.result == "found"
    assert found.forward["egress"]["packets"] == 5
    assert found.as_dict()["missing_parts"] == {"dns": "http-error"}
    assert found.dns == ()


async def test_a_token_that_no_header_can_carry_is_a_named_reason_not_an_escape(
    tmp_path: Path,
) -> None:
    """A line break inside the token (aiohttp would raise ValueError): ``unreachable``, said why."""
    token = tmp_path / "token"
    token.write_text("abc\ndef\n")
    async with standin(answering(EMPTY)) as url:
        client = prometheus.Prometheus(url, timeout_s=5, token_file=token)
        try:
            found = await evidencing.gather(client, TARGET, total_s=10)
        finally:
            await client.close()
    assert found.missing == "unreachable"
    assert "line break" in found.detail


async def test_a_tenant_who_moves_or_breaks_observed_since_keeps_its_whole_range(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The expirer counts from the start it saw; the records carry it and the ending's time."""
    redis = workload(cluster, "redis")
    annotator, made = make(client, ttl=60)
    annotator.auditor = (opened := testing.MemoryAuditor())
    async with (
        standin(answering(EMPTY)) as url,
        reading_evidence(client, made, url, timeout_s=1) as (expirer, auditor),
    ):
        annotator.scheduler = expirer
        await annotator.apply(action_for(redis))
        meta = (emulator.get("Pod", "shop", redis.pods[0]) or {})["metadata"]
        since = meta["annotations"][conventions.OBSERVED_SINCE]
        (applied,) = [r for r in opened.records if r["result"] == "applied"]
        assert applied["observed_since"] == dict.fromkeys(redis.pods, since)
        edits = {redis.pods[0]: conventions.format_time(time.time() + 50), redis.pods[1]: "soon"}
        for pod, value in edits.items():
            emulator.update("Pod", "shop", pod, {"metadata": {"annotations": {
                conventions.OBSERVED_SINCE: value
            }}})  # fmt: skip
        async with running(expirer.run):
            time_passes(expirer, 3600)
            await async_wait_for(
                lambda: sum(r["result"] == "expired" for r in auditor.records) == len(redis.pods),
                timeout=30,
                what="the expiry records",
            )
    for record in (r for r in auditor.records if r["result"] == "expired"):
        assert record["evidence"]["range"][0] == since, record
        # stamped when it ended (the expirer's clock is an hour ahead), not when written
        stamped = conventions.parse_time(record["time"])
        assert stamped is not None
        assert stamped > time.time() + 3000


async def test_a_release_by_hand_is_forgotten_at_the_next_resync_with_its_gauge(
    client: kube.Kube, cluster: ClusterBuilder
) -> None:
    """The pod no longer marked leaves the schedule and streamproc_observed_pod_since_seconds."""
    redis = workload(cluster, "redis")
    annotator, expirer = make(client, ttl=600)
    await annotator.apply(action_for(redis))
    labels = {"namespace": "shop", "workload_kind": "StatefulSet", "workload_name": "redis"}
    assert all(testing.metric(GAUGE, pod=p, **labels) > 0 for p in redis.pods)
    for pod in redis.pods:
        await releasing.release(client, kube.ObjectRef.pod("shop", pod))
    await expirer.resync()
    assert not expirer.active
    assert all(testing.metric(GAUGE, pod=p, **labels) == 0 for p in redis.pods)
