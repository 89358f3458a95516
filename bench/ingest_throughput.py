"""Ingest throughput: streamproc's ingest stage vs a plain aiokafka + orjson consumer, same topic.

    python bench/ingest_throughput.py [--events 300000] [--workloads 500] [--scaling]

Both read the same ~430-byte Falcosidekick events from the same local broker partition, each
with its own consumer group; each is timed from its first record to its last, so group joins do
not count. The baseline only decodes each event; the ingest stage parses, validates, matches the
default topology, resolves the workload (owner fields / name shape: no API server here),
pre-aggregates, publishes tallies and commits. ``--scaling`` also runs two ingest processes on
two partitions. Target (issue #4): ingest >= 40% of the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compact_event, create_topic, load_topic, report, workload_pods
from streamproc.clients import metrics
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.broker import EmbeddedBroker
from streamproc.model import topologies
from streamproc.settings import Settings
from streamproc.stages.ingest import Ingestor

ROOT = Path(__file__).resolve().parents[1]


async def baseline(bootstrap: str, topic: str, total: int) -> float:
    """Events/s of a consumer that only decodes each event with orjson."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="bench-baseline",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    seen, started = 0, 0.0
    loads = orjson.loads
    try:
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            if batch and not started:
                started = time.perf_counter()
            for records in batch.values():
                for record in records:
                    loads(record.value)
                seen += len(records)
    finally:
        await consumer.stop()
    return total / (time.perf_counter() - started)


async def ingest(bootstrap: str, topic: str, total: int | None) -> tuple[int, float, float, int]:
    """Run streamproc's ingest stage over a topic: (events, first, last record time, tallies).

    With ``total`` it stops once that many were consumed; without, after 3 s without new records
    (the scaling run, where each process only sees its share).
    """
    settings = Settings(bootstrap_servers=bootstrap, session_timeout_s=6.0)
    loaded = topologies.load_path(ROOT / "topologies")
    loaded = [topologies.reading(t, topic) for t in loaded]
    stage = Ingestor(settings, loaded, WorkloadResolver(None, cache_size=200_000, ttl_s=600))

    def consumed() -> float:
        # this one metric family only: collecting the whole registry (process and GC
        # collectors included) every few ms would take CPU from the stage being measured
        return sum(
            sample.value
            for family in metrics.records_consumed.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("stage") == "ingest"
        )

    before = consumed()
    tallies_before = metrics.total("streamproc_tallies_published_total")
    stop = asyncio.Event()
    task = asyncio.create_task(stage.run(stop))
    first = last = 0.0
    done = 0
    try:
        while True:
            now_done = int(consumed() - before)
            now = time.time()
            if now_done > done:
                first = first or now
                last, done = now, now_done
            if total is not None and done >= total:
                break
            if total is None and done and now - last > 3.0:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task
    tallies = int(metrics.total("streamproc_tallies_published_total") - tallies_before)
    return done, first, last, tallies


def _worker(bootstrap: str, topic: str, out: Any) -> None:
    out.put(asyncio.run(ingest(bootstrap, topic, None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--workloads", type=int, default=500)
    parser.add_argument("--scaling", action="store_true")
    args = parser.parse_args()
    rng = random.Random(1)
    pods = workload_pods(args.workloads)
    now = time.time()
    values = [compact_event(rng, *pods[i % len(pods)], now) for i in range(args.events)]
    size = sum(map(len, values)) / len(values)
    with EmbeddedBroker().running() as broker:
        asyncio.run(create_topic(broker.bootstrap, "falco", 1))
        load_s = asyncio.run(load_topic(broker.bootstrap, "falco", values, 1))
        base = asyncio.run(baseline(broker.bootstrap, "falco", args.events))
        done, first, last, tallies = asyncio.run(ingest(broker.bootstrap, "falco", args.events))
        # ``first`` is when the first batch was counted; tiny smoke runs fit in one batch.
        ours = done / max(last - first, 1e-3)
        rows = [
            {"name": "baseline: aiokafka + orjson.loads", "value": base, "unit": "events/s"},
            {
                "name": "streamproc ingest (1 partition)",
                "value": ours,
                "baseline": base,
                "unit": "events/s",
            },
        ]
        if args.scaling:
            asyncio.run(create_topic(broker.bootstrap, "falco2", 2))
            asyncio.run(load_topic(broker.bootstrap, "falco2", values, 2))
            spawn = multiprocessing.get_context("spawn")
            queue = spawn.Queue()
            workers = [
                spawn.Process(target=_worker, args=(broker.bootstrap, "falco2", queue))
                for _ in range(2)
            ]
            for w in workers:
                w.start()
            stats = [queue.get(timeout=600) for _ in workers]
            for w in workers:
                w.join()
            consumed = sum(s[0] for s in stats)
            span = max(s[2] for s in stats) - min(s[1] for s in stats)
            rows.append(
                {
                    "name": "streamproc ingest (2 processes, 2 partitions)",
                    "value": consumed / span,
                    "baseline": ours,
                    "unit": "events/s",
                }
            )
    report(
        "ingest_throughput",
        rows,
        {
            "events": args.events,
            "workloads": args.workloads,
            "event_bytes": round(size),
            "tallies_published": tallies,
            "load_seconds": round(load_s, 2),
            "target": "ingest >= 0.40 x baseline",
        },
    )
    print(
        f"events: {args.events} of ~{size:.0f} bytes over {args.workloads} workloads; "
        f"tallies published: {tallies} ({args.events / max(1, tallies):,.0f} detections each)"
    )


if __name__ == "__main__":
    main()
