"""Doctor's check of the seal on marks: whether a tenant's copy of them would be told apart.

Without ``--mark-key-file`` the annotator works, but marks a tenant writes in streamproc's exact
form on its own pods are believed (docs/reliability.md "Marks on pods"): a warning. With one,
the file must hold keys the annotator accepts, else it will not start: a failure.
"""

from __future__ import annotations

from streamproc.cluster import marking
from streamproc.doctor import checks
from streamproc.doctor.checks import Check
from streamproc.model import seals
from streamproc.settings import Settings

AREA = "Marks"


def seal_check(settings: Settings) -> Check:
    """✔ sealed with N keys, ⚠ not sealed, or ✘ the key file the annotator would refuse."""
    try:
        sealer = marking.sealer(settings.mark_key_file)
    except seals.BadKeys as exc:
        return checks.fail(AREA, "seal", str(exc), "fix --mark-key-file; the annotator refuses it")
    if sealer is None:
        return checks.warn(
            AREA,
            "seal",
            "marks are not sealed: no --mark-key-file given here (an annotator without one lets "
            "a tenant copy streamproc's marks onto its own pods)",
            "give the annotator and this command --mark-key-file, see docs/reliability.md",
        )
    count = len(sealer.keys)
    return checks.ok(
        AREA,
        "seal",
        f"marks are sealed: {settings.mark_key_file} readable, {count} key{'s' * (count > 1)}",
    )
