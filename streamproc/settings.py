"""Every knob in one place, filled from flags and environment by the CLI and passed explicitly.

Nothing reads the environment behind the caller's back: a stage gets a Settings and uses it.
Each knob names the commands that take it (``commands=``): a stage offers only what it uses,
and the lab's time-lapse is offered by ``lab`` alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Topics:
    """Kafka topic names; the defaults are what Falcosidekick and the docs use."""

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


#: The pipeline's stage commands, one each; ``run`` runs all three and takes what any takes.
INGEST = frozenset({"ingest"})
WINDOWS = frozenset({"windows"})
ANNOTATE = frozenset({"annotate"})
STAGES = INGEST | WINDOWS | ANNOTATE
#: The stages that talk to the Kubernetes API (ingest resolves pods, annotate marks them).
KUBE_STAGES = INGEST | ANNOTATE
#: The commands that are not stages, by name.
DOCTOR = frozenset({"doctor"})
STATUS = frozenset({"status"})
RELEASE = frozenset({"release"})
SIMULATE = frozenset({"simulate"})
SEND = frozenset({"send"})
LAB = frozenset({"lab"})
EVIDENCE = frozenset({"evidence"})

#: the ways a pod can be put under observation (``Settings.observation_backend``)
OBSERVATION_BACKENDS = ("retina-annotation", "acns-metric-filters")

#: the lab's time-lapse by default: 60 s windows become 5 s.
LAB_SPEED = 12.0


def knob(
    default: Any,
    flag: str,
    env: str,
    help_text: str,
    *,
    commands: Iterable[str] | None = None,
    stage: bool = True,
    **click_args: Any,
) -> Any:
    """A setting an operator may tune: its default, flag, environment variable, help, commands.

    The CLI builds each command's options from these (``streamproc.cli.options``), so a
    default, a variable name, a help text and where the option is offered are written once,
    here. ``commands``: the commands that take it (``run`` takes what any stage takes); a
    stage is named only if it uses the setting. Without ``commands``, every stage (and
    ``run``) takes it, or, with ``stage=False``, only commands that ask for it by name.
    """
    if commands is None:
        commands = STAGES if stage else frozenset()
    meta = {
        "flag": flag,
        "env": env,
        "help": help_text,
        "commands": frozenset(commands),
        "click": click_args,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration of all stages."""

    bootstrap_servers: str = knob(
        "localhost:9092",
        "--bootstrap-servers",
        "STREAMPROC_BOOTSTRAP_SERVERS",
        "Kafka bootstrap servers (host:port, comma-separated).",
        commands=STAGES | SEND | DOCTOR | RELEASE | SIMULATE,
    )
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: a topology file or folder; None means ./topologies if present, else the shipped one.
    topology_path: Path | None = knob(
        None,
        "--topology",
        "STREAMPROC_TOPOLOGY",
        "Topology file or folder [default: ./topologies if present, else the shipped one].",
        type=Path,
        commands=STAGES | DOCTOR | RELEASE | SIMULATE | LAB,
    )
    topics: Topics = field(default_factory=Topics)
    groups: Groups = field(default_factory=Groups)
    #: this deployment's cluster in a fleet that shares one Kafka ("" for a single cluster)
    cluster: str = knob(
        "",
        "--cluster",
        "STREAMPROC_CLUSTER",
        "This cluster's name in a fleet sharing one Kafka (it is a member, see --clusters): "
        "ingest gives it to detections without a cluster field, annotate acts only on its "
        "actions [default: none, one cluster].",
        commands=STAGES | DOCTOR | RELEASE | SIMULATE,
    )
    #: the fleet: clusters whose detections and actions this deployment routes (with --cluster
    #: and the names of --cluster-contexts); none of the three set means one cluster
    clusters: str = knob(
        "",
        "--clusters",
        "STREAMPROC_CLUSTERS",
        "The fleet sharing this Kafka: NAME,... (--cluster and --cluster-contexts' names are "
        "members too). A detection naming another cluster is dead-lettered (unknown-cluster). "
        "[default: none; with no --cluster either, one cluster: detections' cluster field is "
        "not used for routing].",
        commands=STAGES | DOCTOR | SIMULATE,
    )
    cluster_field: str = knob(
        "cluster",
        "--cluster-field",
        "STREAMPROC_CLUSTER_FIELD",
        "The output_fields key that names a detection's cluster in a fleet (Falcosidekick's "
        "CUSTOMFIELDS=cluster:NAME adds it); one cluster does not route by it.",
        commands=INGEST,
    )
    cluster_contexts: str = knob(
        "",
        "--cluster-contexts",
        "STREAMPROC_CLUSTER_CONTEXTS",
        "Ingest: NAME=CONTEXT,... the kubeconfig context of each other cluster whose pods it "
        "resolves (others: owner fields and name shape).",
        commands=INGEST | WINDOWS | DOCTOR,
    )
    dry_run: bool = knob(
        False,
        "--dry-run",
        "STREAMPROC_DRY_RUN",
        "Do everything except write to the cluster.",
        commands=ANNOTATE,
    )
    kubeconfig: str | None = knob(
        None,
        "--kubeconfig",
        "KUBECONFIG",
        "Kubeconfig file [default: KUBECONFIG, ~/.kube/config, else in-cluster].",
        commands=KUBE_STAGES | DOCTOR | STATUS | RELEASE | SIMULATE | EVIDENCE,
    )
    #: partitions for the internal topics; also the Faust table partitions.
    partitions: int = knob(
        1,
        "--partitions",
        "STREAMPROC_PARTITIONS",
        "Partitions of the internal topics it creates.",
        commands=STAGES | DOCTOR,
    )
    #: consumer group session timeout; tansu's first join takes half of it. 8 s (Kafka's
    #: broker minimum is 6 s) keeps a dead replica's failover within 15 s on the test broker
    #: (bench/scale.py); raise it where processes pause for seconds (GC, CPU throttling).
    session_timeout_s: float = knob(
        8.0,
        "--session-timeout",
        "STREAMPROC_SESSION_TIMEOUT",
        "Consumer group session timeout (s): how soon a dead replica's partitions move.",
        commands=STAGES,
    )
    #: how often a consumer refreshes the topics' metadata: how soon the group leader sees a
    #: changed partition count (partitions added to scale, a re-created topic) and has the
    #: group rebalance so every new partition gets a reader. aiokafka's default is 5 minutes.
    metadata_max_age_s: float = knob(
        30.0,
        "--metadata-max-age",
        "STREAMPROC_METADATA_MAX_AGE",
        "How often consumers refresh topic metadata (s): how soon added partitions are read.",
        commands=INGEST | ANNOTATE,
    )
    #: the longest the ingest stage waits for detections before publishing their tallies.
    flush_interval_s: float = knob(
        0.05,
        "--flush-interval",
        "STREAMPROC_FLUSH_INTERVAL",
        "Longest ingest collects a batch before publishing its tallies (s).",
        commands=INGEST,
    )
    #: how long counts for windows that already qualified may wait before being published.
    tally_hold_s: float = knob(
        1.0,
        "--tally-hold",
        "STREAMPROC_TALLY_HOLD",
        "How long ingest merges counts of windows that already qualified (s).",
        commands=INGEST,
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
        commands=STAGES,
    )
    #: most records per ingest batch.
    batch_max_records: int = knob(
        20_000,
        "--batch-size",
        "STREAMPROC_BATCH_SIZE",
        "Most records ingest reads per batch.",
        commands=INGEST,
    )
    #: keep a broker-side idempotent producer where the broker supports it (Apache Kafka does).
    enable_idempotence: bool = knob(
        False,
        "--enable-idempotence/--no-enable-idempotence",
        "STREAMPROC_ENABLE_IDEMPOTENCE",
        "Idempotent producer (Apache Kafka supports it; tansu does not).",
        commands=STAGES,
    )
    #: bounded TTL cache of pod -> workload resolutions.
    resolver_cache_size: int = knob(
        100_000,
        "--resolver-cache-size",
        "STREAMPROC_RESOLVER_CACHE_SIZE",
        "Pods whose workload ingest remembers.",
        commands=KUBE_STAGES,
    )
    resolver_cache_ttl_s: float = knob(
        300.0,
        "--resolver-cache-ttl",
        "STREAMPROC_RESOLVER_CACHE_TTL",
        "How long ingest remembers a pod's workload (s).",
        commands=KUBE_STAGES,
    )
    #: API lookups per second for pods not in that cache; beyond it, the pod name's shape.
    resolver_lookups_per_s: float = knob(
        10.0,
        "--pod-lookups",
        "STREAMPROC_POD_LOOKUPS",
        "API lookups/s for pods not yet cached (ingest); beyond, the pod name's shape.",
        commands=INGEST,
    )
    #: Kubernetes API request timeout.
    api_timeout_s: float = knob(
        10.0,
        "--api-timeout",
        "STREAMPROC_API_TIMEOUT",
        "Kubernetes API request timeout (s).",
        commands=KUBE_STAGES,
    )
    #: concurrent API requests per process.
    api_concurrency: int = knob(
        16,
        "--api-concurrency",
        "STREAMPROC_API_CONCURRENCY",
        "Kubernetes API requests in flight per process.",
        commands=KUBE_STAGES,
    )
    #: workloads the annotator works on at once (each is a few requests; those are capped apart)
    actions_in_flight: int = knob(
        16,
        "--actions-in-flight",
        "STREAMPROC_ACTIONS_IN_FLIGHT",
        "Workloads the annotator applies actions to at once (requests: --api-concurrency).",
        commands=ANNOTATE,
    )
    #: how long an action whose writes keep failing for now (5xx, timeouts) is retried on its
    #: own while other actions land, before it is dead-lettered: one object that always fails
    #: (an admission webhook down with failurePolicy Fail) never holds back the others
    retry_for_s: float = knob(
        120.0,
        "--retry-for",
        "STREAMPROC_RETRY_FOR",
        "How long an action whose writes keep failing (5xx, timeouts) while other actions land "
        "is retried on its own before it is dead-lettered (s).",
        commands=ANNOTATE,
    )
    #: sustained Kubernetes API requests per second per process, and the burst above it.
    api_qps: float = knob(
        20.0,
        "--api-qps",
        "STREAMPROC_API_QPS",
        "Sustained Kubernetes API requests/s per process.",
        commands=KUBE_STAGES,
    )
    api_burst: int = knob(
        40,
        "--api-burst",
        "STREAMPROC_API_BURST",
        "Requests allowed at once above --api-qps.",
        commands=KUBE_STAGES,
    )
    #: record Kubernetes Events on observed objects
    kube_events: bool = knob(
        True,
        "--events/--no-events",
        "STREAMPROC_EVENTS",
        "Record Kubernetes Events on observed objects.",
        commands=ANNOTATE,
    )
    #: Events' own budget beside --api-qps (burst: two seconds' worth), so the Events of an
    #: expiry burst never delay an observation's requests; past 1,000 waiting, Events are dropped
    event_qps: float = knob(
        5.0,
        "--event-qps",
        "STREAMPROC_EVENT_QPS",
        "Kubernetes Events/s per process, a budget of their own beside --api-qps (Events "
        "beyond 1,000 waiting are dropped and counted).",
        commands=ANNOTATE,
    )
    #: how a pod is put under observation (docs/aks.md says which works where): Retina's
    #: annotation needs its Standard control plane; AKS's ACNS runs Retina with the Hubble control
    #: plane, which ignores annotations, and selects pods on Cilium through ContainerNetworkMetric
    observation_backend: str = knob(
        "retina-annotation",
        "--observation-backend",
        "STREAMPROC_OBSERVATION_BACKEND",
        "How pods are put under observation: retina-annotation (Retina's Standard control "
        "plane) or acns-metric-filters (AKS ACNS on Cilium: ContainerNetworkMetric include "
        "filters). A topology's spec.action.backend overrides it.",
        commands=ANNOTATE | DOCTOR | RELEASE,
        type=OBSERVATION_BACKENDS,
    )
    #: HMAC keys, one a line, the first signs: marks are sealed and unsealed ones refused, so a
    #: tenant cannot copy streamproc's marks onto its own pods (docs/reliability.md)
    mark_key_file: Path | None = knob(
        None,
        "--mark-key-file",
        "STREAMPROC_MARK_KEY_FILE",
        "File of keys (one a line, at least 32 bytes each; the first signs) that seal "
        "streamproc's marks on pods; marks without a valid seal are refused "
        "[default: none, marks unsealed].",
        type=Path,
        commands=ANNOTATE | DOCTOR | STATUS | RELEASE | EVIDENCE,
    )
    #: the Prometheus that scrapes Retina (or ACNS's Hubble metrics): at the end of each
    #: observation its network evidence is read there (docs/evidence.md); "" turns that off
    prometheus_url: str = knob(
        "",
        "--prometheus-url",
        "STREAMPROC_PROMETHEUS_URL",
        "Prometheus that scrapes Retina's pod metrics (or ACNS Hubble's): each observation's "
        "network evidence is read there at its end, into its audit record and Event "
        "[default: none, no evidence].",
        commands=ANNOTATE | DOCTOR | RELEASE | EVIDENCE,
    )
    #: a bearer token for it, re-read when the file changes (managed Prometheus rotates it)
    prometheus_token_file: Path | None = knob(
        None,
        "--prometheus-token-file",
        "STREAMPROC_PROMETHEUS_TOKEN_FILE",
        "File holding a bearer token for --prometheus-url (re-read when it changes).",
        type=Path,
        commands=ANNOTATE | DOCTOR | RELEASE | EVIDENCE,
    )
    prometheus_ca_file: Path | None = knob(
        None,
        "--prometheus-ca-file",
        "STREAMPROC_PROMETHEUS_CA_FILE",
        "CA bundle that signed --prometheus-url's certificate [default: the system's].",
        type=Path,
        commands=ANNOTATE | DOCTOR | RELEASE | EVIDENCE,
    )
    #: the longest one query may take, and (twice it) one observation's evidence in all: an
    #: expiry never waits for it (the evidence is read after the observation ended)
    evidence_timeout_s: float = knob(
        5.0,
        "--evidence-timeout",
        "STREAMPROC_EVIDENCE_TIMEOUT",
        "Longest one Prometheus query for evidence may take (s); one observation's evidence "
        "takes at most twice this.",
        commands=ANNOTATE | DOCTOR | RELEASE | EVIDENCE,
    )
    #: how long after an observation's end its evidence is read (still evaluated at the end):
    #: the last scrape before the end lands up to one scrape interval later (Retina's and
    #: Hubble's are typically scraped every 30 s, so 2x covers one missed scrape), and a managed
    #: Prometheus (Azure Monitor) ingests with a delay of its own: raise it there
    evidence_delay_s: float = knob(
        60.0,
        "--evidence-delay",
        "STREAMPROC_EVIDENCE_DELAY",
        "Seconds to wait after an observation ends before reading its evidence (the last "
        "scrapes must land first; the range still ends at the end). The Event and audit record "
        "wait this plus twice --evidence-timeout at most.",
        commands=ANNOTATE,
    )
    #: observed pods per node at most: Retina's agent keeps the IPs of observed pods in an eBPF
    #: map of ``filterMapMaxEntries`` per node (default 255) and fails past it.
    node_budget: int = knob(
        200,
        "--node-budget",
        "STREAMPROC_NODE_BUDGET",
        "Observed pods per node at most; keep it below Retina's filterMapMaxEntries "
        "(default 255). 0 turns the check off.",
        commands=ANNOTATE | DOCTOR | STATUS | SIMULATE,
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
        commands=ANNOTATE | SIMULATE,
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
        commands=STAGES | DOCTOR,
    )
    #: how often the expirer re-lists managed pods to catch changes made elsewhere.
    expiry_resync_s: float = knob(
        60.0,
        "--expiry-resync",
        "STREAMPROC_EXPIRY_RESYNC",
        "How often the expirer re-lists the pods it manages (s).",
        commands=ANNOTATE,
    )
    #: divides every window size and TTL: the lab's time-lapse (``LAB_SPEED`` there), 1 in the
    #: stages, which never offer it
    speed: float = knob(
        1.0,
        "--speed",
        "STREAMPROC_SPEED",
        "Divide window sizes and TTLs (time-lapse: 60s windows become 5s at 12).",
        commands=LAB,
    )
    metrics_port: int = knob(
        9108,
        "--metrics-port",
        "STREAMPROC_METRICS_PORT",
        "Port for /metrics; 0 turns it off.",
        commands=STAGES,
    )
    metrics_host: str = knob(
        "0.0.0.0",  # noqa: S104 - a metrics endpoint must be scrapeable
        "--metrics-host",
        "STREAMPROC_METRICS_HOST",
        "Address /metrics listens on.",
        commands=STAGES,
    )
    #: after SIGINT/SIGTERM, the longest a clean stop may take before the process just exits.
    shutdown_timeout_s: float = knob(
        10.0,
        "--shutdown-timeout",
        "STREAMPROC_SHUTDOWN_TIMEOUT",
        "After SIGINT/SIGTERM, the longest a clean stop may take before exiting anyway (s).",
        commands=STAGES,
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
        type="count",
        commands=SIMULATE,
    )
    client_id: str = "streamproc"

    def actions_topic_of(self, cluster: str) -> str:
        """The actions topic of one cluster: each cluster's annotators read only their own."""
        return f"{self.topics.actions}.{cluster}" if cluster else self.topics.actions

    @property
    def actions_topic(self) -> str:
        """The actions topic this deployment's annotators read."""
        return self.actions_topic_of(self.cluster)

    def annotate_group_of(self, cluster: str) -> str:
        """The annotate consumer group of one cluster, so clusters never share partitions."""
        return f"{self.groups.annotate}.{cluster}" if cluster else self.groups.annotate

    @property
    def annotate_group(self) -> str:
        """The annotate consumer group of this deployment's annotators."""
        return self.annotate_group_of(self.cluster)

    @property
    def fleet(self) -> frozenset[str]:
        """The clusters named by ``--cluster``, ``--clusters`` and ``--cluster-contexts``.

        Empty: this deployment is one cluster (``fleets.Fleet`` says what follows from that).
        """
        named = {self.cluster, *self.clusters.split(","), *self.contexts()}
        return frozenset(name.strip() for name in named) - {""}

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
