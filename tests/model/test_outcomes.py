"""The outcome codes: one list in code, and the same list in docs/operating.md."""

import re
from pathlib import Path

from streamproc.model import outcomes

OPERATING = Path(__file__).resolve().parents[2] / "docs" / "operating.md"


def _documented_results() -> list[str]:
    """The codes docs/operating.md lists as audit results (its "(result ...)" passage)."""
    text = OPERATING.read_text(encoding="utf-8")
    start = text.index("to `streamproc.audit` (result ")
    passage = text[start : text.index("topology, rule, a sample of", start)]
    return re.findall(r"`([a-z]+(?:-[a-z]+)*)`", passage.removeprefix("to `streamproc.audit`"))


def test_the_operating_guide_lists_every_audit_result_and_no_other() -> None:
    """Every code of the Outcome Literal is documented, and the doc names nothing else."""
    documented = _documented_results()
    assert len(documented) == len(set(documented)), "a result is listed twice"
    assert set(documented) == set(outcomes.OUTCOMES)


def test_the_outcome_lists_flatten_unions_of_literals() -> None:
    """Reading a union of Literals yields its codes, refusals and captures included."""
    assert "scope-mismatch" in outcomes.OUTCOMES
    assert "capture-exists" in outcomes.OUTCOMES
    assert len(outcomes.OUTCOMES) == len(set(outcomes.OUTCOMES))
    assert outcomes.values(outcomes.Handled)[-2:] == ("duplicate", "retries-exhausted")


def test_every_capture_result_has_its_audit_outcome() -> None:
    """A capture's result maps onto an audit outcome, so its record is never untyped."""
    for result in outcomes.values(outcomes.CaptureResult):
        assert outcomes.capture_outcome(result) == f"capture-{result}"  # type: ignore[arg-type]
