"""``streamproc evidence`` (and ``release``'s evidence line) against a real Prometheus scraping a
Retina-shaped exporter and streamproc's own gauge; its failures are one plain line each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY, start_http_server

from streamproc.clients import kube
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.retina_exporter import ExportedPod, RetinaExporter, annotated_in, series
from streamproc.model import conventions
from streamproc.stages.annotate.expiring import Expirer
from tests.conftest import action_for, async_wait_for, make, running, time_passes, workload
from tests.e2e.conftest import consume_all
from tests.prometheus_server import RunningPrometheus, running_prometheus, wait_scraped_after

pytestmark = pytest.mark.e2e


def cli(kubeconfig: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def own_metrics() -> Iterator[str]:
    """This process's metrics (the expirer's gauge) on loopback, as a stage serves them."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def plain(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failure prints (and that it is no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def gauge_gone(prom: RunningPrometheus) -> bool:
    return not prom.has('streamproc_observed_pod_since_seconds{workload_name="redis"}')


async def test_evidence_of_a_live_and_of_a_past_observation_as_a_table_and_json(
    tmp_path: Path,
    kubeconfig: Path,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    broker: EmbeddedBroker,
) -> None:
    """Live: since -> now from the pods' marks; release: a record each; past: from Prometheus."""
    redis = workload(cluster, "redis")
    pods = [ExportedPod("shop", p, "10.0.0.1", "StatefulSet", "redis") for p in redis.pods]
    exporter = RetinaExporter(pods, observed=annotated_in(lambda: emulator.list("Pod")))
    client = await kube.Kube.connect(str(kubeconfig))
    with (
        exporter,
        own_metrics() as ours,
        running_prometheus(tmp_path, {"retina": exporter.target, "streamproc": ours}) as prom,
    ):
        try:
            annotator, made = make(client, ttl=600)
            expirer = Expirer(client, resync_s=60, clock=made.clock, policy=made.policy)
            annotator.scheduler = expirer
            await annotator.apply(action_for(redis, window_start=int(time.time()) - 10))
            raw = (emulator.get("Pod", "shop", redis.pods[0]) or {})["metadata"]["annotations"]
            since = raw[conventions.OBSERVED_SINCE]
            await asyncio.to_thread(wait_scraped_after, prom, "retina", time.time() + 2)
            url = f"--prometheus-url={prom.url}"

            live = await asyncio.to_thread(
                cli, kubeconfig, "evidence", "shop/StatefulSet/redis", url
            )
            assert live.returncode == 0, live.stderr
            assert "shop/StatefulSet/redis (under observation) " in live.stdout
            assert "from networkobservability_adv_*: egress " in live.stdout
            assert "forwarded" in live.stdout
            assert "IPTABLE_RULE_DROP" in live.stdout
            assert "evil.example.com." in live.stdout

            as_json = await asyncio.to_thread(
                cli, kubeconfig, "evidence", "shop/StatefulSet/redis", url, "-o", "json"
            )
            found = json.loads(as_json.stdout)
            assert found["live"] is True
            assert found["range"][0] == since
            assert sorted(found["pods"]) == sorted(redis.pods)
            assert found["forward"]["egress"]["packets"] > 0

            released = await asyncio.to_thread(
                cli,
                kubeconfig,
                "release",
                "shop/StatefulSet/redis",
                url,
                STREAMPROC_BOOTSTRAP_SERVERS=broker.bootstrap,
            )
            assert released.returncode == 0, released.stderr
            assert f"evidence {redis.pods[0]}: egress " in released.stdout
            assert "warning" not in released.stderr
            audit = [
                orjson.loads(v or b"")
                for _, v, _ in await asyncio.to_thread(
                    consume_all, broker.bootstrap, "streamproc.audit", 1.0
                )
            ]
            assert sorted(r["name"] for r in audit if r["result"] == "released") == sorted(
                redis.pods
            )
            for record in audit:
                assert record["workload"] == "shop/StatefulSet/redis"
                assert record["evidence"]["range"][0] == since
                assert record["evidence"]["forward"]["egress"]["packets"] > 0
            ended = time.time()

            # the expirer finds the observation ended and drops its series; Prometheus sees it go
            async with running(expirer.run):
                time_passes(expirer, 3600)
                await async_wait_for(lambda: not expirer.active, timeout=15, what="the schedule")
            await async_wait_for(lambda: gauge_gone(prom), timeout=30, what="the gauge to go stale")

            past = await asyncio.to_thread(
                cli,
                kubeconfig,
                "evidence",
                "shop/StatefulSet/redis",
                url,
                "--lookback",
                "1h",
                "-o",
                "json",
            )
            assert past.returncode == 0, past.stderr
            found = json.loads(past.stdout)
            assert found["live"] is False
            assert found["range"][0] == since
            end = conventions.parse_time(found["range"][1])
            start = conventions.parse_time(since)
            assert end is not None
            assert start is not None
            assert ended - 5 <= end <= time.time()
            egress = series(
                "networkobservability_adv_forward_count",
                direction="egress",
                ip="10.0.0.1",
                namespace="shop",
                podname=redis.pods[0],
                workload_kind="StatefulSet",
                workload_name="redis",
            )
            served = sum(
                exporter.increase(
                    (egress[0], tuple((k, p if k == "podname" else v) for k, v in egress[1])),
                    start,
                    end,
                )
                for p in redis.pods
            )
            assert abs(found["forward"]["egress"]["packets"] - served) <= 100 * 3 * len(redis.pods)

            table = await asyncio.to_thread(
                cli, kubeconfig, "evidence", "shop/StatefulSet/redis", url, "--lookback", "1h"
            )
            assert "(last observation)" in table.stdout
            assert "forwarded" in table.stdout
        finally:
            await client.close()


def test_evidence_failures_are_one_plain_line(kubeconfig: Path, emulator: KubeEmulator) -> None:
    """No URL, nothing listening, nothing observed, a malformed target: one line each, exit != 0."""
    target = "shop/Deployment/frontend"
    env_url = {k: v for k, v in os.environ.items() if k != "STREAMPROC_PROMETHEUS_URL"}
    no_url = subprocess.run(
        [sys.executable, "-m", "streamproc", "evidence", target],
        env={**env_url, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "set --prometheus-url" in plain(no_url)
    nobody = f"--prometheus-url=http://127.0.0.1:{free_port()}"
    assert "Prometheus" in plain(cli(kubeconfig, "evidence", target, nobody))
    assert "--prometheus-url" in plain(cli(kubeconfig, "evidence", target, nobody))
    usage = cli(kubeconfig, "evidence", "shop/frontend", nobody)
    assert usage.returncode == 2
    assert "NAMESPACE/KIND/NAME" in usage.stderr


def test_no_observation_in_the_lookback_is_said_plainly(
    tmp_path: Path, kubeconfig: Path, emulator: KubeEmulator
) -> None:
    """A Prometheus that never saw the workload observed: 'no observation found', no traceback."""
    exporter = RetinaExporter([])
    with exporter, running_prometheus(tmp_path, {"retina": exporter.target}) as prom:
        result = cli(
            kubeconfig, "evidence", "shop/Deployment/frontend", f"--prometheus-url={prom.url}"
        )
    assert "no observation found in the last 168h" in plain(result)
