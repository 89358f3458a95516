"""atheris over the decoder of streamproc's marks on pods: Marks, a Refusal or None, nothing else.

Anyone who may edit pods reaches this decoder (and the patches computed from what it returns);
any exception would stop the annotate stage, and stop it again after every restart, as the
year-10000 ``expires-at`` once did. Beyond "no exception": accepted marks end within the
policy's bound (and so render), and a patch computed from them never extends past it.
Run: ``python fuzz/fuzz_marks.py fuzz/corpus/marks`` (libFuzzer flags).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import atheris
import orjson
from values import json_value

from streamproc.cluster import marking

with atheris.instrument_imports():
    from streamproc.model import conventions, marks, patches
    from streamproc.model.topologies import Topology

CORPUS = Path(__file__).resolve().parent / "corpus" / "marks"
#: forged and genuine metadata; the structured half of the fuzzer mutates their marks
TEMPLATES: list[dict[str, Any]] = [
    orjson.loads(path.read_bytes()) for path in sorted(CORPUS.glob("*.json"))
]
LADDER = Topology.model_validate(
    {
        "apiVersion": "streamproc/v1",
        "kind": "Topology",
        "metadata": {"name": "retina-observe"},
        "spec": {"action": {"ttl": "15m", "escalation": {"ttls": ["15m", "1h", "6h"]}}},
    }
)
POLICY = marks.Policy.of([LADDER])
NOW = 1_799_990_000.0
BOUND = NOW + 6 * 3600 + marks.SKEW_S
KEYS = [*conventions.BOOKKEEPING_KEYS, "retina.sh", "extra"]


def _time(fdp: atheris.FuzzedDataProvider) -> str:
    """An RFC 3339-shaped timestamp with fuzzed fields (years 0000-9999, odd offsets)."""
    year, month, day = (fdp.ConsumeIntInRange(0, n) for n in (9999, 99, 99))
    hour, minute, second = (fdp.ConsumeIntInRange(0, 99) for _ in range(3))
    offset = ["Z", "+00:00", "-14:00", "+14:00", "+99:99", ""][fdp.ConsumeIntInRange(0, 5)]
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{offset}"


def _mutated(fdp: atheris.FuzzedDataProvider) -> dict[str, Any]:
    """A template whose marks and label are replaced by any JSON value, a time, or removed."""
    meta = orjson.loads(orjson.dumps(TEMPLATES[fdp.ConsumeIntInRange(0, len(TEMPLATES) - 1)]))
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        choice = fdp.ConsumeIntInRange(0, 9)
        if choice == 0:
            meta["labels"] = {conventions.OBSERVED_LABEL: json_value(fdp)}
            continue
        key = KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]
        annotations = meta.setdefault("annotations", {})
        if choice == 1:
            annotations.pop(key, None)
        elif choice in (2, 3):
            annotations[key] = _time(fdp)
        elif choice in (4, 5):
            annotations[key] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
        else:
            annotations[key] = json_value(fdp)
    return meta


def _strings(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _check(meta: object) -> None:
    pod = {"metadata": meta}
    found = marking.read(pod, now=NOW, policy=POLICY)
    assert found is None or isinstance(found, (marks.Marks, marks.Refusal)), found
    if isinstance(found, marks.Marks):
        assert 0 <= found.until <= BOUND, found.until
        conventions.format_time(found.until)
        if found.since is not None:  # the evidence range it starts is bounded (model.evidence)
            assert found.until - marks.MAX_OBSERVED_S <= found.since <= found.until, found.since
            assert found.since <= NOW + marks.SKEW_S, found.since
            conventions.format_time(found.since)
    if not (isinstance(meta, dict) and _strings(meta.get("annotations", {}))):
        return  # the API server hands out string maps only; patches read no other
    if not _strings(meta.get("labels", {})):
        return
    patch = patches.observe(
        pod,
        annotations=LADDER.spec.action.annotate,
        until=NOW + 900,
        topology=LADDER.name,
        rule="r",
        action_id="retina-observe/shop/Deployment/frontend/1799990000000",
        previous=found,
        now=NOW,
    )
    if patch is not None:
        written = conventions.parse_time(str(patch.annotations[conventions.EXPIRES_AT]))
        assert written is not None
        assert written <= BOUND, written
        since = patch.annotations.get(conventions.OBSERVED_SINCE)
        assert since is None or (conventions.parse_time(since) or 0.0) <= NOW + marks.SKEW_S
    patches.release(pod, found, lambda key, value: POLICY.ours(LADDER.name, key, value))


def test_one_input(data: bytes) -> None:
    """The property: any metadata reads as marks, a refusal or nothing, and patches stay bounded."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if doc is not None:
        _check(doc)
    if data:
        _check(_mutated(atheris.FuzzedDataProvider(data)))


def main() -> None:
    """Hand the command line (libFuzzer flags) to atheris and fuzz."""
    logging.disable(logging.WARNING)  # each refusal warns once; a fuzzer makes thousands
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
