"""Every knob in one place, filled from flags and environment by the CLI and passed explicitly.

Nothing reads the environment behind the caller's back: a stage gets a Settings and uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Topics:
    """Kafka topic names; the defaults are what Falcosidekick and the README use."""

    input: str = "falco"
    tallies: str = "streamproc.tallies"
    actions: str = "streamproc.actions"
    dead_letters: str = "streamproc.dlq"
    audit: str = "streamproc.audit"


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration of all stages."""

    bootstrap_servers: str = "localhost:9092"
    topology_path: Path = Path("topologies")
    topics: Topics = field(default_factory=Topics)
    dry_run: bool = False
    kubeconfig: str | None = None
    #: partitions for the internal topics; also the Faust table partitions.
    partitions: int = 1
    #: consumer group session timeout; tansu's first join takes half of it.
    session_timeout_s: float = 10.0
    #: the longest the ingest stage holds detections before publishing their tallies.
    flush_interval_s: float = 0.05
    #: how long counts for windows that already qualified may wait before being published.
    tally_hold_s: float = 1.0
    #: most records per ingest batch.
    batch_max_records: int = 20_000
    #: keep a broker-side idempotent producer where the broker supports it (Apache Kafka does).
    enable_idempotence: bool = False
    #: bounded TTL cache of pod -> workload resolutions.
    resolver_cache_size: int = 100_000
    resolver_cache_ttl_s: float = 300.0
    #: Kubernetes API request timeout.
    api_timeout_s: float = 10.0
    #: concurrent API requests per process.
    api_concurrency: int = 16
    #: sustained Kubernetes API requests per second per process, and the burst above it.
    api_qps: float = 20.0
    api_burst: int = 40
    #: record Kubernetes Events on observed objects
    kube_events: bool = True
    #: how often the expirer re-lists managed pods to catch changes made elsewhere.
    expiry_resync_s: float = 60.0
    #: divides every window size and TTL (the lab's ``--speed``).
    speed: float = 1.0
    metrics_port: int = 9108
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a metrics endpoint must be scrapeable
    client_id: str = "streamproc"
