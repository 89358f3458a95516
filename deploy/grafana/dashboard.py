"""The streamproc Grafana dashboard, as code (grafana-foundation-sdk).

``python deploy/grafana/dashboard.py`` writes ``deploy/grafana/streamproc.json``, which the lab's
Grafana provisions. A test regenerates it and fails if the committed JSON differs, and checks
every metric the queries use against what streamproc exports.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT = Path(__file__).with_name("streamproc.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
#: The evidence dashboard (deploy/grafana/evidence.py), opened on the clicked series' workload,
#: the same data source and time range.
EVIDENCE_URL = (
    "/d/streamproc-evidence/network-evidence-of-observed-workloads"
    "?var-namespace=${__field.labels.namespace}&var-workload=${__field.labels.workload_name}"
    "&var-kind=${__field.labels.workload_kind}"
    "&${datasource:queryparam}&${__url_time_range}"
)
#: Panels whose series name a workload link to its network evidence.
EVIDENCE_LINKED = ("streamproc_observed_pod_since_seconds",)

#: (title, unit, [(PromQL, legend)]) in display order; two panels per row.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "Throughput by stage",
        "reqps",
        [
            ("sum by (stage) (rate(streamproc_records_consumed_total[1m]))", "{{stage}}"),
        ],
    ),
    (
        "Detections by priority",
        "reqps",
        [
            ("sum by (priority) (rate(streamproc_detections_consumed_total[1m]))", "{{priority}}"),
        ],
    ),
    (
        "Dead letters",
        "reqps",
        [
            (
                "sum by (stage, reason) (rate(streamproc_dead_letters_total[5m]))",
                "{{stage}} {{reason}}",
            ),
        ],
    ),
    (
        "Skipped detections",
        "reqps",
        [
            ("sum by (reason) (rate(streamproc_detections_skipped_total[5m]))", "{{reason}}"),
        ],
    ),
    (
        "Dedup ratio (share of matched detections absorbed by a window already acted on)",
        "percentunit",
        [
            (
                (
                    "sum(rate(streamproc_detections_deduplicated_total[5m])) "
                    "/ clamp_min(sum(rate(streamproc_detections_matched_total[5m])), 1e-9)"
                ),
                "dedup",
            ),
        ],
    ),
    (
        "Windows opened and actions emitted",
        "reqps",
        [
            (
                "sum by (topology) (rate(streamproc_windows_opened_total[5m]))",
                "windows {{topology}}",
            ),
            (
                "sum by (topology) (rate(streamproc_actions_emitted_total[5m]))",
                "actions {{topology}}",
            ),
        ],
    ),
    (
        "Pods under observation",
        "short",
        [
            ("sum by (topology) (streamproc_observations_active)", "{{topology}}"),
        ],
    ),
    (
        "Observed workloads (click a series for its network evidence)",
        "short",
        [
            (
                (
                    "count by (namespace, workload_kind, workload_name, topology) "
                    "(streamproc_observed_pod_since_seconds)"
                ),
                "{{namespace}}/{{workload_name}} ({{workload_kind}}, {{topology}})",
            ),
        ],
    ),
    (
        "Observations opened, by escalation level",
        "short",
        [
            (
                "sum by (topology, level) (increase(streamproc_observations_opened_total[1h]))",
                "{{topology}} level {{level}}",
            ),
        ],
    ),
    (
        "Workloads in the escalation history",
        "short",
        [
            ("sum by (topology) (streamproc_escalation_histories)", "{{topology}}"),
        ],
    ),
    (
        "Observations expired",
        "reqps",
        [
            ("sum by (topology) (rate(streamproc_observations_expired_total[5m]))", "{{topology}}"),
        ],
    ),
    (
        "Detection to annotation latency",
        "s",
        [
            (
                (
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(streamproc_detection_to_annotation_seconds_bucket[5m])))"
                ),
                "p50",
            ),
            (
                (
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(streamproc_detection_to_annotation_seconds_bucket[5m])))"
                ),
                "p99",
            ),
        ],
    ),
    (
        "Patches by result",
        "reqps",
        [
            ("sum by (op, result) (rate(streamproc_patches_total[5m]))", "{{op}} {{result}}"),
        ],
    ),
    (
        "API errors and retries",
        "reqps",
        [
            (
                (
                    "sum by (verb, code) "
                    '(rate(streamproc_api_request_duration_seconds_count{code!~"2.."}[5m]))'
                ),
                "{{verb}} {{code}}",
            ),
            ("sum by (reason) (rate(streamproc_api_retries_total[5m]))", "retry {{reason}}"),
            ("sum(rate(streamproc_api_rate_limit_waits_total[5m]))", "rate-limit waits"),
        ],
    ),
    (
        "API latency p99 by verb",
        "s",
        [
            (
                (
                    "histogram_quantile(0.99, sum by (le, verb) "
                    "(rate(streamproc_api_request_duration_seconds_bucket[5m])))"
                ),
                "{{verb}}",
            ),
        ],
    ),
    (
        "Consumer lag by stage",
        "short",
        [
            ("max by (stage) (streamproc_consumer_lag_records)", "{{stage}}"),
        ],
    ),
    (
        "Kafka reachable (1) / outages",
        "short",
        [
            ("min by (instance) (streamproc_kafka_up)", "{{instance}} up"),
            ("sum(increase(streamproc_kafka_outages_total[1h]))", "outages in the last hour"),
        ],
    ),
    (
        "Stage errors survived",
        "reqps",
        [
            (
                "sum by (stage, error) (rate(streamproc_stage_errors_total[5m]))",
                "{{stage}} {{error}}",
            ),
        ],
    ),
]


def build() -> dict[str, object]:
    """The dashboard as Grafana's JSON model."""
    board = (
        dashboard.Dashboard("streamproc")
        .uid("streamproc")
        .tags(["streamproc", "falco", "retina"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
    board = board.with_panel(
        stat.Panel()
        .title("Version")
        .datasource(DATASOURCE)
        .span(24)
        .height(3)
        .with_target(
            prometheus.Dataquery()
            .expr("count by (version) (streamproc_build_info)")
            .legend_format("{{version}}")
            .ref_id("A")
        )
    )
    for title, unit, queries in PANELS:
        panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).span(12).height(8)
        for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
            panel = panel.with_target(
                prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
            )
        if any(name in expr for name in EVIDENCE_LINKED for expr, _ in queries):
            panel = panel.data_links(
                [
                    dashboard.DashboardLink(
                        "Network evidence of ${__field.labels.workload_name}"
                    ).url(EVIDENCE_URL)
                ]
            )
        board = board.with_panel(panel)
    encoded: dict[str, object] = json.loads(
        JSONEncoder(sort_keys=True, indent=2).encode(board.build())
    )
    return encoded


def render() -> str:
    """The JSON text as committed."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render(), encoding="utf-8")
