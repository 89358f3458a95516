"""What came of an action, an expiry or a release: every outcome code, spelled once.

An outcome is the ``result`` of an audit record on ``streamproc.audit`` and the ``result``
label of ``streamproc_actions_handled_total``; dashboards, alerts and the simulator match on
it, so it is a bounded code from these lists, never free text. docs/operating.md lists every
audit result (tests/model/test_outcomes.py holds the two together). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from streamproc.reasons import ActionRefusal

#: how one object's observation went when the annotator wrote (or did not write) it
PodOutcome = Literal["opened", "extended", "not-due", "unchanged", "conflict", "not-found"]

#: why nothing is written for an action at all, decided before any request
Skipped = Literal["expired-before-apply", "dry-run"]

#: what applying one action came to (``applying``): a refusal of the action by the annotator's
#: own topology (``guarding``) is one too
Applied = (
    Literal[
        "applied",
        "extended",
        "extension-not-due",
        "already-applied",
        "no-pods",
        "refused-cap",
        "refused-node-budget",
        "forbidden",
        "failed",
    ]
    | Skipped
    | ActionRefusal
)

#: the ``result`` label of ``streamproc_actions_handled_total``: what applying came to, or why
#: an action was not applied (a re-delivery within its batch; writes that kept failing)
Handled = Applied | Literal["duplicate", "retries-exhausted"]

#: what a window strong enough for a capture came to (``capturing``)
CaptureResult = Literal["created", "no-selector", "exists"]

#: the labels of ``streamproc_patches_total``: which write (``op``) and what came of it; a
#: capture counts its own results (:data:`CaptureResult`)
PatchOp = Literal["observe", "follow", "release", "capture"]
PatchResult = (
    Literal["ok", "unchanged", "not-due", "conflict", "not-found", "error"] | CaptureResult
)

#: what releasing an object found and did (``cluster.releasing``): ``elsewhere``, another
#: replica's to release now; ``unmarked``, it carries nothing of streamproc's
Released = Literal["released", "extended", "gone", "elsewhere", "unmarked"]

#: what a write of ACNS's ContainerNetworkMetric came to (``cluster.metric_filters``), the
#: ``result`` label of ``streamproc_metric_filters_writes_total``: the singleton ``created``,
#: ``replaced`` (PUT), ``deleted`` (streamproc's own, once empty), ``unchanged`` (already the
#: projection), ``conflict`` (409: re-read and re-applied), ``dry-run``, ``malformed`` (a spec
#: streamproc cannot add to without guessing: left alone)
FilterWrite = Literal[
    "created", "replaced", "deleted", "unchanged", "conflict", "dry-run", "malformed"
]

#: why an observation's network evidence is missing (``model.evidence``): Prometheus did not
#: answer (``unreachable``), not in time (``timeout``), with an error status (``http-error``),
#: or not with a query result (``bad-answer``); it holds no Retina or Hubble series of the pods
#: (``no-series``); the marks said no start (``no-range``: refused marks); too much evidence work
#: was waiting already (``overloaded``); the process stopped first (``shutdown``)
EvidenceMissing = Literal[
    "unreachable",
    "timeout",
    "http-error",
    "bad-answer",
    "no-series",
    "no-range",
    "overloaded",
    "shutdown",
]
#: the ``result`` label of ``streamproc_evidence_total``
EvidenceResult = Literal["found"] | EvidenceMissing

#: the ``result`` of every audit record: an action's outcome, an expiry, a release by hand
#: (``streamproc release``), a workload's new pod followed, keys a person changed left to them
#: (``yielded``), a capture
Outcome = (
    Applied
    | Literal[
        "expired",
        "released",
        "followed",
        "yielded",
        "capture-created",
        "capture-no-selector",
        "capture-exists",
    ]
)


def values(literal: Any) -> tuple[str, ...]:
    """Every code of a Literal, or of a union of Literals (``get_args`` gives only the parts)."""
    return tuple(
        code
        for arg in get_args(literal)
        for code in (values(arg) if get_args(arg) and not isinstance(arg, str) else (arg,))
    )


#: every audit result, in the order above
OUTCOMES: tuple[str, ...] = values(Outcome)


def capture_outcome(result: CaptureResult) -> Outcome:
    """The audit result of a capture (``capture-created``, ...)."""
    outcomes: dict[CaptureResult, Outcome] = {
        "created": "capture-created",
        "no-selector": "capture-no-selector",
        "exists": "capture-exists",
    }
    return outcomes[result]
