"""Why a record was refused: every dead-letter reason of every stage, spelled once.

The reason travels in the ``streamproc.reason`` header of the dead letter and as the ``reason``
label of ``streamproc_dead_letters_total``; dashboards and alerts match on it, so a reason is a
bounded code from this list, never free text (the detail header says the rest).
"""

from __future__ import annotations

from typing import Literal

DeadLetter = Literal[
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
    # annotate: a record on the actions topic
    "invalid-action",
    "other-cluster",
    # any stage: a record batch no client can decode (``kafka.Reader``)
    "unsupported-codec",
    "corrupt-batch",
    "undecodable-batch",
]
