"""Reading streamproc's marks off API objects: the decoder's verdict, reported once per object.

The decision lives in :mod:`streamproc.model.marks` (pure); this module adds what a refusal
costs an operator to notice: a WARNING once per object and reason (bounded memory) and
``streamproc_marks_refused_total{reason}``. Every reader of marks (follower, expirer,
annotator, ``status``, ``release``) reads through :func:`read`; every writer counts its writes
(and the writes it found it need not make) through :func:`patched`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from streamproc.clients import metrics
from streamproc.model import marks, outcomes

log = logging.getLogger("streamproc.marks")

_warned: OrderedDict[tuple[str, str, marks.Reason], None] = OrderedDict()


def read(obj: Mapping[str, Any], *, now: float, policy: marks.Policy) -> marks.Read:
    """Decode an API object's marks; a refusal is logged and counted once per object+reason."""
    meta = marks.mapping(obj.get("metadata"))
    annotations, labels = marks.mapping(meta.get("annotations")), marks.mapping(meta.get("labels"))
    # a Namespace object (scope: namespace) is its own namespace
    namespace = str(meta.get("namespace") or meta.get("name") or "")
    found = marks.decode(annotations, labels, namespace=namespace, now=now, policy=policy)
    if isinstance(found, marks.Refusal):
        _report(namespace, str(meta.get("name") or ""), found)
    return found


def _report(namespace: str, name: str, refusal: marks.Refusal) -> None:
    key = (namespace, name, refusal.reason)
    if key in _warned:
        _warned.move_to_end(key)
        return
    _warned[key] = None
    if len(_warned) > marks.MAX_WARNED:
        _warned.popitem(last=False)
    metrics.marks_refused.labels(reason=refusal.reason).inc()
    log.warning(
        "%s/%s: streamproc's marks refused (%s: %s); not followed, counted or extended%s. "
        "Fix: remove the streamproc.io/ annotations and label someone edited on it",
        namespace,
        name,
        refusal.reason,
        refusal.detail,
        ", and ended now" if refusal.labelled else "",
    )


def patched(op: outcomes.PatchOp, result: outcomes.PatchResult) -> None:
    """Count a write of marks or a capture, or why none was made (``streamproc_patches_total``)."""
    metrics.patches.labels(op=op, result=result).inc()
