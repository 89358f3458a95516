"""End-to-end latency and API economy: detection appended to Kafka -> first patch acknowledged.

    python bench/end_to_end.py [--rate 5000] [--seconds 20] [--workloads 500] [--storm 1000000]

Starts its own broker and emulated API server (500 Deployments, 2 pods each), runs all three
stages in this process with threshold 1, and publishes ``--rate`` detections/s spread over the
workloads. Latency per workload is measured from the send of its first detection to the API
server's acknowledgement of the first patch on one of its pods (taken from the server's request
log). The baseline, measured in the same run, is the floor the broker alone imposes: a plain
aiokafka consumer's time from send to receipt of the same records. ``--storm N`` then publishes N
detections as fast as possible into one window and reports patches against the ideal (one per pod
per window). Also reports resident memory and writes a latency histogram PNG when matplotlib is
installed. Targets (issue #4): p50 <= 150 ms, p99 <= 1 s, patch ratio 1.00.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, compact_event, report
from streamproc import running, topologies
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def topology(window_s: int) -> topologies.Topology:
    return topologies.Topology.model_validate(
        {
            "apiVersion": "streamproc/v1",
            "kind": "Topology",
            "metadata": {"name": "bench"},
            "spec": {
                "match": {"priority": ">=Warning"},
                "window": {"size": f"{window_s}s"},
                "action": {"ttl": "1h"},
            },
        }
    )


async def floor_consumer(
    bootstrap: str, sent: dict[bytes, float], out: list[float], stop: asyncio.Event
) -> None:
    """Baseline: when a plain consumer first sees each workload's first record."""
    consumer = AIOKafkaConsumer(
        "falco",
        bootstrap_servers=bootstrap,
        group_id="bench-floor",
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


def first_patches(emulator: KubeEmulator, pod_owner: dict[str, str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for r in emulator.requests:
        if r.method == "PATCH" and r.status == 200:
            workload = pod_owner.get(r.path.rsplit("/", 1)[-1])
            if workload and workload not in found:
                found[workload] = r.at
    return found


async def run(args: argparse.Namespace) -> None:
    builder = ClusterBuilder(seed=3)
    workloads = [
        builder.deployment(f"ns-{i % 25}", f"app-{i}", 2, "nginx:1.27")
        for i in range(args.workloads)
    ]
    pod_owner = {pod: w.name for w in workloads for pod in w.pods}
    emulator = KubeEmulator()
    for obj in builder.objects:
        emulator.create(obj)
    rng = random.Random(7)
    with emulator.serve(), EmbeddedBroker().running() as broker:
        kubeconfig = emulator.write_kubeconfig(RESULTS / "bench-kubeconfig")
        window = 600
        settings = Settings(
            bootstrap_servers=broker.bootstrap,
            kubeconfig=str(kubeconfig),
            session_timeout_s=6.0,
            metrics_port=0,
        )
        handles = running.Running()
        stop = asyncio.Event()
        pipeline = asyncio.create_task(
            running.run_stages(settings, [topology(window)], running.STAGES, stop, handles)
        )
        # Warm up: one workload end to end, so group joins are not measured.
        warm = workloads[0]
        await publish(
            broker.bootstrap,
            [(warm.name, compact_event(rng, warm.namespace, warm.pods[0], time.time()))],
            1000,
            {},
            {},
        )
        deadline = time.monotonic() + 90
        while warm.name not in first_patches(emulator, pod_owner):
            if time.monotonic() > deadline or pipeline.done():
                raise SystemExit("pipeline did not come up")
            await asyncio.sleep(0.1)
        measured = workloads[1:]
        total = int(args.rate * args.seconds)
        values = [
            (w.name, compact_event(rng, w.namespace, rng.choice(w.pods), time.time()))
            for w in (measured[i % len(measured)] for i in range(total))
        ]
        first_sent: dict[str, float] = {}
        probes: dict[bytes, float] = {}
        floor: list[float] = []
        floor_stop = asyncio.Event()
        floor_task = asyncio.create_task(
            floor_consumer(broker.bootstrap, probes, floor, floor_stop)
        )
        await asyncio.sleep(4)  # the floor consumer's group join (half the session timeout)
        window_start = int(time.time()) // window
        await publish(broker.bootstrap, values, args.rate, first_sent, probes)
        deadline = time.monotonic() + 60
        while (
            len(first_patches(emulator, pod_owner)) < len(workloads) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.2)
        floor_stop.set()
        await floor_task
        patched = first_patches(emulator, pod_owner)
        latencies = [patched[w] - first_sent[w] for w in first_sent if w in patched]
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
            {
                "name": "workloads observed / published",
                "value": len(latencies),
                "baseline": len(first_sent),
                "unit": "workloads",
            },
        ]
        if args.storm:
            before = sum(1 for r in emulator.requests if r.method == "PATCH" and r.status == 200)
            storm = [
                (w.name, compact_event(rng, w.namespace, rng.choice(w.pods), time.time()))
                for w in (workloads[i % len(workloads)] for i in range(args.storm))
            ]
            storm_started = time.time()
            await publish(broker.bootstrap, storm, 1e9, {}, {})
            consumed_target = args.storm
            deadline = time.monotonic() + 600
            from streamproc import metrics  # noqa: PLC0415

            base = metrics.total("streamproc_records_consumed_total", stage="ingest")
            while time.monotonic() < deadline:
                done = metrics.total("streamproc_records_consumed_total", stage="ingest")
                if done - base >= consumed_target - 1 or done >= total + 1 + consumed_target:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)
            storm_s = time.time() - storm_started
            patches = sum(1 for r in emulator.requests if r.method == "PATCH" and r.status == 200)
            windows_touched = {int(time.time()) // window, window_start}
            ideal = sum(len(w.pods) for w in workloads) * len(windows_touched)
            total_patches = patches
            rows.append(
                {
                    "name": f"storm: patches for {args.storm:,} detections",
                    "value": total_patches,
                    "baseline": ideal,
                    "unit": "patches (baseline = ideal)",
                }
            )
            rows.append(
                {"name": "storm: seconds from first send to drained", "value": storm_s, "unit": "s"}
            )
            del before
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(
            {
                "name": "peak RSS, all stages + broker client + emulator",
                "value": rss_mb,
                "unit": "MB",
            }
        )
        stop.set()
        await pipeline
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
