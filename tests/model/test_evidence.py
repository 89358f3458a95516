"""Evidence model: bounded queries, Prometheus answers read as untrusted input, an Event line."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.model import evidence

START, END = 1_800_000_000.0, 1_800_000_600.0
TARGET = evidence.Target("shop", ("frontend-abc",), START, END)


def answer(*results: tuple[dict[str, str], str]) -> dict[str, Any]:
    """An ``/api/v1/query`` answer as Prometheus 2.x writes it."""
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [END, v]} for m, v in results],
        },
    }


def test_a_real_answer_reads_as_its_samples() -> None:
    """Labels and values come back; the time is Prometheus's, not a count."""
    found = evidence.vector(
        answer(({"direction": "egress"}, "12345"), ({"direction": "ingress"}, "7.5"))
    )
    assert found == [({"direction": "egress"}, 12345.0), ({"direction": "ingress"}, 7.5)]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "success",
        {"status": "error", "errorType": "bad_data", "error": "parse error"},
        {"status": "success"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "vector", "result": {}}},
        {"status": "success", "data": {"resultType": "vector", "result": ["x"]}},
        answer(({"direction": "egress"}, "NaN")),
        answer(({"direction": "egress"}, "+Inf")),
        answer(({"direction": "egress"}, "-1")),
        answer(({"direction": "egress"}, "lots")),
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {"a": 1}, "value": [1, "1"]}]},
        },
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, 1]}]},
        },
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1]}]},
        },
    ],
    ids=lambda bad: str(bad)[:60],
)
def test_a_malformed_answer_is_refused_with_a_reason(bad: object) -> None:
    """Not a vector of finite non-negative numbers: BadAnswer, never a crash or a wrong count."""
    with pytest.raises(evidence.BadAnswer):
        evidence.vector(bad)


def test_an_answer_is_read_to_a_bound_and_its_labels_are_cut() -> None:
    """A Prometheus (or a man in the middle) that sends a million series gets MAX_SERIES read."""
    huge = answer(*(({"reason": "x" * 10_000}, "1") for _ in range(evidence.MAX_SERIES + 50)))
    found = evidence.vector(huge)
    assert len(found) == evidence.MAX_SERIES
    assert len(found[0][0]["reason"]) == evidence.MAX_LABEL


def test_retina_queries_name_the_pod_and_the_exact_range_and_are_bounded() -> None:
    """Each asks one family's increase over the observation's range, topk where labels vary."""
    found = {q.key: q.expr for q in evidence.queries(TARGET, "retina")}
    sel = 'networkobservability_adv_forward_count{namespace="shop",podname="frontend-abc"}'
    assert found["forward_packets"] == (
        f"sum by (direction) (((last_over_time({sel}[600000ms]) unless {sel} @ 1800000000.000)"
        f" or increase({sel}[600000ms])))"
    )
    assert found["drops"].startswith("topk(10, sum by (reason) (((last_over_time(")
    assert found["dns_responses"].startswith("topk(50, sum by (query, return_code)")
    assert set(found) == {
        "forward_packets",
        "forward_bytes",
        "drops",
        "tcp_flags",
        "retransmissions",
        "dns_requests",
        "dns_responses",
    }


def test_a_range_never_exceeds_the_bound_whatever_the_start() -> None:
    """A start from the epoch (forged, or a bug) still asks at most MAX_RANGE_S."""
    forged = evidence.Target("shop", ("p",), 0.0, END)
    assert forged.range_ms == evidence.MAX_RANGE_S * 1000
    assert f"[{int(evidence.MAX_RANGE_S * 1000)}ms]" in evidence.queries(forged, "retina")[0].expr


def test_names_are_quoted_so_a_label_value_cannot_break_out_of_the_selector() -> None:
    """Quotes and backslashes are escaped; several pods become an anchored regex."""
    assert evidence.quote('a"b\\c') == '"a\\"b\\\\c"'
    several = evidence.Target("shop", ("web-0", "web-1"), START, END)
    assert 'podname=~"web\\\\-0|web\\\\-1"' in evidence.queries(several, "retina")[0].expr


def test_hubble_queries_read_source_for_outgoing_and_destination_for_incoming() -> None:
    """ACNS labels pods as namespace/pod on the side of the flow they are on."""
    found = {q.key: q.expr for q in evidence.queries(TARGET, "hubble")}
    assert 'source="shop/frontend-abc",verdict="FORWARDED"' in found["forward_packets"]
    assert 'destination="shop/frontend-abc",verdict="FORWARDED"' in found["forward_packets"]
    assert "hubble_drop_total" in found["drops"]
    assert "hubble_dns_responses_total" in found["dns_responses"]


def test_answers_assemble_into_evidence_and_one_event_line() -> None:
    """Traffic per direction, drops per reason, flags, DNS with return codes; the summary line."""
    answers = {
        "forward_packets": [({"direction": "egress"}, 12345.4), ({"direction": "ingress"}, 10.0)],
        "forward_bytes": [({"direction": "egress"}, 3_200_000.0)],
        "drops": [({"reason": "IPTABLE_RULE_DROP"}, 41.0)],
        "tcp_flags": [({"flag": "SYN"}, 30.0), ({"flag": "RST"}, 0.2)],
        "retransmissions": [],
        "dns_requests": [({"query": "evil.example.com"}, 3.0)],
        "dns_responses": [({"query": "evil.example.com", "return_code": "NXDOMAIN"}, 3.0)],
    }
    found = evidence.assemble(TARGET, "retina", answers)
    assert found.result == "found"
    assert found.forward == {
        "egress": {"packets": 12345, "bytes": 3_200_000},
        "ingress": {"packets": 10},
    }
    assert found.tcp_flags == {"SYN": 30}  # a rounded zero is no evidence
    assert found.summary() == (
        "egress 12,345 packets / 3.2 MB; ingress 10 packets; 41 drops (IPTABLE_RULE_DROP); "
        "DNS: evil.example.com NXDOMAIN \N{MULTIPLICATION SIGN}3"
    )
    assert "missing_parts" not in found.as_dict()
    record = found.as_dict()
    assert record["range"] == ["2027-01-15T08:00:00Z", "2027-01-15T08:10:00Z"]
    assert record["source"] == "networkobservability_adv_*"
    assert record["unit"] == "packets"
    assert record["dns"] == [
        {"query": "evil.example.com", "count": 3, "return_codes": {"NXDOMAIN": 3}}
    ]
    assert record["tcp"] == {"flags": {"SYN": 30}, "retransmissions": {}}
    assert "missing" not in record


def test_no_series_and_missing_evidence_say_why_in_the_record_and_the_line() -> None:
    """Empty answers are ``no-series``; the line names the reason instead of numbers."""
    empty = evidence.assemble(TARGET, "retina", {"forward_packets": []})
    assert empty.missing == "no-series"
    gone = evidence.missing(TARGET, "timeout", "no answer within 5s")
    assert gone.as_dict()["missing"] == "timeout"
    assert "source" not in gone.as_dict()
    assert gone.summary() == "no network evidence (timeout: no answer within 5s)"


def test_a_summary_of_hostile_query_names_stays_within_an_events_bound() -> None:
    """DNS names are the tenant's: the line is cut to MAX_SUMMARY characters."""
    answers = {"dns_requests": [({"query": "x" * 300 + str(n)}, 1.0) for n in range(10)]}
    line = evidence.assemble(TARGET, "retina", answers).summary()
    assert len(line) <= evidence.MAX_SUMMARY


def test_bytes_read_as_a_person_reads_them() -> None:
    """Powers of 1000 with one decimal, plain bytes below a kB."""
    assert [evidence.human_bytes(n) for n in (999, 1000, 3_210_000, 5 * 10**12)] == [
        "999 B",
        "1.0 kB",
        "3.2 MB",
        "5.0 TB",
    ]


def test_series_born_inside_the_range_count_from_zero_and_others_by_their_increase() -> None:
    """A series absent at the start counts its last value; one present, its increase."""
    expr = evidence.queries(TARGET, "retina")[5].expr
    assert "last_over_time(networkobservability_adv_dns_request_count{" in expr
    assert "@ 1800000000.000" in expr
    assert expr.count("increase(") == 1


def test_each_pod_counts_from_its_own_start() -> None:
    """A pod followed later is asked over its own, shorter range; the record names both starts."""
    later = evidence.Target("shop", ("web-0", "web-1"), START, END, starts=(START, START + 500))
    expr = evidence.queries(later, "retina")[0].expr
    assert 'podname="web-0"}[600000ms]' in expr
    assert 'podname="web-1"}[100000ms]' in expr
    assert "@ 1800000500.000" in expr
    hubble = evidence.queries(later, "hubble")[0].expr
    assert 'source="shop/web-1",verdict="FORWARDED"}[100000ms]' in hubble
    record = evidence.missing(later, "timeout", "x").as_dict()
    assert record["starts"] == {"web-0": "2027-01-15T08:00:00Z", "web-1": "2027-01-15T08:08:20Z"}


def test_the_dns_line_counts_each_return_code_and_says_no_answer() -> None:
    """Responses per code (not requests after codes), failures first, Hubble's "No Error" too."""
    answers = {
        "dns_requests": [({"query": "a.example."}, 100.0), ({"query": "quiet.example."}, 5.0)],
        "dns_responses": [
            ({"query": "a.example.", "return_code": "NOERROR"}, 97.0),
            ({"query": "a.example.", "return_code": "NXDOMAIN"}, 3.0),
        ],
    }
    line = evidence.assemble(TARGET, "retina", answers).summary()
    times = "\N{MULTIPLICATION SIGN}"
    assert f"DNS: a.example. NXDOMAIN {times}3/NOERROR {times}97" in line
    assert f"quiet.example. no answer {times}5" in line
    hubble = {
        "dns_requests": [({"query": "b.example."}, 4.0)],
        "dns_responses": [
            ({"query": "b.example.", "return_code": "No Error"}, 3.0),
            ({"query": "b.example.", "return_code": "Non-Existent Domain"}, 1.0),
        ],
    }
    line = evidence.assemble(TARGET, "hubble", hubble).summary()
    assert f"b.example. Non-Existent Domain {times}1/No Error {times}3" in line


def test_parts_that_failed_are_named_and_the_others_kept() -> None:
    """A DNS query that failed leaves traffic and drops in the record, and says what is missing."""
    answers = {"forward_packets": [({"direction": "egress"}, 10.0)]}
    found = evidence.assemble(TARGET, "retina", answers, {"dns": "http-error"})
    assert found.result == "found"
    assert found.as_dict()["missing_parts"] == {"dns": "http-error"}
    assert found.summary().endswith("; missing: dns (http-error)")
