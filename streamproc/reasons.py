"""Why a record was refused: every dead-letter reason of every stage, spelled once.

The reason travels in the ``streamproc.reason`` header of the dead letter and as the ``reason``
label of ``streamproc_dead_letters_total``; dashboards and alerts match on it, so a reason is a
bounded code from this list, never free text (the detail header says the rest).
"""

from __future__ import annotations

from typing import Literal

#: annotate: why the annotator refuses an action it decoded, checked against its own copy of
#: the topology before any request (``model.guarding``)
ActionRefusal = Literal[
    "unknown-topology",
    "protected-namespace",
    "excluded-namespace",
    "namespace-not-included",
    "cluster-not-matched",
    "rule-not-matched",
    "priority-not-matched",
    "scope-mismatch",
]

DeadLetter = (
    Literal[
        # ingest: a detection that cannot be used (``events.parse``)
        "too-large",
        "invalid-json",
        "not-an-object",
        "missing-rule",
        "invalid-priority",
        "invalid-output-fields",
        "too-many-fields",
        "invalid-tags",
        "invalid-namespace",
        "invalid-pod-name",
        "invalid-time",
        # ingest and windows: a record for a cluster the deployment does not route (``fleets``)
        "invalid-cluster",
        "unknown-cluster",
        # windows: a record on the tallies topic
        "invalid-tally",
        "unknown-topology",
        # windows: a tally whose times Faust cannot window (``clocks.tally_time_refused``)
        "invalid-timestamp",
        # annotate: a record on the actions topic
        "invalid-action",
        "other-cluster",
        # annotate: an action whose writes kept failing while other workloads' landed
        "retries-exhausted",
        # any stage: a record batch no client can decode (``kafka.Reader``)
        "unsupported-codec",
        "corrupt-batch",
        "undecodable-batch",
    ]
    | ActionRefusal
)
