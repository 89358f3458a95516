"""Shared fixtures: real servers on loopback (a Kafka-protocol broker, the emulated API server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from streamproc.lab.broker import BrokerUnavailable, EmbeddedBroker
from streamproc.lab.cluster import ClusterBuilder, sample_cluster
from streamproc.lab.kubeemu import KubeEmulator

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
