"""atheris over the event parser: any bytes give a Detection or a ParseError with a reason code.

Run: ``python fuzz/fuzz_events.py -atheris_runs=1000000 fuzz/corpus/events`` (libFuzzer flags).
Any other exception is a finding: atheris stops, prints the input and writes it to crash-*.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import atheris
import orjson
from values import json_value

with atheris.instrument_imports():
    from streamproc.model import events

#: a real Falcosidekick payload; the structured half of the fuzzer mutates its fields.
TEMPLATE: dict[str, Any] = orjson.loads(
    (Path(__file__).resolve().parents[1] / "tests/fixtures/falcosidekick.json").read_bytes()
)
KEYS = [*TEMPLATE, *(f"output_fields.{k}" for k in TEMPLATE["output_fields"]), "extra"]

REASONS = set(events.REASONS)


def _mutated(fdp: atheris.FuzzedDataProvider) -> bytes:
    """The template with a few fields replaced by values of any JSON type (or removed)."""
    doc = orjson.loads(orjson.dumps(TEMPLATE))
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        key = KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]
        nested = key.startswith("output_fields.")
        target = doc.get("output_fields") if nested else doc
        name = key.removeprefix("output_fields.")
        if not isinstance(target, dict):
            break
        if fdp.ConsumeIntInRange(0, 5) == 0:
            target.pop(name, None)
        else:
            target[name] = json_value(fdp)
    return orjson.dumps(doc)


def _check(raw: bytes) -> None:
    try:
        events.parse(raw)
    except events.ParseError as exc:
        if exc.reason not in REASONS:
            raise AssertionError(f"unknown dead-letter reason {exc.reason!r}") from exc


def test_one_input(data: bytes) -> None:
    """The property: parse() either succeeds or says why not, with a known reason code.

    Raw bytes exercise the decoder's edges; a mutated real payload reaches the field checks.
    """
    _check(data)
    if data:
        _check(_mutated(atheris.FuzzedDataProvider(data)))


def main() -> None:
    """Hand the command line (libFuzzer flags) to atheris and fuzz."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
