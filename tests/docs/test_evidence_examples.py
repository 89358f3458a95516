"""Every ``streamproc`` command of the evidence page runs against a real Prometheus scraping a
Retina-shaped exporter while a workload is under observation, as a reader would run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamproc.clients import kube
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.retina_exporter import ExportedPod, RetinaExporter, annotated_in
from tests.conftest import action_for, make, workload
from tests.docs.test_simulate_examples import commands
from tests.prometheus_server import running_prometheus, wait_scraped_after

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "evidence.md"
#: the page's Prometheus, replaced by the test's
EXAMPLE_URL = "http://prometheus.monitoring:9090"


def test_the_evidence_page_names_its_commands() -> None:
    """The extraction finds the page's commands: a rewrite of it cannot silence the test."""
    found = commands(PAGE.read_text(encoding="utf-8"))
    assert any(c.startswith("streamproc evidence ") and "json" in c for c in found), found
    assert any("--lookback" in c for c in found), found
    assert any(c.startswith("streamproc doctor") for c in found), found


async def test_every_command_of_the_evidence_page_runs(
    tmp_path: Path, kubeconfig: Path, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Each exits 0 (doctor: no failure of its evidence checks) with the page's environment."""
    redis = workload(cluster, "redis")
    pods = [ExportedPod("shop", p, "10.0.0.1", "StatefulSet", "redis") for p in redis.pods]
    exporter = RetinaExporter(pods, observed=annotated_in(lambda: emulator.list("Pod")))
    client = await kube.Kube.connect(str(kubeconfig))
    try:
        annotator, _ = make(client, ttl=600)
        await annotator.apply(action_for(redis, window_start=int(time.time()) - 10))
    finally:
        await client.close()
    with exporter, running_prometheus(tmp_path, {"retina": exporter.target}) as prom:
        wait_scraped_after(prom, "retina", time.time() + 2)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")},
            "KUBECONFIG": str(kubeconfig),
            "STREAMPROC_PROMETHEUS_URL": prom.url,
        }
        for command in commands(PAGE.read_text(encoding="utf-8")):
            args = command.replace(EXAMPLE_URL, prom.url).split()[1:]
            result = subprocess.run(
                [sys.executable, "-m", "streamproc", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if args[0] == "doctor":  # no broker here: only its evidence lines are the page's
                assert "✔ prometheus: Prometheus" in result.stdout, result.stdout
                assert "✔ series: " in result.stdout, result.stdout
                continue
            assert result.returncode == 0, (command, result.stderr)
            if os.environ.get("SHOW_EVIDENCE_EXAMPLES"):
                print(f"$ {command}\n{result.stdout}")
            assert "Traceback" not in result.stderr
