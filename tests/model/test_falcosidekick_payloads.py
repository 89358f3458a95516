"""Payloads as Falcosidekick really sends them (falcosecurity/falcosidekick 2.34.1).

Written from its source, not from memory: ``types/types.go`` (``FalcoPayload.Time`` is a Go
``time.Time``, marshalled as RFC 3339 with nanoseconds), ``handlers.go`` ``newFalcoPayload``
(``customfields`` and ``templatedfields`` are merged into ``output_fields``; the payload is
decoded with ``UseNumber`` so Falco's integers pass through digit for digit; when the JSON is
longer than 4,096 characters every string field over 512 characters is cut to 507 plus
``[...]``), and ``FalcoPayload.Check`` (a payload without a time is refused there too).
"""

from __future__ import annotations

import orjson
import pytest

from streamproc.model import events
from streamproc.model.events import ParseError
from tests.conftest import FIXTURES

SIDEKICK = orjson.loads((FIXTURES / "falcosidekick.json").read_bytes())


def payload(**changes: object) -> dict[str, object]:
    doc = {**SIDEKICK, "output_fields": dict(SIDEKICK["output_fields"])}
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    "time",
    [
        "2026-11-28T02:03:16.349478045Z",  # Falcosidekick: Go's RFC3339Nano
        "2026-11-28T02:03:16Z",  # RFC3339Nano drops trailing zeros, down to none
        "2026-11-28T02:03:16.3Z",
        "2026-11-28T03:03:16.349478045+01:00",  # an offset instead of Z
    ],
)
def test_rfc3339_times_as_falcosidekick_and_falco_write_them_are_accepted(time: str) -> None:
    """Nanoseconds, trimmed fractions and offsets are all RFC 3339."""
    detection = events.parse(orjson.dumps(payload(time=time)))
    assert detection.time == time


@pytest.mark.parametrize(
    "time",
    ["yesterday", "2026-13-01T00:00:00Z", "2026-11-28 02:03", 1795917796, None, ""],
)
def test_a_time_that_is_not_rfc3339_is_refused_as_invalid_time(time: object) -> None:
    """Not a date-time, a month 13, a number, null or nothing: invalid-time."""
    doc = payload(time=time)
    if time is None:
        del doc["time"]
    with pytest.raises(ParseError) as caught:
        events.parse(orjson.dumps(doc))
    assert caught.value.reason == "invalid-time"


def test_the_issues_example_is_refused() -> None:
    """`time: yesterday` with no Kubernetes context used to be accepted."""
    raw = b'{"rule":"x","priority":"Warning","time":"yesterday","output_fields":{}}'
    with pytest.raises(ParseError) as caught:
        events.parse(raw)
    assert caught.value.reason == "invalid-time"


def test_customfields_and_templatedfields_merged_into_output_fields_do_no_harm() -> None:
    """A fleet's `customfields: cluster:prod-eu-1` and templated fields are just more fields."""
    doc = payload()
    doc["output_fields"].update(  # type: ignore[union-attr]
        {
            "cluster": "prod-eu-1",
            "environment": "production",
            "team": "payments",
            "owner_label": "<no value>",  # a template over a field the event lacks
        }
    )
    detection = events.parse(orjson.dumps(doc))
    assert (detection.namespace, detection.pod) == ("shop", "frontend-7d4b9c8f5x-x2x7k")


def test_a_payload_cut_to_falcosidekicks_size_limit_still_parses() -> None:
    """Over 4,096 characters, long strings end in '[...]'; names stay whole (they are short)."""
    long_command = "python3 -c " + "x" * 2_000
    doc = payload()
    fields = doc["output_fields"]
    assert isinstance(fields, dict)
    fields["proc.cmdline"] = long_command[:507] + "[...]"
    fields["proc.env"] = "A=" + "y" * 505 + "[...]"
    doc["output"] = str(doc["output"]).replace("cat /etc/shadow", fields["proc.cmdline"])
    raw = orjson.dumps(doc)
    assert len(raw) > 1_000
    detection = events.parse(raw)
    assert detection.pod == "frontend-7d4b9c8f5x-x2x7k"
    assert detection.rule == "Read sensitive file untrusted"


@pytest.mark.parametrize("number", [2**53 + 1, 2**63 + 1, 2**64 - 1, 2**64 + 1])
def test_integers_beyond_2_to_the_53_in_output_fields_are_read(number: int) -> None:
    """Falco's uint64 fields (evt.num, evt.time) arrive digit for digit; none is refused."""
    doc = payload()
    fields = doc["output_fields"]
    assert isinstance(fields, dict)
    fields["evt.num"] = 0
    # written by hand: orjson itself does not write integers of 2**64 and beyond
    raw = orjson.dumps(doc).replace(b'"evt.num":0', b'"evt.num":' + str(number).encode())
    assert str(number).encode() in raw
    assert events.parse(raw).pod == "frontend-7d4b9c8f5x-x2x7k"
