"""atheris over the topology loader: any text gives a Topology or a TopologyError naming the file.

Run: ``python fuzz/fuzz_topologies.py -atheris_runs=200000 fuzz/corpus/topologies``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import atheris
import yaml
from values import json_value

with atheris.instrument_imports():
    from streamproc.model import topologies

SOURCE = Path("fuzzed.yaml")
#: the shipped topology; the structured half of the fuzzer replaces values anywhere in it.
TEMPLATE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "topologies/retina-observe.yaml").read_text()
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [prefix] + [p for k, v in node.items() for p in _paths(v, (*prefix, k))]
    if isinstance(node, list):
        return [prefix] + [p for i, v in enumerate(node) for p in _paths(v, (*prefix, i))]
    return [prefix]


PATHS = [p for p in _paths(TEMPLATE) if p]


def _mutated(fdp: atheris.FuzzedDataProvider) -> str:
    doc = yaml.safe_load(yaml.safe_dump(TEMPLATE))
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        path = PATHS[fdp.ConsumeIntInRange(0, len(PATHS) - 1)]
        parent = doc
        for step in path[:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                return yaml.safe_dump(doc)
        try:
            parent[path[-1]] = json_value(fdp)
        except (IndexError, TypeError):
            return yaml.safe_dump(doc)
    return yaml.safe_dump(doc)


def _check(text: str) -> None:
    try:
        topologies.load_text(text, SOURCE)
    except topologies.TopologyError as exc:
        if not str(exc).startswith(str(SOURCE)):
            raise AssertionError(f"error does not name the file: {exc}") from exc


def test_one_input(data: bytes) -> None:
    """The property: load_text() returns or raises TopologyError, which names the file.

    Raw text exercises the YAML layer; a mutated real topology reaches every field's checks.
    """
    _check(atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data)))
    if data:
        _check(_mutated(atheris.FuzzedDataProvider(data)))


def main() -> None:
    """Hand the command line (libFuzzer flags) to atheris and fuzz."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
