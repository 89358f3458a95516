"""The network evidence dashboard: generated from code, and its queries count observed pods only.

A loopback HTTP server serves Retina-shaped (microsoft/retina v1.2.6, annotation mode = local
context) and Hubble-shaped (ACNS) series plus streamproc's observation gauge; Debian's
Prometheus scrapes it every second and evaluates the dashboard's queries.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.observability.test_dashboard import exported_names, queried_names
from tests.prometheus_server import running_prometheus

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RATE_WINDOW = "10s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval

NAMESPACE, WORKLOAD, TOPOLOGY = "shop", "web", "retina-observe"
REPLICASET = "web-7d9f8"  # what Retina names as the pods' workload (their owner reference)
WATCHED = "web-7d9f8-abcde"  # observed throughout
ENDING = "web-7d9f8-fghij"  # observed until the test ends its observation
IGNORED = "web-7d9f8-zzzzz"  # same ReplicaSet, never observed (e.g. over the node budget)
NAMESAKE = "web-0"  # observed too, but of StatefulSet "web": another workload of the same name
#: (namespace, pod, Retina's workload kind/name, growth per second of its series): the last one
#: shares WATCHED's pod name in another namespace, so only a join on namespace *and* pod keeps
#: it out.
PODS = [
    (NAMESPACE, WATCHED, f"ReplicaSet/{REPLICASET}", 3.0),
    (NAMESPACE, ENDING, f"ReplicaSet/{REPLICASET}", 5.0),
    (NAMESPACE, IGNORED, f"ReplicaSet/{REPLICASET}", 700.0),
    (NAMESPACE, NAMESAKE, f"StatefulSet/{WORKLOAD}", 1300.0),
    ("other", WATCHED, f"ReplicaSet/{REPLICASET}", 1100.0),
]
#: pod -> streamproc's workload kind, of the pods streamproc observes when the test starts
KINDS = {WATCHED: "Deployment", ENDING: "Deployment", NAMESAKE: "StatefulSet"}


#: (family, whose labels name the pod, other labels, growth factor) of each network series per
#: pod: Retina's local context (no source_/destination_ prefix; TCP flags and DNS without
#: direction) and Hubble's source/destination = namespace/pod.
SERIES = [
    ("networkobservability_adv_forward_count", "retina", 'direction="egress"', 1),
    ("networkobservability_adv_forward_count", "retina", 'direction="ingress"', 2),
    ("networkobservability_adv_forward_bytes", "retina", 'direction="egress"', 99),
    (
        "networkobservability_adv_drop_count",
        "retina",
        'reason="IPTABLE_RULE_DROP",direction="egress"',
        1,
    ),
    (
        "networkobservability_adv_drop_bytes",
        "retina",
        'reason="IPTABLE_RULE_DROP",direction="egress"',
        60,
    ),
    ("networkobservability_adv_tcpflags_count", "retina", 'flag="RST"', 1),
    ("networkobservability_adv_tcpflags_count", "retina", 'flag="SYN"', 7),
    ("networkobservability_adv_tcpretrans_count", "retina", 'direction="egress"', 1),
    (
        "networkobservability_adv_dns_request_count",
        "retina",
        'query_type="A",query="db.shop.svc."',
        1,
    ),
    (
        "networkobservability_adv_dns_response_count",
        "retina",
        'return_code="NXDOMAIN",query_type="A",query="db.shop.svc.",response="",num_response="0"',
        1,
    ),
    (
        "hubble_flows_processed_total",
        "source",
        'protocol="TCP",verdict="FORWARDED",type="L3_L4",subtype=""',
        1,
    ),
    (
        "hubble_flows_processed_total",
        "destination",
        'protocol="TCP",verdict="DROPPED",type="L3_L4",subtype=""',
        3,
    ),
    ("hubble_drop_total", "source", 'protocol="TCP",reason="POLICY_DENIED"', 1),
    ("hubble_drop_total", "destination", 'protocol="UDP",reason="POLICY_DENIED"', 2),
    ("hubble_tcp_flags_total", "source", 'flag="RST",family="IPv4"', 1),
    ("hubble_tcp_flags_total", "destination", 'flag="RST",family="IPv4"', 4),
    ("hubble_dns_queries_total", "source", 'query="db.shop.svc.",qtypes="A"', 1),
    (
        "hubble_dns_responses_total",
        "destination",
        'query="db.shop.svc.",qtypes="A",rcode="Non-Existent Domain",ips_returned="0"',
        1,
    ),
]


def generator(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, GRAFANA / f"{name}.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def board(name: str) -> dict[str, Any]:
    return json.loads((GRAFANA / f"{name}.json").read_text())  # type: ignore[no-any-return]


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, query) for every panel target, annotation and query variable of a dashboard."""
    found = [
        (f"panel {p['title']!r}", t["expr"]) for p in dash["panels"] for t in p.get("targets", [])
    ]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dash["annotations"].get("list", [])]
    found += [
        (f"variable {v['name']!r}", v["query"])
        for v in dash["templating"].get("list", [])
        if v["type"] == "query"
    ]
    return found


class Exposition:
    """Two /metrics endpoints (Retina+Hubble, streamproc) whose counters grow with the clock."""

    def __init__(self) -> None:
        self.started = time.time()
        self.observed = {pod: self.started - 60 + index for index, pod in enumerate(KINDS)}
        self.lock = threading.Lock()

    def end_observation(self, pod: str) -> None:
        with self.lock:
            del self.observed[pod]

    def network(self) -> str:
        grown = time.time() - self.started + 1
        lines = []
        for index, (namespace, pod, workload, speed) in enumerate(PODS):
            kind, name = workload.split("/")
            pod_labels = {
                "retina": f'ip="10.0.0.{index}",namespace="{namespace}",podname="{pod}",'
                f'workload_kind="{kind}",workload_name="{name}"',
                "source": f'source="{namespace}/{pod}",destination=""',
                "destination": f'source="",destination="{namespace}/{pod}"',
            }
            lines += [
                f"{family}{{{labels},{pod_labels[side]}}} {factor * speed * grown}"
                for family, side, labels, factor in SERIES
            ]
        return "\n".join(lines) + "\n"

    def streamproc(self) -> str:
        grown = time.time() - self.started + 1
        lines = [
            f'streamproc_detections_matched_total{{topology="{TOPOLOGY}"}} {grown}',
        ]
        with self.lock:
            lines += [
                f'streamproc_observed_pod_since_seconds{{namespace="{NAMESPACE}",pod="{pod}",'
                f'workload_kind="{KINDS[pod]}",workload_name="{WORKLOAD}",topology="{TOPOLOGY}"}} '
                f"{since}"
                for pod, since in self.observed.items()
            ]
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def exposition() -> Iterator[tuple[Exposition, int]]:
    """The exposition served on a loopback port; stopped after the module."""
    state = Exposition()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (state.network() if self.path == "/network" else state.streamproc()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def prometheus(
    exposition: tuple[Exposition, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Debian's Prometheus scraping both endpoints every second; its base URL."""
    _, port = exposition
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": f"/{job}",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
            for job in ("network", "streamproc")
        ],
    }
    with running_prometheus(tmp, {}, config=config) as running:
        base = running.url
        # every network series has two samples inside the rate window, and the gauge is in
        wait_for(
            lambda: (
                rated(base) and count(base, "streamproc_observed_pod_since_seconds") == len(KINDS)
            ),
            timeout=60,
            what="every network series with a rate, and the gauge, scraped",
        )
        yield base


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def rated(base: str) -> bool:
    """Every network series has the two samples inside the rate window that ``rate`` needs."""
    window = f'{{__name__=~"networkobservability_.+|hubble_.+"}}[{RATE_WINDOW}]'
    try:
        series = api(base, "query", query=window)["result"]
    except OSError:
        return False
    return len(series) == len(SERIES) * len(PODS) and all(len(s["values"]) > 1 for s in series)


def count(base: str, expr: str) -> int:
    try:
        return len(api(base, "query", query=expr)["result"])
    except OSError:
        return -1


def instant(base: str, expr: str, at: float) -> dict[str, float]:
    """Result of an instant query at ``at``: the series' labels (sorted, as text) -> value."""
    result = api(base, "query", query=expr, time=str(at))["result"]
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in result}


def label_values(base: str, query: str) -> list[str]:
    """What Grafana lists for ``label_values(selector, label)``: the series API's label values."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match, query
    series = api(base, "series", **{"match[]": match[1]})
    return sorted({s[match[2]] for s in series if match[2] in s})


def promql(expr: str, topology: str = TOPOLOGY) -> str:
    """A panel's query as Grafana sends it, its variables set to the observed workload."""
    for variable, value in (
        ("$__rate_interval", RATE_WINDOW),
        ("$namespace", NAMESPACE),
        ("$workload", WORKLOAD),
        ("$kind", "Deployment"),
        ("$topology", f"({topology})"),
    ):
        expr = expr.replace(variable, value)
    return expr


def reference(evidence: ModuleType, expr: str, pods: list[str]) -> str:
    """The same query with each join replaced by naming the given pods outright."""
    joins = {
        promql(evidence.RETINA_JOIN): f'namespace="{NAMESPACE}", podname=~"{"|".join(pods)}"',
        promql(evidence.HUBBLE_SOURCE): f'source=~"{"|".join(f"{NAMESPACE}/{p}" for p in pods)}"',
        promql(evidence.HUBBLE_DESTINATION): (
            f'destination=~"{"|".join(f"{NAMESPACE}/{p}" for p in pods)}"'
        ),
    }
    pattern = re.compile(
        r"rate\((\w+)(?:\{([^}]*)\})?\[(\w+)\]\) (" + "|".join(map(re.escape, joins)) + ")"
    )

    def named(match: re.Match[str]) -> str:
        matchers = ", ".join(m for m in (match[2], joins[match[4]]) if m)
        return f"rate({match[1]}{{{matchers}}}[{match[3]}])"

    replaced, found = pattern.subn(named, expr)
    assert found, expr
    return replaced


def network_panels(evidence: ModuleType) -> list[tuple[str, str]]:
    """(title, PromQL) of every panel query over Retina's or Hubble's series."""
    return [
        (title, promql(expr))
        for _, panels in evidence.ROWS
        for title, _, targets in panels
        for expr, _ in targets
        if "networkobservability_" in expr or "hubble_" in expr
    ]


def test_the_committed_evidence_dashboard_is_what_the_code_generates() -> None:
    """deploy/grafana/evidence.json cannot drift from deploy/grafana/evidence.py."""
    assert (GRAFANA / "evidence.json").read_text() == generator("evidence").render(), (
        "run: python deploy/grafana/evidence.py"
    )


def test_the_evidence_dashboard_covers_retina_hubble_and_streamproc() -> None:
    """Every Retina and Hubble family of the brief is charted, and each is joined to the gauge."""
    evidence = generator("evidence")
    text = " ".join(expr for _, expr in queries(board("evidence")))
    for family in (
        "networkobservability_adv_forward_count",
        "networkobservability_adv_forward_bytes",
        "networkobservability_adv_drop_count",
        "networkobservability_adv_drop_bytes",
        'networkobservability_adv_tcpflags_count{flag="RST"}',
        "networkobservability_adv_tcpretrans_count",
        "networkobservability_adv_dns_request_count",
        "networkobservability_adv_dns_response_count",
        "hubble_flows_processed_total",
        "hubble_drop_total",
        'hubble_tcp_flags_total{flag="RST"}',
        "hubble_dns_queries_total",
        "hubble_dns_responses_total",
        "streamproc_detections_matched_total",
    ):
        assert family in text, family
    for title, expr in network_panels(evidence):
        assert "streamproc_observed_pod_since_seconds" in expr, title
    names = {v["name"] for v in board("evidence")["templating"]["list"]}
    assert {"datasource", "namespace", "workload"} <= names
    used = queried_names(text)
    assert used <= exported_names(), sorted(used - exported_names())


def test_the_observation_panels_link_to_the_evidence_of_their_workload() -> None:
    """The streamproc dashboard's observed-workload series open the evidence dashboard with the
    series' namespace and workload as its variables, the same data source and time range."""
    evidence = board("evidence")
    links = [
        link
        for panel in board("streamproc")["panels"]
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    ]
    assert links
    for link in links:
        url = urllib.parse.urlsplit(link["url"])
        assert url.path.startswith(f"/d/{evidence['uid']}/")
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        assert params["var-namespace"] == "${__field.labels.namespace}"
        assert params["var-workload"] == "${__field.labels.workload_name}"
        assert params["var-kind"] == "${__field.labels.workload_kind}"
        assert "${datasource:queryparam}" in url.query
        assert "${__url_time_range}" in url.query
    variables = {v["name"] for v in evidence["templating"]["list"]}
    assert {"namespace", "workload", "kind", "datasource"} <= variables


def test_every_query_of_both_dashboards_evaluates_in_prometheus(
    prometheus: str,
) -> None:
    """Panels, annotations and variables parse and evaluate; the variables list what is observed."""
    now = time.time()
    for name in ("evidence", "streamproc"):
        for where, query in queries(board(name)):
            if query.startswith("label_values("):
                continue
            expr = promql(query)
            try:
                api(prometheus, "query", query=expr, time=str(now))
                api(
                    prometheus,
                    "query_range",
                    query=expr,
                    start=str(now - 30),
                    end=str(now),
                    step="1",
                )
            except urllib.error.HTTPError as error:
                pytest.fail(f"{name} {where}: {error.read().decode()} in: {expr}")
    variables = {v["name"]: v["query"] for v in board("evidence")["templating"]["list"]}
    assert label_values(prometheus, variables["namespace"]) == [NAMESPACE]
    assert label_values(prometheus, promql(variables["workload"])) == [WORKLOAD]
    assert label_values(prometheus, promql(variables["kind"])) == ["Deployment", "StatefulSet"]
    assert label_values(prometheus, promql(variables["topology"])) == [TOPOLOGY]


def test_the_evidence_panels_count_exactly_the_observed_pods(
    prometheus: str, exposition: tuple[Exposition, int]
) -> None:
    """Each network panel equals the same query naming the observed pods outright, and never
    shows the unobserved pod of the same ReplicaSet nor the same pod name in another namespace;
    once an observation ends, its pod leaves every panel."""
    evidence = generator("evidence")
    state, _ = exposition
    panels = network_panels(evidence)
    for observed in ([WATCHED, ENDING], [WATCHED]):
        at = time.time()
        for title, expr in panels:
            got = instant(prometheus, expr, at)
            assert got, f"{title}: nothing for the observed pods: {expr}"
            assert got == instant(prometheus, reference(evidence, expr, observed), at), title
            assert all(v > 0 for v in got.values()), title
            for series in got:
                assert IGNORED not in series, title
                assert NAMESAKE not in series, title
                assert '"other' not in series, title
            labelled = [json.loads(s) for s in got]
            pods = {
                label[key].rpartition("/")[2]
                for label in labelled
                for key in ("podname", "source", "destination")
                if key in label
            }
            if pods:  # the panel shows pods (not only DNS names or return codes)
                assert pods == set(observed), f"{title}: {sorted(pods)}"
        if ENDING in observed:
            state.end_observation(ENDING)
            wait_for(
                lambda: (
                    count(prometheus, f'streamproc_observed_pod_since_seconds{{pod="{ENDING}"}}')
                    == 0
                ),
                timeout=30,
                what="the ended observation's gauge marked stale",
            )
    # the start-to-end annotation's region of the ended pod stops; the other one's goes on
    region = promql(next(e for n, e, _ in evidence.ANNOTATIONS if n.endswith("(start to end)")))
    end = time.time() + 2  # past the staleness marker: a later step has WATCHED only
    steps = api(
        prometheus, "query_range", query=region, start=str(state.started), end=str(end), step="1"
    )["result"]
    last = {r["metric"]["pod"]: float(r["values"][-1][0]) for r in steps}
    assert set(last) == {WATCHED, ENDING}
    assert last[ENDING] < last[WATCHED]


def test_joining_on_the_workload_would_find_no_deployment_pod(prometheus: str) -> None:
    """Retina names a Deployment's pod by its ReplicaSet, streamproc by the Deployment: the
    panels' namespace+pod join finds the Deployment's pods where a workload join finds none of
    them (only the StatefulSet's pod, whose owner is the workload itself)."""
    evidence = generator("evidence")
    expr = promql(evidence.retina("networkobservability_adv_forward_count", "podname, direction"))
    wrong = expr.replace(
        promql(evidence.RETINA_JOIN),
        promql(f"and on (namespace, workload_name) {evidence.OBSERVED_PODS}"),
    )
    at = time.time()
    pods = {json.loads(s)["podname"] for s in instant(prometheus, expr, at)}
    assert WATCHED in pods
    assert {json.loads(s)["podname"] for s in instant(prometheus, wrong, at)} == {NAMESAKE}


def test_the_annotations_mark_observations_and_detections(prometheus: str) -> None:
    """The start annotation carries the gauge's start (ms), the region one is present while a
    pod is observed, and the detection one fires for the workload's topology."""
    evidence = generator("evidence")
    raw = {name: expr for name, expr, _ in evidence.ANNOTATIONS}
    exprs = {name: promql(expr) for name, expr in raw.items()}
    falco = "Falco detections (topologies observing this workload)"
    at = time.time()
    starts = api(prometheus, "query", query=exprs["Observation start"], time=str(at))["result"]
    gauge = api(
        prometheus,
        "query",
        query='streamproc_observed_pod_since_seconds{workload_kind="Deployment"}',
        time=str(at),
    )["result"]
    assert starts
    assert {(s["metric"]["pod"], float(s["value"][1])) for s in starts} == {
        (g["metric"]["pod"], float(g["value"][1]) * 1000) for g in gauge
    }
    assert instant(prometheus, exprs["Observations (start to end)"], at)
    detections = instant(prometheus, exprs[falco], at)
    assert [json.loads(k)["topology"] for k in detections] == [TOPOLOGY]
    assert instant(prometheus, promql(raw[falco], topology="another"), at) == {}
