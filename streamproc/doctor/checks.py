"""One finding of ``streamproc doctor``: what was checked, how it went, and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail"]

#: how a person sees each status, as ``linkerd check`` and ``cilium status`` show theirs
MARKS: dict[Status, str] = {"ok": "✔", "warn": "⚠", "fail": "✘"}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report; ``fix`` says what to do for a warning or a failure."""

    area: str
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """For ``--output json``."""
        return {
            "area": self.area,
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
        }


def ok(area: str, name: str, detail: str) -> Check:
    """A check that passed."""
    return Check(area, name, "ok", detail)


def warn(area: str, name: str, detail: str, fix: str) -> Check:
    """Works, but not as well as it should, or could not be checked."""
    return Check(area, name, "warn", detail, fix)


def fail(area: str, name: str, detail: str, fix: str) -> Check:
    """Observation will not work until this is fixed."""
    return Check(area, name, "fail", detail, fix)
