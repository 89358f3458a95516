"""Whatever Prometheus does, an observation ends on time and its audit record says why evidence is
missing: unreachable, never answering, an HTTP error, answers that are not query results, no series.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from streamproc.clients import kube
from streamproc.lab.broker import free_port
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import conventions
from tests import doubles as testing
from tests.conftest import action_for, async_wait_for, make, running, time_passes, workload
from tests.stages.annotate.evidence_helpers import reading_evidence

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def standin(handler: Handler) -> AsyncIterator[str]:
    """An HTTP server on loopback answering ``/api/v1/query`` with ``handler``; its URL."""
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", handler)  # GET or POST
    # a request still held (``never``) is cancelled at once at the end, not waited for
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.wait_for(runner.cleanup(), 5)


def answering(body: Any, status: int = 200) -> Handler:
    async def handle(_request: web.Request) -> web.Response:
        if isinstance(body, bytes):
            return web.Response(body=body, status=status, content_type="application/json")
        return web.json_response(body, status=status)

    return handle


async def never(_request: web.Request) -> web.Response:
    await asyncio.Event().wait()  # holds the request until the server stops
    raise AssertionError("unreachable")


EMPTY = {"status": "success", "data": {"resultType": "vector", "result": []}}
NEGATIVE = {
    "status": "success",
    "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "-5"]}]},
}


def observed(emulator: KubeEmulator, pods: list[str]) -> bool:
    pods_now = [emulator.get("Pod", "shop", p) or {} for p in pods]
    return any(
        conventions.OBSERVED_LABEL in (pod.get("metadata", {}).get("labels") or {})
        for pod in pods_now
    )


def expired_events(emulator: KubeEmulator) -> list[str]:
    return [e["message"] for e in emulator.list("Event") if e.get("reason") == "ObservationExpired"]


@pytest.mark.parametrize(
    ("handler", "missing"),
    [
        (answering({"status": "error", "error": "boom"}, status=500), "http-error"),
        (answering(b"<html>not json</html>"), "bad-answer"),
        (answering({"status": "success", "data": {"resultType": "matrix"}}), "bad-answer"),
        (answering(NEGATIVE), "bad-answer"),
        (answering(EMPTY), "no-series"),
        (never, "timeout"),
    ],
    ids=["http-500", "not-json", "not-a-vector", "negative-count", "no-series", "never-answers"],
)
async def test_a_failing_prometheus_never_holds_up_an_expiry_and_the_record_says_why(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    handler: Handler,
    missing: str,
) -> None:
    """Marks are removed, then the Event and the record name why evidence is missing; counted."""
    redis = workload(cluster, "redis")
    before = testing.metric("streamproc_evidence_total", result=missing)
    annotator, made = make(client, ttl=60)
    async with (
        standin(handler) as url,
        reading_evidence(client, made, url, timeout_s=0.5, total_s=1.0) as (expirer, auditor),
    ):
        await annotator.apply(action_for(redis))
        async with running(expirer.run):
            time_passes(expirer, 3600)
            await async_wait_for(
                lambda: sum(r["result"] == "expired" for r in auditor.records) == len(redis.pods),
                timeout=30,
                what="the expiry records",
            )
    assert not observed(emulator, redis.pods)
    for record in auditor.records:
        assert record["evidence"]["missing"] == missing, record
        assert record["evidence"]["range"][1].endswith("Z")
    assert testing.metric("streamproc_evidence_total", result=missing) == before + len(redis.pods)
    assert all(f"no network evidence ({missing}" in m for m in expired_events(emulator))


async def test_an_unreachable_prometheus_is_named_in_the_record(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Nothing listens at the URL: the expiry goes ahead and says ``unreachable``."""
    redis = workload(cluster, "redis")
    annotator, made = make(client, ttl=60)
    nobody = f"http://127.0.0.1:{free_port()}"
    async with reading_evidence(client, made, nobody, timeout_s=1.0) as (expirer, auditor):
        await annotator.apply(action_for(redis))
        async with running(expirer.run):
            time_passes(expirer, 3600)
            await async_wait_for(
                lambda: len(auditor.records) == len(redis.pods), timeout=30, what="the records"
            )
    assert {r["evidence"]["missing"] for r in auditor.records} == {"unreachable"}
    assert not observed(emulator, redis.pods)


async def test_the_release_happens_while_evidence_waits_and_a_stop_writes_the_record_anyway(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """A Prometheus that never answers: marks gone with the evidence pending; the stop writes."""
    redis = workload(cluster, "redis")
    annotator, made = make(client, ttl=60)
    async with (
        standin(never) as url,
        reading_evidence(client, made, url, timeout_s=600, total_s=1200) as (expirer, auditor),
    ):
        await annotator.apply(action_for(redis))
        # the stop is bounded: a couple of seconds of grace for the waiting evidence
        async with running(expirer.run, stop_within=15):
            time_passes(expirer, 3600)
            await async_wait_for(
                lambda: not observed(emulator, redis.pods), timeout=30, what="the release"
            )
            await async_wait_for(
                lambda: expirer.evidencer.pending == len(redis.pods),
                timeout=10,
                what="the evidence to be waiting",
            )
            assert auditor.records == []  # the record waits for its evidence, not the release
    assert len(auditor.records) == len(redis.pods)
    assert {r["evidence"]["missing"] for r in auditor.records} == {"shutdown"}
    assert len(expired_events(emulator)) == len(redis.pods)


async def test_marks_from_before_observed_since_get_no_range_and_no_query(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """No start on the pod: the record says ``no-range``; Prometheus is not asked to guess."""
    redis = workload(cluster, "redis")
    asked: list[str] = []

    async def counting(request: web.Request) -> web.Response:
        asked.append(request.query.get("query", ""))
        return web.json_response(EMPTY)

    async with standin(counting) as url:
        annotator, made = make(client, ttl=60)
        await annotator.apply(action_for(redis))
        for pod in redis.pods:  # as an annotator before this version wrote them
            emulator.update(
                "Pod",
                "shop",
                pod,
                {"metadata": {"annotations": {conventions.OBSERVED_SINCE: None}}},
            )
        async with (
            reading_evidence(client, made, url, timeout_s=1) as (expirer, auditor),
            running(expirer.run),
        ):
            time_passes(expirer, 3600)
            await async_wait_for(
                lambda: len(auditor.records) == len(redis.pods), timeout=30, what="the records"
            )
    assert {r["evidence"]["missing"] for r in auditor.records} == {"no-range"}
    assert asked == []
