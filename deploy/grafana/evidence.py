"""The "Network evidence of observed workloads" Grafana dashboard, as code (grafana-foundation-sdk).

``python deploy/grafana/evidence.py`` writes ``deploy/grafana/evidence.json``, which the lab's
Grafana provisions next to ``streamproc.json``. A test regenerates it and fails if the committed
JSON differs, and evaluates every query (panels, variables, annotations) in a real Prometheus
against Retina-, Hubble- and streamproc-shaped series.

Why the queries look the way they do:

- streamproc exports ``streamproc_observed_pod_since_seconds{namespace,pod,workload_kind,
  workload_name,topology}`` exactly while it observes a pod (value: the observation's start).
  Every panel keeps only the network series of pods that gauge names *at that instant*, so
  traffic from before or after an observation does not count.
- Retina (microsoft/retina v1.2.6) in annotation mode enriches in *local* context: each series
  carries the pod's own labels without prefix, ``ip, namespace, podname, workload_kind,
  workload_name`` (pkg/module/metrics/types.go ``DefaultCtxOptions`` and ``getLabels``), under the
  ``networkobservability_`` namespace (pkg/exporter/prometheusexporter.go). ``workload_*`` is
  the pod's *owner reference* (pkg/enricher/enricher.go ``getWorkloads``): a Deployment's pod
  shows up as ``ReplicaSet/<deployment>-<hash>``, while streamproc names the Deployment. So the
  join is on ``namespace`` + pod (``pod`` renamed to ``podname``), never on the workload.
- Retina's forward/drop/flag/retransmission/DNS series are gauges that only grow until the agent
  restarts (``exporter.CreatePrometheusGaugeVecForMetric``), so ``rate`` reads them like counters.
  TCP flags are ``flag="RST"`` etc. (pkg/utils/attr_utils.go); local-context TCP-flag and DNS
  series carry no ``direction``.
- ACNS (Cilium data plane) exports Hubble's families labelled ``source`` / ``destination`` =
  ``namespace/pod`` (MicrosoftDocs/azure-aks-docs articles/aks/
  container-network-observability-metrics.md, commit fb060abe); Hubble's flag value for resets is
  ``RST`` (cilium/cilium pkg/hubble/metrics/tcp/handler.go). The join builds ``namespace/pod`` from
  the gauge with ``label_join``.
- Annotations use Grafana's Prometheus annotation fields ``titleFormat``, ``tagKeys``, ``step`` and
  ``useValueForTime`` (grafana/grafana packages/grafana-prometheus/src/annotations.ts): a series
  present over consecutive steps becomes one region, so the gauge's presence draws each
  observation from start to end; with ``useValueForTime`` the gauge's value (ms) places its start.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableHide, VariableRefresh

OUTPUT = Path(__file__).with_name("evidence.json")
UID = "streamproc-evidence"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

#: The gauge the evidence collection exports (AGREE.md item 5).
OBSERVED = "streamproc_observed_pod_since_seconds"
#: The chosen workload's pods, while streamproc observes them.
OBSERVED_PODS = (
    f'{OBSERVED}{{namespace="$namespace", workload_kind=~"$kind", workload_name="$workload"}}'
)
#: Retina's local-context series of observed pods only (joined on namespace + pod).
RETINA_JOIN = (
    f'and on (namespace, podname) label_replace({OBSERVED_PODS}, "podname", "$1", "pod", "(.*)")'
)
#: Hubble's series whose source (egress) / destination (ingress) is an observed pod.
HUBBLE_SOURCE = f'and on (source) label_join({OBSERVED_PODS}, "source", "/", "namespace", "pod")'
HUBBLE_DESTINATION = (
    f'and on (destination) label_join({OBSERVED_PODS}, "destination", "/", "namespace", "pod")'
)
RATE = "[$__rate_interval]"


def retina(selector: str, by: str) -> str:
    """Per-second rate of one Retina family, for the observed pods only."""
    return f"sum by ({by}) (rate({selector}{RATE}) {RETINA_JOIN})"


def hubble(selector: str, by: str, side: str) -> str:
    """Per-second rate of one Hubble family whose ``side`` (source|destination) is observed."""
    join = HUBBLE_SOURCE if side == "source" else HUBBLE_DESTINATION
    return f"sum by ({side}, {by}) (rate({selector}{RATE}) {join})"


def hubble_either(selector: str, by: str) -> str:
    """Hubble DNS series name the pod on either side (query vs response): count each once."""
    return (
        f"sum by ({by}) ((rate({selector}{RATE}) {HUBBLE_SOURCE}) "
        f"or (rate({selector}{RATE}) {HUBBLE_DESTINATION}))"
    )


#: (row title, [(panel title, unit, [(PromQL, legend)])]) in display order; two panels per row.
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Observation",
        [
            (
                "Observed pods (1 while streamproc observes the pod)",
                "short",
                [(f"count by (pod, topology) ({OBSERVED_PODS})", "{{pod}} ({{topology}})")],
            ),
            (
                "Observation start",
                "dateTimeAsIso",
                [(f"max by (pod) ({OBSERVED_PODS}) * 1000", "{{pod}}")],
            ),
        ],
    ),
    (
        "Retina (annotation mode, pod-level metrics)",
        [
            (
                "Forwarded packets",
                "pps",
                [
                    (
                        retina("networkobservability_adv_forward_count", "podname, direction"),
                        "{{podname}} {{direction}}",
                    )
                ],
            ),
            (
                "Forwarded bytes",
                "Bps",
                [
                    (
                        retina("networkobservability_adv_forward_bytes", "podname, direction"),
                        "{{podname}} {{direction}}",
                    )
                ],
            ),
            (
                "Dropped packets by reason",
                "pps",
                [
                    (
                        retina("networkobservability_adv_drop_count", "podname, direction, reason"),
                        "{{podname}} {{direction}} {{reason}}",
                    )
                ],
            ),
            (
                "Dropped bytes by reason",
                "Bps",
                [
                    (
                        retina("networkobservability_adv_drop_bytes", "podname, direction, reason"),
                        "{{podname}} {{direction}} {{reason}}",
                    )
                ],
            ),
            (
                "TCP resets and retransmissions",
                "pps",
                [
                    (
                        retina('networkobservability_adv_tcpflags_count{flag="RST"}', "podname"),
                        "{{podname}} RST",
                    ),
                    (
                        retina("networkobservability_adv_tcpretrans_count", "podname, direction"),
                        "{{podname}} retransmissions {{direction}}",
                    ),
                ],
            ),
            (
                "DNS: top queries and return codes",
                "reqps",
                [
                    (
                        "topk(10, "
                        + retina("networkobservability_adv_dns_request_count", "query, query_type")
                        + ")",
                        "{{query_type}} {{query}}",
                    ),
                    (
                        retina("networkobservability_adv_dns_response_count", "return_code"),
                        "response {{return_code}}",
                    ),
                ],
            ),
        ],
    ),
    (
        "Hubble (ACNS container network metrics)",
        [
            (
                "Flows by verdict",
                "reqps",
                [
                    (
                        hubble("hubble_flows_processed_total", "verdict", "source"),
                        "{{source}} egress {{verdict}}",
                    ),
                    (
                        hubble("hubble_flows_processed_total", "verdict", "destination"),
                        "{{destination}} ingress {{verdict}}",
                    ),
                ],
            ),
            (
                "Drops by reason",
                "pps",
                [
                    (
                        hubble("hubble_drop_total", "reason", "source"),
                        "{{source}} egress {{reason}}",
                    ),
                    (
                        hubble("hubble_drop_total", "reason", "destination"),
                        "{{destination}} ingress {{reason}}",
                    ),
                ],
            ),
            (
                "TCP resets",
                "pps",
                [
                    (
                        hubble('hubble_tcp_flags_total{flag="RST"}', "flag", "source"),
                        "{{source}} egress RST",
                    ),
                    (
                        hubble('hubble_tcp_flags_total{flag="RST"}', "flag", "destination"),
                        "{{destination}} ingress RST",
                    ),
                ],
            ),
            (
                "DNS (Hubble): top queries and return codes",
                "reqps",
                [
                    (
                        "topk(10, "
                        + hubble_either("hubble_dns_queries_total", "query, qtypes")
                        + ")",
                        "{{qtypes}} {{query}}",
                    ),
                    (
                        hubble_either("hubble_dns_responses_total", "rcode"),
                        "response {{rcode}}",
                    ),
                ],
            ),
        ],
    ),
]

#: (name, PromQL, Grafana's Prometheus annotation options) of the dashboard's annotations.
ANNOTATIONS: list[tuple[str, str, dict[str, object]]] = [
    (
        "Observations (start to end)",
        f"count by (pod, topology) ({OBSERVED_PODS})",
        {"titleFormat": "observed {{pod}} ({{topology}})", "tagKeys": "pod,topology"},
    ),
    (
        "Observation start",
        f"max by (pod, topology) ({OBSERVED_PODS}) * 1000",
        {
            "titleFormat": "observation of {{pod}} started",
            "tagKeys": "pod,topology",
            "useValueForTime": True,
        },
    ),
    (
        # streamproc's detection counters are labelled by topology, never by workload (bounded
        # cardinality): this marks the detections of the topologies that observed this workload.
        "Falco detections (topologies observing this workload)",
        (
            "sum by (topology) "
            '(increase(streamproc_detections_matched_total{topology=~"$topology"}[1m])) > 0'
        ),
        {"titleFormat": "Falco detections matched by {{topology}}", "tagKeys": "topology"},
    ),
]
ANNOTATION_COLORS = ("blue", "green", "red")

#: (name, label, query, shown, all) of the query variables; the gauge only lists observed pods,
#: so each list is bounded by the topologies' ``maxObservations``. The kind tells apart two
#: workloads of one name (a Deployment and a StatefulSet ``web``); "All" when there is one.
VARIABLES: list[tuple[str, str, str, bool, bool]] = [
    ("namespace", "Namespace", f"label_values({OBSERVED}, namespace)", True, False),
    (
        "workload",
        "Workload",
        f'label_values({OBSERVED}{{namespace="$namespace"}}, workload_name)',
        True,
        False,
    ),
    (
        "kind",
        "Kind",
        (
            f'label_values({OBSERVED}{{namespace="$namespace", workload_name="$workload"}}, '
            "workload_kind)"
        ),
        True,
        True,
    ),
    ("topology", "Topology", f"label_values({OBSERVED_PODS}, topology)", False, True),
]


def _variables(board: dashboard.Dashboard) -> dashboard.Dashboard:
    board = board.with_variable(
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )
    for name, label, query, shown, every in VARIABLES:
        variable = (
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        if every:
            variable = variable.include_all(include_all=True)
        if not shown:
            variable = variable.hide(VariableHide.HIDE_VARIABLE).multi(multi=True)
        board = board.with_variable(variable)
    return board


def build() -> dict[str, object]:
    """The dashboard as Grafana's JSON model."""
    board = _variables(
        dashboard.Dashboard("Network evidence of observed workloads")
        .uid(UID)
        .tags(["streamproc", "retina", "evidence"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .links(
            [
                dashboard.DashboardLink("streamproc")
                .url("/d/streamproc/streamproc")
                .keep_time(keep_time=True)
                .include_vars(include_vars=False)
            ]
        )
    )
    for (name, expr, _), color in zip(ANNOTATIONS, ANNOTATION_COLORS, strict=True):
        board = board.annotation(
            dashboard.AnnotationQuery()
            .name(name)
            .datasource(DATASOURCE)
            .enable(enable=True)
            .icon_color(color)
            .expr(expr)
        )
    for row_title, panels in ROWS:
        board = board.with_row(dashboard.Row(row_title))
        for title, unit, queries in panels:
            panel = (
                timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).span(12).height(8)
            )
            for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
                panel = panel.with_target(
                    prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
                )
            board = board.with_panel(panel)
    encoded: dict[str, object] = json.loads(
        JSONEncoder(sort_keys=True, indent=2).encode(board.build())
    )
    # The SDK models Grafana's built-in annotation store only; add the Prometheus options.
    listed = encoded["annotations"]["list"]  # type: ignore[index]
    for annotation, (_, expr, options) in zip(listed, ANNOTATIONS, strict=True):
        annotation.update(options, step="1m", textFormat="", target={"expr": expr, "refId": "Anno"})
    return encoded


def render() -> str:
    """The JSON text as committed."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render(), encoding="utf-8")
