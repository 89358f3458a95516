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


#: Kafka's security.protocol values, as Apache Kafka, aiokafka and Faust name them.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms Falcosidekick offers too (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How every Kafka connection authenticates and encrypts; one value shared by all clients.

    Secrets are kept out of ``repr`` so a logged Settings never shows them.
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    #: CA bundle that signed the brokers' certificates (system store when absent).
    ca_file: Path | None = None
    #: client certificate and key, for brokers that require mutual TLS.
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security protocol {self.protocol!r} is not one of {SECURITY_PROTOCOLS}"
            )
        if self.sasl and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"SASL mechanism {self.sasl_mechanism!r} is not one of {SASL_MECHANISMS}"
            )
        if self.sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.protocol} needs a SASL username and password")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def tls(self) -> bool:
        """Whether connections are encrypted."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        """Whether connections authenticate with SASL."""
        return self.protocol.startswith("SASL_")


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration of all stages."""

    bootstrap_servers: str = "localhost:9092"
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
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
    #: the longest a fetch waits for records. Apache Kafka answers a waiting fetch as soon as
    #: records arrive, so there it only sets how often an idle consumer asks (raise it to save
    #: requests); brokers that do not wake a parked fetch (tansu) add up to this much per hop.
    fetch_max_wait_ms: int = 20
    #: most records per ingest batch.
    batch_max_records: int = 20_000
    #: keep a broker-side idempotent producer where the broker supports it (Apache Kafka does).
    enable_idempotence: bool = False
    #: bounded TTL cache of pod -> workload resolutions.
    resolver_cache_size: int = 100_000
    resolver_cache_ttl_s: float = 300.0
    #: API lookups per second for pods not in that cache; beyond it, the pod name's shape.
    resolver_lookups_per_s: float = 10.0
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
