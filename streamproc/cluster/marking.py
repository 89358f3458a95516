"""Reading streamproc's marks off API objects: the decoder's verdict, reported once per object.

The decision lives in :mod:`streamproc.model.marks` (pure); this module adds what a refusal
costs an operator to notice: a WARNING once per object and reason (bounded memory) and
``streamproc_marks_refused_total{reason}``. Every reader of marks (follower, expirer,
annotator, ``status``, ``release``) reads through :func:`read`; every writer counts its writes
(and the writes it found it need not make) through :func:`patched`. :func:`sealer` reads the
key file (``--mark-key-file``) that seals and checks them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamproc.clients import metrics
from streamproc.model import marks, outcomes, seals

log = logging.getLogger("streamproc.marks")

_warned: OrderedDict[tuple[str, str, marks.Reason], None] = OrderedDict()


def read(obj: Mapping[str, Any], *, now: float, policy: marks.Policy) -> marks.Read:
    """Decode an API object's marks; a refusal is logged and counted once per object+reason."""
    meta = marks.mapping(obj.get("metadata"))
    annotations, labels = marks.mapping(meta.get("annotations")), marks.mapping(meta.get("labels"))
    # a Namespace object (scope: namespace) is its own namespace
    namespace = str(meta.get("namespace") or meta.get("name") or "")
    found = marks.decode(
        annotations,
        labels,
        namespace=namespace,
        now=now,
        policy=policy,
        subject=seals.identity(meta),
    )
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


def sealer(path: Path | None) -> seals.Sealer | None:
    """The keys of ``--mark-key-file`` (None without one); :class:`seals.BadKeys` names the fix."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = (
            f"cannot read the mark key file {path} ({reason}); mount the Secret "
            "streamproc-mark-key there, or drop --mark-key-file to write marks unsealed"
        )
        raise seals.BadKeys(msg) from None
    return seals.parse(text, source=str(path))
