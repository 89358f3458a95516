"""atheris over the decoders of streamproc's own records: a tally or an action, or its error.

Anyone who can write to ``streamproc.tallies`` or ``streamproc.actions`` reaches these decoders;
any exception other than TallyError/ActionError would stop the windows or annotate stage, and
stop it again after every restart. An action that decodes then meets the annotator's last check
(``guarding``) against the shipped topologies and a restrictive one: it answers a declared
refusal or None, never an exception. Record *times* are forged too: a year-9999 CreateTime once
hung Faust's window arithmetic, so every forged time must either be refused before Faust sees it
or lie where Faust's windows hold, and whatever time a producer writes on a detection, ingest
windows it where the windows stage admits it. Run: ``python fuzz/fuzz_records.py
fuzz/corpus/records``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import atheris
import orjson
from values import json_value

with atheris.instrument_imports():
    from streamproc import clocks
    from streamproc.model import guarding, topologies
    from streamproc.model.actions import Action, ActionError
    from streamproc.model.tallies import Tally, TallyError

CORPUS = Path(__file__).resolve().parent / "corpus" / "records"
#: a valid record of each kind; the structured half of the fuzzer mutates their fields
TEMPLATES: list[dict[str, Any]] = [
    orjson.loads((CORPUS / name).read_bytes()) for name in ("tally.json", "action.json")
]


#: the annotator's own copies: the shipped topologies, and one with every rule narrowed
OWN = [
    None,
    *topologies.load_path(topologies.default_path()),
    topologies.Topology.model_validate(
        {
            "apiVersion": "streamproc/v1",
            "kind": "Topology",
            "metadata": {"name": "retina-observe"},
            "spec": {
                "match": {
                    "priority": ">=Error",
                    "rules": ["Terminal shell in container"],
                    "namespaces": {"include": ["shop"], "exclude": ["payments"]},
                    "clusters": ["east"],
                },
                "action": {"scope": "pod"},
            },
        }
    ),
]


def _mutated(fdp: atheris.FuzzedDataProvider) -> bytes:
    """A template with a few fields replaced by values of any JSON type, removed or added."""
    doc = dict(TEMPLATES[fdp.ConsumeIntInRange(0, len(TEMPLATES) - 1)])
    keys = [*doc, "extra"]
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        key = keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]
        if fdp.ConsumeIntInRange(0, 5) == 0:
            doc.pop(key, None)
        else:
            doc[key] = json_value(fdp)
    return orjson.dumps(doc)


def _check(raw: bytes) -> None:
    with contextlib.suppress(TallyError):
        Tally.decode(raw)
    try:
        action = Action.decode(raw)
    except ActionError:
        return
    for own in OWN:
        refused = guarding.refusal(action, own)
        if refused is not None and refused[0] not in guarding.REFUSALS:
            raise AssertionError(f"undeclared refusal {refused}")


#: window sizes a topology may have (at least 1 s) and the lab's time-lapsed ones
_SIZES_S = (1.0, 5.0, 60.0, 3600.0, 86_400.0)
_NOW_S = time.time()


def _check_times(fdp: atheris.FuzzedDataProvider) -> None:
    """Forged record times: refused before Faust, or where its window arithmetic holds."""
    size = _SIZES_S[fdp.ConsumeIntInRange(0, len(_SIZES_S) - 1)]
    message_s = fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeInt(8) / 1000
    window_start_ms = fdp.ConsumeInt(8)
    ahead_s = clocks.ahead_bound_s(60)
    if clocks.tally_time_refused(message_s, window_start_ms, size, _NOW_S, ahead_s) is None:
        for seconds in (message_s, window_start_ms / 1000):
            assert math.isfinite(seconds)
            assert 0 <= seconds < size * 2**31 - size
            assert seconds <= _NOW_S + ahead_s
    # whatever CreateTime a producer writes, ingest windows it where the windows stage admits
    arrival_ms, tolerance_ms = int(_NOW_S * 1000), 60_000
    fresh = arrival_ms - fdp.ConsumeIntInRange(0, 10**7) if fdp.ConsumeBool() else None
    windowed, _ = clocks.record_time(fdp.ConsumeInt(8), arrival_ms, tolerance_ms, fresh)
    start_ms = windowed - windowed % int(size * 1000)
    assert clocks.tally_time_refused(start_ms / 1000, start_ms, size, _NOW_S, ahead_s) is None


def test_one_input(data: bytes) -> None:
    """The property: each decoder returns its record or raises its own error, nothing else."""
    _check(data)
    if data:
        _check(_mutated(atheris.FuzzedDataProvider(data)))
        _check_times(atheris.FuzzedDataProvider(data))


def main() -> None:
    """Hand the command line (libFuzzer flags) to atheris and fuzz."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
