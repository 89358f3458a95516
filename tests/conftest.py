"""Shared fixtures: real servers on loopback (a Kafka-protocol broker, the emulated API server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from streamproc.clients import kube, metrics
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.broker import BrokerUnavailable, EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, SampleWorkload, sample_cluster
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import marks, seals
from streamproc.model.actions import Action
from streamproc.model.topologies import Topology
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer

FIXTURES = Path(__file__).parent / "fixtures"
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; bounded, fails with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """The same, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture(autouse=True)
def _no_observed_pods_left_over() -> None:
    """Each test starts with no pod in ``streamproc_observed_pod_since_seconds``.

    The gauge names pods by their (sample cluster) names in a process-global registry: an earlier
    test's expirer that never ended its observations would otherwise show up in a later test's
    scrape or count.
    """
    metrics.observed_pod_since.clear()


@pytest.fixture
def cluster() -> ClusterBuilder:
    """The lab's sample cluster objects (not yet served)."""
    return sample_cluster()


@pytest.fixture
def emulator(cluster: ClusterBuilder, tmp_path: Path) -> Iterator[KubeEmulator]:
    """The emulated API server seeded with the sample cluster, on a loopback port."""
    emu = KubeEmulator()
    for obj in cluster.objects:
        emu.create(obj)
    with emu.serve():
        emu.write_kubeconfig(tmp_path / "kubeconfig")
        yield emu


@pytest.fixture
def kubeconfig(emulator: KubeEmulator, tmp_path: Path) -> Path:
    """Path of a kubeconfig that points at the emulator."""
    return tmp_path / "kubeconfig"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A fresh tansu broker on a free loopback port, stopped after the test."""
    instance = EmbeddedBroker(log=tmp_path / "tansu.log")
    try:
        instance.start()
    except BrokerUnavailable as exc:
        pytest.fail(f"embedded broker unavailable: {exc}")
    try:
        yield instance
    finally:
        instance.stop()


# ---- shared by the annotator, follower, status and RBAC tests ------------------------------


def topology(
    ttl: float | str = 600,
    dry_run: bool = False,
    scope: str = "workload",
    *,
    name: str = "retina-observe",
    **action: Any,
) -> Topology:
    """A topology with a 10 s window; ``action`` adds fields (``capture``, ``maxObservations``)."""
    return Topology.model_validate(
        {
            "apiVersion": "streamproc/v1",
            "kind": "Topology",
            "metadata": {"name": name},
            "spec": {
                "window": {"size": "10s"},
                "action": {"ttl": ttl, "scope": scope, **action},
                "dryRun": dry_run,
            },
        }
    )


def action_for(
    workload: SampleWorkload,
    *,
    window_start: int | None = None,
) -> Action:
    start = window_start if window_start is not None else int(time.time()) // 10 * 10
    return Action(
        id=f"retina-observe/{workload.namespace}/{workload.kind}/{workload.name}/{start * 1000}",
        topology="retina-observe",
        namespace=workload.namespace,
        kind=workload.kind,
        name=workload.name,
        resolved_by="api",
        pod=workload.pods[0],
        window_start=start,
        window_end=start + 10,
        rule="Read sensitive file untrusted",
        priority=4,
        count=1,
        first_append_ms=int(time.time() * 1000),
    )


def annotated(emulator: KubeEmulator) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in emulator.list("Pod")
        if (p["metadata"].get("annotations") or {}).get("retina.sh") == "observe"
    }


def workload(cluster: ClusterBuilder, name: str) -> SampleWorkload:
    return next(w for w in cluster.workloads if w.name == name)


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[kube.Kube]:
    connection = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=3)
    yield connection
    await connection.close()


class Clock:
    """Real time plus an offset a test moves forward: a TTL passes at once, on the test's cue."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def make(
    client: kube.Kube,
    *,
    ttl: float = 600,
    dry_run: bool = False,
    scope: str = "workload",
    settings_dry_run: bool = False,
    node_budget: int = 200,
    extend_below: float = 0.5,
    sealer: seals.Sealer | None = None,
) -> tuple[Annotator, Expirer]:
    """An annotator and its expirer on one test clock (``time_passes`` moves both).

    ``sealer``: both seal and check marks with it, as ``--mark-key-file`` makes them.
    """
    settings = Settings(
        dry_run=settings_dry_run, node_budget=node_budget, extend_below=extend_below
    )
    resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
    clock = Clock()
    topologies = [topology(ttl, dry_run, scope)]
    policy = marks.Policy.of(topologies, sealer=sealer)
    expirer = Expirer(client, resync_s=60, clock=clock, policy=policy)
    annotator = Annotator(
        settings, topologies, client, resolver, expirer, clock=clock, policy=policy
    )
    return annotator, expirer


def time_passes(expirer: Expirer, seconds: float) -> None:
    """Move the expirer's clock (made by ``make``) forward and let it look at its schedule."""
    clock = expirer.clock
    assert isinstance(clock, Clock)
    clock.advance(seconds)
    expirer.wake()


@contextlib.asynccontextmanager
async def running(
    *loops: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    stop_within: float | None = None,
) -> AsyncIterator[None]:
    """Run loops (an expirer's, a cache's) until the block ends, then stop and await them.

    ``stop_within`` bounds that wait where the stop's own promptness is under test.
    """
    stop = asyncio.Event()
    started = [asyncio.create_task(run(stop)) for run in loops]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*started), stop_within)
