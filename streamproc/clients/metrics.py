"""Every Prometheus metric streamproc exports, defined once; the only importer of prometheus_client.

Label values are bounded sets (stage, topology, reason codes, verbs, HTTP codes): never a pod
name, a workload or a uuid, so cardinality does not grow with the cluster or the attack. One
exception, on purpose: ``streamproc_observed_pod_since_seconds`` names the pods under observation
now (at most ``--node-budget`` per node and ``maxObservations`` per topology, removed when each
ends), because the evidence dashboard and ``streamproc evidence`` join Retina's pod series on it.
"""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from streamproc import __version__

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

build_info = Info("streamproc_build", "streamproc version")
build_info.info({"version": __version__})

detections_consumed = Counter(
    "streamproc_detections_consumed_total",
    "Falco detections read from the input topic and parsed",
    ["priority", "source"],
)
detections_skipped = Counter(
    "streamproc_detections_skipped_total",
    "Detections parsed but not counted in any window",
    ["reason"],
)
dead_letters = Counter(
    "streamproc_dead_letters_total",
    "Records sent to the dead-letter topic",
    ["stage", "reason"],
)
cluster_field_ignored = Counter(
    "streamproc_cluster_field_ignored_total",
    "Detections whose cluster field (Falcosidekick customfields) named a cluster while this "
    "deployment is one cluster: they are its own, routed as if the field were absent",
)
record_times_retimed = Counter(
    "streamproc_record_times_retimed_total",
    "Records windowed at the stage's arrival clock instead of their own Kafka time, by why: "
    "absent (none or negative), ahead (further ahead than --clock-tolerance), behind (fresh "
    "yet further behind: a producer's clock)",
    ["stage", "reason"],
)
detections_matched = Counter(
    "streamproc_detections_matched_total",
    "Detections that matched a topology",
    ["topology"],
)
workload_resolutions = Counter(
    "streamproc_workload_resolutions_total",
    "Pod-to-workload resolutions by method (cache hits not counted)",
    ["method"],
)
resolver_unknown_pods = Counter(
    "streamproc_resolver_unknown_pods_total",
    "Detections of pods the synced cluster cache does not know, resolved by name shape without "
    "an API call",
)
cached_pods = Gauge(
    "streamproc_cluster_cache_pods",
    "Pods in this process's cluster cache (list+watch)",
)
resolver_over_budget = Counter(
    "streamproc_resolver_lookups_over_budget_total",
    "Pods resolved by name shape because the pod-lookup budget was spent (a flood of new pods)",
)
batches_skipped = Counter(
    "streamproc_batches_skipped_total",
    "Kafka record batches no client could decode (corrupt, unknown codec), skipped and "
    "dead-lettered",
    ["stage", "reason"],
)
pods_refused = Counter(
    "streamproc_pods_refused_total",
    "Pods not put under observation, by topology and reason (node-budget: the node already "
    "has --node-budget observed pods)",
    ["topology", "reason"],
)
marks_refused = Counter(
    "streamproc_marks_refused_total",
    "Pods (and Namespace objects) whose streamproc.io marks were refused as not streamproc's "
    "(malformed, beyond-policy, foreign; with --mark-key-file also unsealed, bad-seal), "
    "counted once per object and reason",
    ["reason"],
)
tallies_published = Counter(
    "streamproc_tallies_published_total",
    "Pre-aggregated tallies the ingest stage published",
)
records_consumed = Counter(
    "streamproc_records_consumed_total",
    "Kafka records consumed, by stage",
    ["stage"],
)
detections_deduplicated = Counter(
    "streamproc_detections_deduplicated_total",
    "Detections in a window that had already produced its action",
    ["topology"],
)
observations_opened = Counter(
    "streamproc_observations_opened_total",
    "Workload observations opened (not extended), by topology and escalation level",
    ["topology", "level"],
)
windows_opened = Counter(
    "streamproc_windows_opened_total",
    "Workload windows that received their first detection",
    ["topology"],
)
actions_emitted = Counter(
    "streamproc_actions_emitted_total",
    "Actions emitted by the windows stage (one per workload per qualifying window)",
    ["topology"],
)
escalation_histories = Gauge(
    "streamproc_escalation_histories",
    "Workloads in the windows stage's escalation history (this replica's partitions)",
    ["topology"],
)
actions_handled = Counter(
    "streamproc_actions_handled_total",
    "Actions the annotator finished, by outcome",
    ["result"],
)
actions_refused = Counter(
    "streamproc_actions_refused_total",
    "Actions the annotator refused before writing anything (its topology's rules), by reason",
    ["reason"],
)
actions_parked = Gauge(
    "streamproc_actions_parked",
    "Actions waiting for a retry of their own after a transient failure (their workload's)",
)
patches = Counter(
    "streamproc_patches_total",
    "Pod metadata patches, by kind and result",
    ["op", "result"],
)
metric_filter_writes = Counter(
    "streamproc_metric_filters_writes_total",
    "Reconciliations of ACNS's ContainerNetworkMetric (acns-metric-filters backend), by result",
    ["result"],
)
metric_filter_pods = Gauge(
    "streamproc_metric_filters_pods",
    "Pods named in streamproc's ContainerNetworkMetric include filters, as last written or read",
)
api_request_duration = Histogram(
    "streamproc_api_request_duration_seconds",
    "Kubernetes API request latency",
    ["verb", "code"],
    buckets=_LATENCY_BUCKETS,
)
rate_limit_waits = Counter(
    "streamproc_api_rate_limit_waits_total",
    "Kubernetes API requests that waited for the client-side rate limit",
)
clock_skew = Gauge(
    "streamproc_clock_skew_seconds",
    "This process's clock minus the Kubernetes API server's, from its Date headers (positive: "
    "ahead); the stages keep the API server's time",
    ["server"],
)
api_retries = Counter(
    "streamproc_api_retries_total",
    "Kubernetes API requests retried",
    ["reason"],
)
detection_to_annotation = Histogram(
    "streamproc_detection_to_annotation_seconds",
    "From the detection's append to Kafka to its first annotation patch acknowledged",
    buckets=_LATENCY_BUCKETS,
)
observations_active = Gauge(
    "streamproc_observations_active",
    "Pods under observation now, by topology",
    ["topology"],
)
observed_pod_since = Gauge(
    "streamproc_observed_pod_since_seconds",
    "Start of each pod's observation (epoch s), present exactly while this replica's expirer "
    "holds it: join Retina's pod series (namespace, podname) on it",
    ["namespace", "pod", "workload_kind", "workload_name", "topology"],
)
evidence_total = Counter(
    "streamproc_evidence_total",
    "Observations whose network evidence was read from Prometheus at their end (found) or not "
    "(why: unreachable, timeout, http-error, bad-answer, no-series, no-range, overloaded, "
    "shutdown)",
    ["result"],
)
observations_expired = Counter(
    "streamproc_observations_expired_total",
    "Pod observations ended at expiry",
    ["topology"],
)
consumer_lag = Gauge(
    "streamproc_consumer_lag_records",
    "Records between the consumer position and the partition end, by stage",
    ["stage"],
)
assigned_partitions = Gauge(
    "streamproc_assigned_partitions",
    "Partitions of its input topics this replica holds now (0: idle, or in a rebalance)",
    ["stage"],
)
kafka_up = Gauge(
    "streamproc_kafka_up",
    "1 while this process reaches the Kafka brokers, 0 during an outage",
)
kafka_outages = Counter(
    "streamproc_kafka_outages_total",
    "Times this process lost the Kafka brokers",
)
kafka_outage_seconds = Histogram(
    "streamproc_kafka_outage_duration_seconds",
    "How long each Kafka outage lasted, measured when it ended",
    buckets=(1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0),
)
stage_errors = Counter(
    "streamproc_stage_errors_total",
    "Errors a stage survived (broker or API unavailable, unexpected exceptions)",
    ["stage", "error"],
)


def serve(port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other hosts
    """Serve ``/metrics`` in a background thread; port 0 turns it off."""
    if port:
        start_http_server(port, addr=host)


def total(name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels`` (any other labels)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def by_label(name: str, label: str, **labels: str) -> dict[str, float]:
    """Samples of ``name`` summed per value of ``label`` (e.g. dead letters by reason)."""
    found: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                key = sample.labels.get(label, "")
                found[key] = found.get(key, 0.0) + sample.value
    return found


def quantile(histogram: str, q: float) -> float | None:
    """A histogram's ``q``-quantile, interpolated as PromQL's ``histogram_quantile`` does.

    None without observations.
    """
    buckets = sorted(
        (float(le), count)
        for le, count in by_label(f"{histogram}_bucket", "le").items()
        if le != "+Inf"
    )
    observed = total(f"{histogram}_count")
    if not observed:
        return None
    rank = q * observed
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            span = count - below
            return lower + (upper - lower) * ((rank - below) / span if span else 1.0)
        lower, below = upper, count
    return lower
