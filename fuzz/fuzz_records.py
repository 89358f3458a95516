"""atheris over the decoders of streamproc's own records: a tally or an action, or its error.

Anyone who can write to ``streamproc.tallies`` or ``streamproc.actions`` reaches these decoders;
any exception other than TallyError/ActionError would stop the windows or annotate stage, and
stop it again after every restart. An action that decodes then meets the annotator's last
check (``guarding``) against the shipped topologies and a restrictive one: it answers a
declared refusal or None, never an exception. Run:
``python fuzz/fuzz_records.py fuzz/corpus/records``.
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
