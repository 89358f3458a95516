"""The seal on streamproc's marks: an HMAC that tells its own marks from a tenant's exact copy.

A tenant who may edit its pods may copy the marks streamproc wrote on one pod onto another of
its own, well-formed and within policy, and so hold ``maxObservations`` slots and node budget
without a detection, renewing the copy forever. With a key (``--mark-key-file``) every write of
marks also writes ``streamproc.io/seal``: HMAC-SHA256 over a versioned serialization of the
object's identity (namespace, name, ``metadata.uid``: a copy onto another object, or onto a
recreated one of the same name, fails) and every mark the decoder trusts (a changed expiry,
level or owned key fails). The key never leaves streamproc, so a tenant can replay only the
very marks streamproc wrote on that very object, whose expiry is sealed too.

Keys: the first signs, every one verifies, so a key is rotated in three rollouts: the new one
added second, then moved first, then the old one dropped once the longest TTL has passed
(docs/deploying.md; replicas read the file when they start). Pure: the file is read by
``cluster.marking.sealer``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from streamproc.model import conventions

#: the serialization's version, its first element: a later one never verifies as this one
VERSION = "v1"
#: the shortest key accepted, in bytes of text (``openssl rand -hex 32`` gives 64)
MIN_KEY_BYTES = 32
#: the most keys a file may hold (one signing, the rest verifying during a rotation)
MAX_KEYS = 16
#: the marks sealed: every bookkeeping mark but the seal itself, in this order
SEALED = tuple(k for k in conventions.BOOKKEEPING_KEYS if k != conventions.SEAL)

#: the object a seal is bound to: (namespace, name, metadata.uid); a Namespace's namespace is ""
Identity = tuple[str, str, str]


class BadKeys(ValueError):
    """A key file streamproc cannot sign with: its message is one line, cause and fix."""


def identity(meta: Mapping[str, object]) -> Identity:
    """The identity of an object, from its ``metadata`` as the API returns it."""
    return str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(meta.get("uid") or "")


def canonical(subject: Identity, annotations: Mapping[str, object]) -> bytes:
    """What is sealed: a JSON array, so no two different inputs serialize alike.

    An absent mark is ``null``, distinct from every value (the empty string included).
    """
    values = [v if isinstance(v := annotations.get(k), str) else None for k in SEALED]
    document = [VERSION, *subject, values]
    return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals with the first key, verifies with any."""

    keys: tuple[bytes, ...] = field(repr=False)  # never in a log line or a traceback

    def seal(self, subject: Identity, annotations: Mapping[str, object]) -> str:
        """The seal of these marks on this object: base64url HMAC-SHA256, no padding."""
        return _mac(self.keys[0], canonical(subject, annotations))

    def verifies(self, subject: Identity, annotations: Mapping[str, object], seal: str) -> bool:
        """Whether ``seal`` is one of the keys' seal of these marks on this object."""
        message = canonical(subject, annotations)
        given = seal.encode("ascii", "replace")
        # every key is tried, so the time taken does not say which one matched
        found = [hmac.compare_digest(_mac(key, message).encode(), given) for key in self.keys]
        return any(found)


def _mac(key: bytes, message: bytes) -> str:
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def parse(text: str, *, source: str) -> Sealer:
    """The keys of a key file's text, one per line (blank lines ignored); ``source`` names it."""
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key:
            continue
        if len(key.encode()) < MIN_KEY_BYTES:
            msg = (
                f"{source}:{number}: a mark key must be at least {MIN_KEY_BYTES} bytes; "
                "make one with `openssl rand -hex 32`"
            )
            raise BadKeys(msg)
        keys.append(key.encode())
    if not keys:
        msg = f"{source} holds no mark key; write one with `openssl rand -hex 32 > {source}`"
        raise BadKeys(msg)
    if len(keys) > MAX_KEYS:
        msg = f"{source} holds {len(keys)} mark keys, at most {MAX_KEYS}; drop retired ones"
        raise BadKeys(msg)
    return Sealer(tuple(keys))
