"""Scale-out: one and two replicas of every stage, side by side.

    python bench/scale.py [--workloads 400] [--detections 30000] [--kills 3] [--partitions 4]

For each replica count this starts its own broker, emulated API server (``--workloads``
Deployments, 2 pods each) and that many ``ingest``, ``windows`` and ``annotate`` processes, as
deployed (default ``--session-timeout``; 10 s windows, threshold 1, 30 s TTL). Then:

- **Throughput**: ``--detections`` published as fast as possible over a quarter of the
  workloads; detections/s until every ingest replica has consumed them, and until every one of
  those workloads has a patched pod.
- **Failover**, ``--kills`` times per stage: SIGKILL one replica (with one replica, a
  replacement is started at once, as a Deployment's controller would), then publish a probe: one
  detection for a fresh workload on every partition of the source topic, chosen to reach every
  actions partition. Failover is the time from the kill until the last probe workload's first
  patch; the baseline is the same probe with nothing killed. A killed replica is restarted and
  its group back to full strength before the next kill.
- **Writes and duplicates**, counted after everything has expired, so every kill is included:
  PATCH requests per pod of the throughput workloads (ideal: 1 apply + 1 expiry), and
  ``ObservationStarted``/``ObservationExpired`` Events beyond one per pod.

The issue's target: failover <= 15 s for every stage on this broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compact_event, create_topic, report, topology_yaml
from bench.end_to_end import first_patches, request_log, scrape
from streamproc.clients import kafka
from streamproc.lab.broker import EmbeddedBroker, free_port
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload

STAGES = ("ingest", "windows", "annotate")


class Deployment:
    """The emulated API server and ``replicas`` processes of each stage."""

    def __init__(
        self, workdir: Path, workloads: int, bootstrap: str, replicas: int, partitions: int
    ):
        self.workdir, self.bootstrap = workdir, bootstrap
        kubeconfig = workdir / "kubeconfig"
        self.emulator = subprocess.Popen(
            [
                *(sys.executable, "-m", "streamproc.lab.kubeemu"),
                *("--kubeconfig", str(kubeconfig), "--deployments", str(workloads)),
            ],
            stdout=subprocess.PIPE,
        )
        assert self.emulator.stdout is not None
        self.api = self.emulator.stdout.readline().decode().strip()
        (workdir / "topologies").mkdir(exist_ok=True)
        (workdir / "topologies" / "bench.yaml").write_text(
            topology_yaml(window_s=10, threshold=1, ttl="30s")
        )
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "STREAMPROC_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMPROC_PARTITIONS": str(partitions),
            # hundreds of pods per emulated node, and the pipeline measured rather than the
            # client-side rate limit: no per-node budget, a high API budget (variables: each
            # stage reads those it takes, as the k8s ConfigMap does)
            "STREAMPROC_NODE_BUDGET": "0",
            "STREAMPROC_API_QPS": "5000",
            "STREAMPROC_API_BURST": "5000",
            "STREAMPROC_EVENT_QPS": "5000",  # the Events are counted: none may wait or drop
            "STREAMPROC_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
        self.started = 0
        self.replicas: dict[str, list[tuple[subprocess.Popen[bytes], int]]] = {
            stage: [self.start(stage) for _ in range(replicas)] for stage in STAGES
        }

    def start(self, stage: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        self.started += 1
        child = subprocess.Popen(
            [
                *(sys.executable, "-m", "streamproc", stage),
                *("--topology", str(self.workdir / "topologies")),
                *("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
            ],
            env=self.env,
            stdout=(self.workdir / f"{stage}-{self.started}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        return child, port

    def consumed(self) -> float:
        """Detections consumed by the ingest replicas running now (each counts its own)."""
        return sum(
            scrape(port, "streamproc_records_consumed_total") for _, port in self.replicas["ingest"]
        )

    def stop(self) -> None:
        children = [c for running in self.replicas.values() for c, _ in running]
        for child in [*children, self.emulator]:
            child.send_signal(signal.SIGTERM)
        for child in [*children, self.emulator]:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


async def until(check: Callable[[], bool], within_s: float, what: str) -> float:
    """Poll ``check`` (a measurement loop: this is a benchmark); returns when it held."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}; see the stage logs")
        await asyncio.sleep(0.1)
    return time.time()


async def send(bootstrap: str, values: list[tuple[int | None, bytes]]) -> float:
    """Publish as fast as possible (to a partition, or spread); returns when sending began."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    began = time.time()
    try:
        futures = [await producer.send("falco", v, partition=p) for p, v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return began


def probe_sets(
    workloads: list[SampleWorkload], partitions: int, rounds: int
) -> list[list[SampleWorkload]]:
    """Fresh workloads for each probe, two on every actions partition."""
    spare = list(workloads)
    sets = []
    for _ in range(rounds):
        chosen: list[SampleWorkload] = []
        wanted = Counter(dict.fromkeys(range(partitions), 2))
        for w in list(spare):
            key = f"bench/{w.namespace}/Deployment/{w.name}".encode()
            target = kafka.partition_of(key, partitions)
            if wanted[target] > 0:
                wanted[target] -= 1
                chosen.append(w)
                spare.remove(w)
            if not +wanted:
                break
        if +wanted:
            raise SystemExit("not enough workloads for the probes: raise --workloads")
        sets.append(chosen)
    return sets


async def probe(
    deployment: Deployment, probes: list[SampleWorkload], partitions: int, since: float
) -> float:
    """Seconds from ``since`` until every probe workload has a patched pod."""
    rng = random.Random(len(probes))
    owner = {pod: w.name for w in probes for pod in w.pods}
    await send(
        deployment.bootstrap,
        [
            (i % partitions, compact_event(rng, w.namespace, w.pods[0], time.time()))
            for i, w in enumerate(probes)
        ],
    )
    done = await until(
        lambda: len(first_patches(request_log(deployment.api), owner)) == len(probes),
        within_s=180,
        what="the probe workloads to be observed",
    )
    return done - since


async def full_strength(deployment: Deployment, partitions: int) -> None:
    """Until every replica of every stage holds partitions, and all of them are held."""
    for stage in STAGES:
        ports = [port for _, port in deployment.replicas[stage]]

        def settled(ports: list[int] = ports) -> bool:
            held = [scrape(port, "streamproc_assigned_partitions") for port in ports]
            return sum(held) == partitions and all(held)

        await until(settled, within_s=120, what=f"the {stage} group to settle")


def events(api: str) -> Counter[tuple[str, str]]:
    """(reason, pod) of every Event the API server holds."""
    request = urllib.request.Request(
        f"{api}/api/v1/events", headers={"Authorization": "Bearer emulator"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        items = json.loads(response.read())["items"]
    return Counter((e["reason"], e["involvedObject"]["name"]) for e in items)


def observed(api: str, pods: set[str]) -> int:
    """How many of ``pods`` carry the observation now."""
    request = urllib.request.Request(
        f"{api}/api/v1/pods", headers={"Authorization": "Bearer emulator"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        items = json.loads(response.read())["items"]
    return sum(
        1
        for p in items
        if p["metadata"]["name"] in pods
        and (p["metadata"].get("annotations") or {}).get("retina.sh") == "observe"
    )


async def measure(args: argparse.Namespace, replicas: int, workdir: Path) -> dict[str, float]:
    builder = ClusterBuilder(seed=3)
    workloads = [
        builder.deployment(f"ns-{i % 25}", f"app-{i}", 2, "nginx:1.27")
        for i in range(args.workloads)
    ]
    busy = workloads[: len(workloads) // 4]
    busy_pods = {p for w in busy for p in w.pods}
    rounds = 1 + 1 + args.kills * len(STAGES)  # warm-up, baseline, one per kill
    probes = probe_sets(workloads[len(busy) :], args.partitions, rounds)
    out: dict[str, float] = {}
    with EmbeddedBroker().running() as broker:
        await create_topic(broker.bootstrap, "falco", args.partitions)
        deployment = Deployment(
            workdir, args.workloads, broker.bootstrap, replicas, args.partitions
        )
        try:
            await probe(deployment, probes.pop(), args.partitions, time.time())  # all up
            await full_strength(deployment, args.partitions)
            out["probe latency, nothing killed (s)"] = await probe(
                deployment, probes.pop(), args.partitions, time.time()
            )

            rng = random.Random(11)
            storm = [
                (None, compact_event(rng, w.namespace, rng.choice(w.pods), time.time()))
                for w in (busy[i % len(busy)] for i in range(args.detections))
            ]
            before = deployment.consumed()
            began = await send(broker.bootstrap, storm)
            consumed = await until(
                lambda: deployment.consumed() - before >= args.detections,
                within_s=600,
                what="ingest to consume the detections",
            )
            owner = {pod: w.name for w in busy for pod in w.pods}
            patched = await until(
                lambda: len(first_patches(request_log(deployment.api), owner)) == len(busy),
                within_s=600,
                what="every busy workload to be observed",
            )
            out["ingest throughput (detections/s)"] = args.detections / (consumed - began)
            out["detections -> every workload observed (s)"] = patched - began

            for stage_kill in range(args.kills):
                for stage in STAGES:
                    running = deployment.replicas[stage]
                    victim, _port = running.pop(stage_kill % len(running))
                    victim.kill()
                    killed = time.time()
                    victim.wait()
                    if replicas == 1:  # the replacement a Deployment's controller would start
                        running.append(deployment.start(stage))
                    took = await probe(deployment, probes.pop(), args.partitions, killed)
                    out.setdefault(f"failover: {stage} (s, worst)", 0.0)
                    out[f"failover: {stage} (s, worst)"] = max(
                        out[f"failover: {stage} (s, worst)"], took
                    )
                    out.setdefault(f"_failover {stage}", 0.0)
                    out[f"_failover {stage}"] += took / args.kills
                    if replicas > 1:
                        running.append(deployment.start(stage))
                    await full_strength(deployment, args.partitions)

            await until(
                lambda: observed(deployment.api, busy_pods) == 0,
                within_s=300,
                what="every busy workload's observation to expire",
            )
            log = request_log(deployment.api)
            writes = sum(
                1
                for r in log
                if r[1] == "PATCH" and r[4] == 200 and str(r[2]).rsplit("/", 1)[-1] in busy_pods
            )
            out["API writes per busy pod"] = writes / len(busy_pods)
            seen = events(deployment.api)
            for reason in ("ObservationStarted", "ObservationExpired"):
                out[f"duplicate {reason} Events"] = sum(
                    n - 1 for (r, pod), n in seen.items() if r == reason and pod in busy_pods
                )
                out[f"pods without {reason}"] = sum(
                    1 for pod in busy_pods if seen[(reason, pod)] == 0
                )
        finally:
            deployment.stop()
    return out


async def run(args: argparse.Namespace) -> None:
    results: dict[int, dict[str, float]] = {}
    for replicas in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(os.environ.get("BENCH_WORKDIR") or tmp) / f"replicas-{replicas}"
            workdir.mkdir(parents=True, exist_ok=True)
            results[replicas] = await measure(args, replicas, workdir)
    one, two = results[1], results[2]
    rows = []
    for name in one:
        if name.startswith("_"):
            continue
        rows.append(
            {
                "name": f"2 replicas per stage: {name}",
                "value": two[name],
                "baseline": one[name] or None,
                "unit": "(baseline: 1 replica)",
            }
        )
    for stage in STAGES:
        rows.append(
            {
                "name": f"2 replicas per stage: failover: {stage} (s, mean of {args.kills})",
                "value": two[f"_failover {stage}"],
                "baseline": one[f"_failover {stage}"],
                "unit": "s (baseline: 1 replica, replacement started at once)",
            }
        )
    report(
        "scale",
        rows,
        {
            "workloads": args.workloads,
            "detections": args.detections,
            "kills": args.kills,
            "partitions": args.partitions,
            "one_replica": one,
            "two_replicas": two,
            "targets": "failover <= 15 s per stage; 0 duplicate Events; writes per pod at 2",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=400)
    parser.add_argument("--detections", type=int, default=30_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        main()
