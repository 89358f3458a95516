"""A JSON value of any type from the fuzzer's bytes, shared by the structured fuzzers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import atheris


def json_value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """None, a bool, an int, a float, a string, a list, an object, or ``<NA>`` (Falco's)."""
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind == 4 or depth > 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    if kind == 5:
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 6:
        keys = [fdp.ConsumeUnicodeNoSurrogates(8) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        return {k: json_value(fdp, depth + 1) for k in keys}
    return "<NA>"
