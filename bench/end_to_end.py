"""End-to-end latency and API economy: detection appended to Kafka -> first patch acknowledged.

    python bench/end_to_end.py [--rate 5000] [--seconds 20] [--workloads 500] [--storm 1000000]

Starts its own broker and emulated API server (500 Deployments, 2 pods each), runs the three
stages as separate processes (as deployed) with threshold 1, and publishes ``--rate``
detections/s; workloads start firing one after another over the run and keep firing.
Latency per workload is measured from the send of its first detection to the API server's
acknowledgement of the first patch on one of its pods (taken from the server's request log).
The baseline, measured in the same run, is the floor the broker alone imposes: a plain
aiokafka consumer's time from send to receipt of the same records. ``--storm N`` then publishes
N detections as fast as possible and reports patches against the ideal (one per pod per
window). Also reports each process's resident memory and writes a latency histogram PNG when
matplotlib is installed. Targets (issue #4): p50 <= 150 ms, p99 <= 1 s, patch ratio 1.00.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, compact_event, report, topology_yaml
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import ClusterBuilder

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def floor_consumer(
    bootstrap: str, sent: dict[bytes, float], out: list[float], stop: asyncio.Event
) -> None:
    """Baseline: when a plain consumer first sees each workload's first record."""
    consumer = AIOKafkaConsumer(
        "falco",
        bootstrap_servers=bootstrap,
        group_id="bench-floor",
        fetch_max_wait_ms=50,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for record in records:
                    if record.value in sent:
                        out.append(now - sent.pop(record.value))
    finally:
        await consumer.stop()


async def publish(
    bootstrap: str,
    values: list[tuple[str, bytes]],
    rate: float,
    first_sent: dict[str, float],
    probes: dict[bytes, float],
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks="all")
    await producer.start()
    try:
        tick, per_tick = 0.01, max(1, int(rate * 0.01))
        started = time.monotonic()
        for i in range(0, len(values), per_tick):
            for workload, value in values[i : i + per_tick]:
                if workload not in first_sent:
                    first_sent[workload] = time.time()
                    probes[value] = first_sent[workload]
                await producer.send("falco", value)
            delay = started + (i // per_tick + 1) * tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()


def first_patches(log: list[list[object]], pod_owner: dict[str, str]) -> dict[str, float]:
    """Per workload, when the API server acknowledged the first patch on one of its pods."""
    found: dict[str, float] = {}
    for _arrived, method, path, _query, status, answered in log:
        if method == "PATCH" and status == 200:
            workload = pod_owner.get(str(path).rsplit("/", 1)[-1])
            if workload and workload not in found:
                found[workload] = float(answered)  # type: ignore[arg-type]
    return found


async def first_records(bootstrap: str, topic: str, field: str) -> dict[str, float]:
    """Per workload, the timestamp of the first record on ``topic`` (when its stage sent it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: dict[str, float] = {}
    try:
        await consumer.topics()  # metadata, so the topic's partitions are known
        # assigned, not subscribed: no group join to wait for
        consumer.assign(
            [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        )
        await consumer.seek_to_beginning()
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.5:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                quiet_since = time.monotonic()
                for record in records:
                    name = orjson.loads(record.value)[field]
                    found.setdefault(name, record.timestamp / 1000)
    finally:
        await consumer.stop()
    return found


def hop_rows(
    first_sent: dict[str, float], acted: dict[str, float], patched: dict[str, float]
) -> list[dict[str, object]]:
    """Median time on each side of the actions topic, so the total can be read hop by hop.

    (A tally's record timestamp is its window's start, for Faust's windowing, so the ingest
    and windows stages are measured together.)
    """
    hops = {
        "hop p50: send -> action published (ingest + windows) (ms)": (first_sent, acted),
        "hop p50: action -> first patch acknowledged (ms)": (acted, patched),
    }
    rows: list[dict[str, object]] = []
    for name, (start, end) in hops.items():
        spans = [end[w] - start[w] for w in first_sent if w in start and w in end]
        if spans:
            rows.append({"name": name, "value": statistics.median(spans) * 1e3, "unit": "ms"})
    return rows


def keep(**documents: object) -> None:
    """With BENCH_WORKDIR set, keep the raw timings there for reading hop by hop."""
    if "BENCH_WORKDIR" in os.environ:
        for name, document in documents.items():
            Path(os.environ["BENCH_WORKDIR"], f"{name}.json").write_text(json.dumps(document))


def request_log(url: str) -> list[list[object]]:
    with urllib.request.urlopen(f"{url}/_emulator/requests", timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def scrape(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


class Processes:
    """The emulated API server and the three stages, each its own process as in production."""

    def __init__(
        self,
        workdir: Path,
        workloads: int,
        bootstrap: str,
        *,
        topology: str | None = None,
        # measure the pipeline, not the client-side rate limit (default 20/s); variables, as
        # each stage takes only the options it uses (windows has no --api-qps)
        stage_env: dict[str, str] | None = None,
    ) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        kubeconfig = workdir / "kubeconfig"
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamproc.lab.kubeemu",
                "--kubeconfig",
                str(kubeconfig),
                "--deployments",
                str(workloads),
            ],
            stdout=subprocess.PIPE,
        )
        self.children.append(emulator)
        assert emulator.stdout is not None
        self.api = emulator.stdout.readline().decode().strip()
        (workdir / "topologies").mkdir(exist_ok=True)
        (workdir / "topologies" / "bench.yaml").write_text(
            topology or topology_yaml(window_s=600, threshold=1)
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "STREAMPROC_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMPROC_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            # the emulated cluster puts hundreds of pods on each of two nodes, more than
            # Retina's filter map would hold: these benchmarks measure the pipeline and the
            # API economy, so the per-node budget is off
            "STREAMPROC_NODE_BUDGET": "0",
            **(
                {"STREAMPROC_API_QPS": "5000", "STREAMPROC_API_BURST": "5000"}
                if stage_env is None
                else stage_env
            ),
        }
        self.ports = {}
        for stage in ("ingest", "windows", "annotate"):
            self.ports[stage] = free_port()
            self.children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "streamproc",
                        stage,
                        "--topology",
                        str(workdir / "topologies"),
                        "--session-timeout",
                        "6",
                        "--metrics-host",
                        "127.0.0.1",
                        "--metrics-port",
                        str(self.ports[stage]),
                        *os.environ.get("BENCH_STAGE_ARGS", "").split(),
                    ],
                    env=env,
                    stdout=(workdir / f"{stage}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, child in zip(
            ("emulator", "ingest", "windows", "annotate"), self.children, strict=True
        ):
            status = Path(f"/proc/{child.pid}/status").read_text()
            out[name] = int(status.split("VmRSS:")[1].split()[0]) / 1024
        return out

    def cpu_s(self, extra: dict[str, int]) -> dict[str, float]:
        """CPU seconds (user + system) each process has used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        pids = (
            dict(
                zip(
                    ("emulator", "ingest", "windows", "annotate"),
                    (c.pid for c in self.children),
                    strict=True,
                )
            )
            | extra
        )
        out = {}
        for name, pid in pids.items():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / ticks
        return out

    def stop(self) -> None:
        for child in self.children:
            child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


async def run(args: argparse.Namespace) -> None:
    builder = ClusterBuilder(seed=3)
    workloads = [
        builder.deployment(f"ns-{i % 25}", f"app-{i}", 2, "nginx:1.27")
        for i in range(args.workloads)
    ]
    pod_owner = {pod: w.name for w in workloads for pod in w.pods}
    rng = random.Random(7)
    window = 600
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker().running() as broker:
        procs = Processes(
            Path(os.environ.get("BENCH_WORKDIR", tmp)), args.workloads, broker.bootstrap
        )
        try:
            warm = workloads[0]
            await publish(
                broker.bootstrap,
                [(warm.name, compact_event(rng, warm.namespace, warm.pods[0], time.time()))],
                1000,
                {},
                {},
            )
            deadline = time.monotonic() + 120
            while warm.name not in first_patches(request_log(procs.api), pod_owner):
                if time.monotonic() > deadline:
                    raise SystemExit("pipeline did not come up; see the stage logs")
                await asyncio.sleep(0.2)
            measured = workloads[1:]
            total = int(args.rate * args.seconds)
            # Sustained load: workloads start firing one after another over the first 80% of
            # the run, and every workload that has started keeps firing; so each workload's
            # first detection meets a pipeline already busy with the others' traffic.
            ramp = max(1, int(total * 0.8))
            values = [
                (w.name, compact_event(rng, w.namespace, rng.choice(w.pods), time.time()))
                for w in (
                    measured[
                        rng.randrange(max(1, min(len(measured), len(measured) * i // ramp + 1)))
                    ]
                    for i in range(total)
                )
            ]
            first_sent: dict[str, float] = {}
            probes: dict[bytes, float] = {}
            floor: list[float] = []
            floor_stop = asyncio.Event()
            floor_task = asyncio.create_task(
                floor_consumer(broker.bootstrap, probes, floor, floor_stop)
            )
            await asyncio.sleep(4)  # the floor consumer's group join (half the session timeout)
            windows_touched = {int(time.time()) // window}
            others = {"broker": broker.pid or 0, "load generator + floor": os.getpid()}
            cpu_before, wall_before = procs.cpu_s(others), time.monotonic()
            await publish(broker.bootstrap, values, args.rate, first_sent, probes)
            cpu_after, wall = procs.cpu_s(others), time.monotonic() - wall_before
            windows_touched.add(int(time.time()) // window)
            deadline = time.monotonic() + 60
            while (
                len(first_patches(request_log(procs.api), pod_owner)) < len(workloads)
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.5)
            floor_stop.set()
            await floor_task
            log = request_log(procs.api)
            patched = first_patches(log, pod_owner)
            latencies = [patched[w] - first_sent[w] for w in first_sent if w in patched]
            acted = await first_records(broker.bootstrap, "streamproc.actions", "name")
            keep(requests=log, hops={"sent": first_sent, "acted": acted, "patched": patched})
            rows = [
                {
                    "name": "floor: send -> plain consumer p50 (ms)",
                    "value": statistics.median(floor) * 1e3,
                    "unit": "ms",
                },
                {
                    "name": "streamproc: send -> first patch p50 (ms)",
                    "value": statistics.median(latencies) * 1e3,
                    "baseline": statistics.median(floor) * 1e3,
                    "unit": "ms",
                },
                {
                    "name": "streamproc: send -> first patch p99 (ms)",
                    "value": percentile(latencies, 0.99) * 1e3,
                    "baseline": percentile(floor, 0.99) * 1e3,
                    "unit": "ms",
                },
                *hop_rows(first_sent, acted, patched),
                {
                    "name": "workloads observed / published",
                    "value": len(latencies),
                    "baseline": len(first_sent),
                    "unit": "workloads",
                },
            ]
            if args.storm:
                storm = [
                    (w.name, compact_event(rng, w.namespace, rng.choice(w.pods), time.time()))
                    for w in (workloads[i % len(workloads)] for i in range(args.storm))
                ]
                started = time.time()
                await publish(broker.bootstrap, storm, 1e9, {}, {})
                windows_touched.add(int(time.time()) // window)
                expected = 1 + total + args.storm
                deadline = time.monotonic() + 900
                while (
                    scrape(procs.ports["ingest"], "streamproc_records_consumed_total") < expected
                    and time.monotonic() < deadline
                ):
                    await asyncio.sleep(0.5)
                await asyncio.sleep(3)
                drained = time.time() - started
                patches = sum(1 for r in request_log(procs.api) if r[1] == "PATCH" and r[4] == 200)
                ideal = sum(len(w.pods) for w in workloads) * len(windows_touched)
                rows.append(
                    {
                        "name": f"storm: patches after {args.storm:,} detections",
                        "value": patches,
                        "baseline": ideal,
                        "unit": "patches (baseline = ideal: pods x windows)",
                    }
                )
                rows.append(
                    {
                        "name": "storm: seconds from first send to drained",
                        "value": drained,
                        "unit": "s",
                    }
                )
            rows += [
                {
                    "name": f"CPU during the sustained load: {name}",
                    "value": 100 * (cpu_after[name] - cpu_before[name]) / wall,
                    "unit": "% of one core",
                }
                for name in cpu_after
            ]
            rows += [
                {"name": f"resident memory: {name}", "value": mb, "unit": "MB"}
                for name, mb in procs.rss_mb().items()
            ]
        finally:
            procs.stop()
    report(
        "end_to_end",
        rows,
        {
            "rate": args.rate,
            "seconds": args.seconds,
            "workloads": args.workloads,
            "targets": "p50 <= 150 ms, p99 <= 1000 ms, patch ratio 1.00",
            "latencies_ms": [round(x * 1e3, 2) for x in latencies],
        },
    )
    plot(latencies, floor)


def plot(latencies: list[float], floor: list[float]) -> None:
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib not installed: no histogram (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist([x * 1e3 for x in latencies], bins=40, alpha=0.8, label="streamproc: send -> patch")
    ax.hist([x * 1e3 for x in floor], bins=40, alpha=0.6, label="floor: send -> consumer")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("workloads")
    ax.set_title("Detection to first annotation, per workload")
    ax.legend()
    path = RESULTS / "end_to_end_latency.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"histogram: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workloads", type=int, default=500)
    parser.add_argument("--storm", type=int, default=0)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
