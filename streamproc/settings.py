"""Every knob in one place, filled from flags and environment by the CLI and passed explicitly.

Nothing reads the environment behind the caller's back: a stage gets a Settings and uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Topics:
    """Kafka topic names; the defaults are what Falcosidekick and the README use."""

    input: str = "falco"
    tallies: str = "streamproc.tallies"
    actions: str = "streamproc.actions"
    dead_letters: str = "streamproc.dlq"
    audit: str = "streamproc.audit"


@dataclass(frozen=True, slots=True)
class Groups:
    """Consumer group of each stage (the windows stage's is its Faust app id)."""

    ingest: str = "streamproc-ingest"
    windows: str = "streamproc-windows"
    annotate: str = "streamproc-annotate"


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
    sasl_mechanism: str = "SCRAM-SHA-512"
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


def knob(
    default: Any, flag: str, env: str, help_text: str, *, stage: bool = True, **click_args: Any
) -> Any:
    """A setting an operator may tune: its default, flag, environment variable and help.

    The CLI builds its options from these (``cli.settings_options``), so a default, a variable
    name or a help text is written once, here. ``stage=False``: an option of one command
    only, not of every pipeline stage.
    """
    meta = {"flag": flag, "env": env, "help": help_text, "stage": stage, "click": click_args}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration of all stages."""

    bootstrap_servers: str = knob(
        "localhost:9092",
        "--bootstrap-servers",
        "STREAMPROC_BOOTSTRAP_SERVERS",
        "Kafka bootstrap servers (host:port, comma-separated).",
    )
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: a topology file or folder; None means ./topologies if present, else the shipped one.
    topology_path: Path | None = knob(
        None,
        "--topology",
        "STREAMPROC_TOPOLOGY",
        "Topology file or folder [default: ./topologies if present, else the shipped one].",
        type=Path,
    )
    topics: Topics = field(default_factory=Topics)
    groups: Groups = field(default_factory=Groups)
    #: this deployment's cluster in a fleet that shares one Kafka ("" for a single cluster)
    cluster: str = knob(
        "",
        "--cluster",
        "STREAMPROC_CLUSTER",
        "This cluster's name when many clusters share one Kafka: ingest gives it to detections "
        "without a cluster field, annotate acts only on its actions [default: none, one cluster].",
    )
    cluster_field: str = knob(
        "cluster",
        "--cluster-field",
        "STREAMPROC_CLUSTER_FIELD",
        "The output_fields key that names a detection's cluster (Falcosidekick's "
        "CUSTOMFIELDS=cluster:NAME adds it).",
    )
    cluster_contexts: str = knob(
        "",
        "--cluster-contexts",
        "STREAMPROC_CLUSTER_CONTEXTS",
        "Ingest: NAME=CONTEXT,... the kubeconfig context of each other cluster whose pods it "
        "resolves (others: owner fields and name shape).",
    )
    dry_run: bool = knob(
        False, "--dry-run", "STREAMPROC_DRY_RUN", "Do everything except write to the cluster."
    )
    kubeconfig: str | None = knob(
        None,
        "--kubeconfig",
        "KUBECONFIG",
        "Kubeconfig file [default: KUBECONFIG, ~/.kube/config, else in-cluster].",
    )
    #: partitions for the internal topics; also the Faust table partitions.
    partitions: int = knob(
        1, "--partitions", "STREAMPROC_PARTITIONS", "Partitions of the internal topics it creates."
    )
    #: consumer group session timeout; tansu's first join takes half of it. 8 s (Kafka's
    #: broker minimum is 6 s) keeps a dead replica's failover within 15 s on the test broker
    #: (bench/scale.py); raise it where processes pause for seconds (GC, CPU throttling).
    session_timeout_s: float = knob(
        8.0,
        "--session-timeout",
        "STREAMPROC_SESSION_TIMEOUT",
        "Consumer group session timeout (s): how soon a dead replica's partitions move.",
    )
    #: the longest the ingest stage waits for detections before publishing their tallies.
    flush_interval_s: float = knob(
        0.05,
        "--flush-interval",
        "STREAMPROC_FLUSH_INTERVAL",
        "Longest ingest collects a batch before publishing its tallies (s).",
    )
    #: how long counts for windows that already qualified may wait before being published.
    tally_hold_s: float = knob(
        1.0,
        "--tally-hold",
        "STREAMPROC_TALLY_HOLD",
        "How long ingest merges counts of windows that already qualified (s).",
    )
    #: the longest a fetch waits for records. Apache Kafka answers a waiting fetch as soon as
    #: records arrive, so there it only sets how often an idle consumer asks (raise it to save
    #: requests); brokers that do not wake a parked fetch (tansu) add up to this much per hop.
    fetch_max_wait_ms: int = knob(
        20,
        "--fetch-max-wait",
        "STREAMPROC_FETCH_MAX_WAIT_MS",
        "Longest a consumer's fetch waits for records (ms). On Apache Kafka it only sets how "
        "often an idle consumer asks; on brokers that do not wake a waiting fetch it adds up "
        "to this much latency per stage.",
        type="ms",
    )
    #: most records per ingest batch.
    batch_max_records: int = knob(
        20_000, "--batch-size", "STREAMPROC_BATCH_SIZE", "Most records ingest reads per batch."
    )
    #: keep a broker-side idempotent producer where the broker supports it (Apache Kafka does).
    enable_idempotence: bool = knob(
        False,
        "--enable-idempotence/--no-enable-idempotence",
        "STREAMPROC_ENABLE_IDEMPOTENCE",
        "Idempotent producer (Apache Kafka supports it; tansu does not).",
    )
    #: bounded TTL cache of pod -> workload resolutions.
    resolver_cache_size: int = knob(
        100_000,
        "--resolver-cache-size",
        "STREAMPROC_RESOLVER_CACHE_SIZE",
        "Pods whose workload ingest remembers.",
    )
    resolver_cache_ttl_s: float = knob(
        300.0,
        "--resolver-cache-ttl",
        "STREAMPROC_RESOLVER_CACHE_TTL",
        "How long ingest remembers a pod's workload (s).",
    )
    #: API lookups per second for pods not in that cache; beyond it, the pod name's shape.
    resolver_lookups_per_s: float = knob(
        10.0,
        "--pod-lookups",
        "STREAMPROC_POD_LOOKUPS",
        "API lookups/s for pods not yet cached (ingest); beyond, the pod name's shape.",
    )
    #: Kubernetes API request timeout.
    api_timeout_s: float = knob(
        10.0, "--api-timeout", "STREAMPROC_API_TIMEOUT", "Kubernetes API request timeout (s)."
    )
    #: concurrent API requests per process.
    api_concurrency: int = knob(
        16,
        "--api-concurrency",
        "STREAMPROC_API_CONCURRENCY",
        "Kubernetes API requests in flight per process.",
    )
    #: workloads the annotator works on at once (each is a few requests; those are capped apart)
    actions_in_flight: int = knob(
        16,
        "--actions-in-flight",
        "STREAMPROC_ACTIONS_IN_FLIGHT",
        "Workloads the annotator applies actions to at once (requests: --api-concurrency).",
    )
    #: sustained Kubernetes API requests per second per process, and the burst above it.
    api_qps: float = knob(
        20.0, "--api-qps", "STREAMPROC_API_QPS", "Sustained Kubernetes API requests/s per process."
    )
    api_burst: int = knob(
        40, "--api-burst", "STREAMPROC_API_BURST", "Requests allowed at once above --api-qps."
    )
    #: record Kubernetes Events on observed objects
    kube_events: bool = knob(
        True,
        "--events/--no-events",
        "STREAMPROC_EVENTS",
        "Record Kubernetes Events on observed objects.",
    )
    #: observed pods per node at most: Retina's agent keeps the IPs of observed pods in an eBPF
    #: map of ``filterMapMaxEntries`` per node (default 255) and fails past it.
    node_budget: int = knob(
        200,
        "--node-budget",
        "STREAMPROC_NODE_BUDGET",
        "Observed pods per node at most; keep it below Retina's filterMapMaxEntries "
        "(default 255). 0 turns the check off.",
    )
    #: lazy extension: a qualifying window extends an observation only once less than this
    #: share of its TTL is left (and never less than two windows' worth, so it cannot lapse
    #: while detections go on); 1 extends on every qualifying window.
    extend_below: float = knob(
        0.5,
        "--extend-below",
        "STREAMPROC_EXTEND_BELOW",
        "Extend an observation only once less than this share of its TTL is left "
        "(at least two windows' worth); 1 extends on every qualifying window.",
    )
    #: how far two clocks (a producer's, a replica's, the API server's) may disagree before
    #: streamproc stops believing a time: docs/reliability.md "Time and clocks" says why a minute
    clock_tolerance_s: float = knob(
        60.0,
        "--clock-tolerance",
        "STREAMPROC_CLOCK_TOLERANCE",
        "How far clocks may disagree (s): a record stamped further ahead of its arrival, or "
        "further behind it while fresh, is windowed at its arrival; an action whose window "
        "ended less than this ago is observed a full TTL; doctor fails a larger skew.",
    )
    #: how often the expirer re-lists managed pods to catch changes made elsewhere.
    expiry_resync_s: float = knob(
        60.0,
        "--expiry-resync",
        "STREAMPROC_EXPIRY_RESYNC",
        "How often the expirer re-lists the pods it manages (s).",
    )
    #: divides every window size and TTL (the lab's ``--speed``).
    speed: float = knob(
        1.0, "--speed", "STREAMPROC_SPEED", "Divide window sizes and TTLs (time-lapse)."
    )
    metrics_port: int = knob(
        9108, "--metrics-port", "STREAMPROC_METRICS_PORT", "Port for /metrics; 0 turns it off."
    )
    metrics_host: str = knob(
        "0.0.0.0",  # noqa: S104 - a metrics endpoint must be scrapeable
        "--metrics-host",
        "STREAMPROC_METRICS_HOST",
        "Address /metrics listens on.",
    )
    #: after SIGINT/SIGTERM, the longest a clean stop may take before the process just exits.
    shutdown_timeout_s: float = knob(
        10.0,
        "--shutdown-timeout",
        "STREAMPROC_SHUTDOWN_TIMEOUT",
        "After SIGINT/SIGTERM, the longest a clean stop may take before exiting anyway (s).",
    )
    #: ``streamproc simulate`` of files: processes that run the ingest code (parse, match,
    #: identify) over shares of the input while this one decides; 0 picks one per CPU (at most
    #: 8) for inputs from 8 MiB on, where starting them pays off
    simulate_workers: int = knob(
        0,
        "--workers",
        "STREAMPROC_SIMULATE_WORKERS",
        "Processes that parse and match the files (0: one per CPU for inputs of 8 MiB or more; "
        "1: this process alone).",
        stage=False,
        type="count",
    )
    client_id: str = "streamproc"

    def actions_topic_of(self, cluster: str) -> str:
        """The actions topic of one cluster: each cluster's annotators read only their own."""
        return f"{self.topics.actions}.{cluster}" if cluster else self.topics.actions

    @property
    def actions_topic(self) -> str:
        """The actions topic this deployment's annotators read."""
        return self.actions_topic_of(self.cluster)

    @property
    def annotate_group(self) -> str:
        """The annotate consumer group: one per cluster, so clusters never share partitions."""
        return f"{self.groups.annotate}.{self.cluster}" if self.cluster else self.groups.annotate

    def contexts(self) -> dict[str, str]:
        """``--cluster-contexts`` as cluster name -> kubeconfig context."""
        pairs = (item.partition("=") for item in self.cluster_contexts.split(",") if item.strip())
        return {name.strip(): context.strip() for name, _, context in pairs}

    @property
    def tolerance_s(self) -> float:
        """``--clock-tolerance`` time-lapsed by ``--speed`` like every window and TTL (>= 1 s)."""
        return max(1.0, self.clock_tolerance_s / self.speed)

    @property
    def rebalance_timeout_s(self) -> float:
        """How long a group waits for members to rejoin in a rebalance, for every stage alike.

        Tied to the session timeout: a replica that died is noticed within that, and the
        survivors' rejoin should not wait a minute longer (Faust's own default is 60 s).
        """
        return max(self.session_timeout_s, 10.0)


#: the defaults, for code that needs one of them without a Settings at hand.
DEFAULTS = Settings()
