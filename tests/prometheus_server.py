"""A real Prometheus (Debian's package) on loopback, scraping given targets every second."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamproc.lab.broker import free_port

PROMETHEUS = shutil.which("prometheus")


@dataclass
class RunningPrometheus:
    """The server's base URL, and its API as a test reads it."""

    url: str

    def query(self, expr: str, at: float | None = None) -> list[dict[str, object]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]  # type: ignore[no-any-return]

    def has(self, expr: str) -> bool:
        try:
            return bool(self.query(expr))
        except (OSError, KeyError, ValueError):
            return False


@contextlib.contextmanager
def running_prometheus(
    tmp_path: Path,
    targets: dict[str, str],
    listen: str | None = None,
    config: dict[str, Any] | None = None,
) -> Iterator[RunningPrometheus]:
    """Prometheus scraping ``targets`` (job -> host:port) every 1 s; stopped at the end.

    ``listen``: its host:port, when a process started before it must know its URL.
    ``config``: a whole configuration instead (the repo's own, say); ready once each of its
    jobs was scraped.
    """
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    if config is None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "honor_labels": True, "static_configs": [{"targets": [t]}]}
                for job, t in targets.items()
            ],
        }
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    listen = listen or f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={listen}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    running = RunningPrometheus(f"http://{listen}")
    try:
        deadline = time.monotonic() + 60
        while not all(running.has(f'up{{job="{job}"}} == 1') for job in jobs):
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus did not scrape every target in 60 s"
            time.sleep(0.2)
        yield running
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


def wait_scraped_after(prom: RunningPrometheus, job: str, at: float, timeout: float = 30) -> None:
    """Until Prometheus holds a scrape of ``job`` from after ``at`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, KeyError, ValueError, IndexError):
            found = prom.query(f'timestamp(up{{job="{job}"}})')
            if found and float(found[0]["value"][1]) > at:  # type: ignore[index]
                return
        assert time.monotonic() < deadline, f"no scrape of {job} after {at} within {timeout}s"
        time.sleep(0.2)
