"""The shapes streamproc's Kubernetes access speaks in: raw JSON, object references, patches.

Nothing here talks to the API server, so the stages' types stay free of the client's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

Json = dict[str, Any]


class ObjectRef(NamedTuple):
    """What carries Retina's observation: a pod, or the Namespace object (``scope: namespace``).

    Retina honours ``retina.sh: observe`` on both (docs/03-Metrics/annotations.md, v1.2.6), so
    every write, read, schedule and release names which one it means.
    """

    kind: Literal["Pod", "Namespace"]
    #: the pod's namespace; for a Namespace object, its own name
    namespace: str
    name: str

    @classmethod
    def pod(cls, namespace: str, name: str) -> ObjectRef:
        """A pod."""
        return cls("Pod", namespace, name)

    @classmethod
    def namespace_object(cls, name: str) -> ObjectRef:
        """The Namespace object called ``name``."""
        return cls("Namespace", name, name)

    @classmethod
    def of(cls, obj: Json) -> ObjectRef:
        """The reference of an object the API server returned (a pod unless it says Namespace)."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        if obj.get("kind") == "Namespace":
            return cls.namespace_object(name)
        return cls.pod(str(meta.get("namespace") or ""), name)

    def __str__(self) -> str:
        if self.kind == "Namespace":
            return f"namespace {self.name}"
        return f"pod {self.namespace}/{self.name}"


class MetadataPatch(Protocol):
    """A merge patch of an object's metadata (``patches.Patch`` is one); None values delete."""

    @property
    def annotations(self) -> Mapping[str, str | None]:
        """Annotations to set or (None) remove."""

    @property
    def labels(self) -> Mapping[str, str | None]:
        """Labels to set or (None) remove."""

    @property
    def resource_version(self) -> str | None:
        """The version it was computed from; the write is refused (409) if it moved on."""


def controller_of(obj: Json) -> tuple[str, str] | None:
    """The (kind, name) of the owner reference marked ``controller: true``, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") and ref.get("name"):
            return str(ref["kind"]), str(ref["name"])
    return None
