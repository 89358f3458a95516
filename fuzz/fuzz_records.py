"""atheris over the decoders of streamproc's own records: a tally or an action, or its error.

Anyone who can write to ``streamproc.tallies`` or ``streamproc.actions`` reaches these decoders;
any exception other than TallyError/ActionError would stop the windows or annotate stage, and
stop it again after every restart. Run: ``python fuzz/fuzz_records.py fuzz/corpus/records``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import atheris
import orjson
from values import json_value

with atheris.instrument_imports():
    from streamproc.model.actions import Action, ActionError
    from streamproc.model.tallies import Tally, TallyError

CORPUS = Path(__file__).resolve().parent / "corpus" / "records"
#: a valid record of each kind; the structured half of the fuzzer mutates their fields
TEMPLATES: list[dict[str, Any]] = [
    orjson.loads((CORPUS / name).read_bytes()) for name in ("tally.json", "action.json")
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
    with contextlib.suppress(ActionError):
        Action.decode(raw)


def test_one_input(data: bytes) -> None:
    """The property: each decoder returns its record or raises its own error, nothing else."""
    _check(data)
    if data:
        _check(_mutated(atheris.FuzzedDataProvider(data)))


def main() -> None:
    """Hand the command line (libFuzzer flags) to atheris and fuzz."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
