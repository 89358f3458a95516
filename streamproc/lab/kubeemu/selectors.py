"""Label and field selectors, parsed and matched as the API server does."""

from __future__ import annotations

import re
from typing import Any

from streamproc.lab.kubeemu.resources import Json


def label_requirements(selector: str) -> list[tuple[str, str, set[str]]]:
    """Parse equality- and set-based label selectors into (key, op, values)."""
    reqs: list[tuple[str, str, set[str]]] = []
    for part in re.findall(r"(?:[^,(]|\([^)]*\))+", selector):
        term = part.strip()
        if not term:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            reqs.append((m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)", term):
            reqs.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
        elif m := re.fullmatch(r"!([\w./-]+)", term):
            reqs.append((m[1], "!", set()))
        elif re.fullmatch(r"[\w./-]+", term):
            reqs.append((term, "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return reqs


def labels_match(labels: dict[str, str], reqs: list[tuple[str, str, set[str]]]) -> bool:
    """Whether labels satisfy every parsed requirement (AND, as the API server does)."""
    for key, op, values in reqs:
        present = key in labels
        if op in ("=", "in") and (not present or labels[key] not in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


#: the field labels the API server lets a list select on, beyond metadata.name/namespace
#: (kubernetes pkg/registry/core/{event,pod}/strategy.go ``ToSelectableFields``); ``kubectl
#: describe`` finds an object's Events by ``involvedObject.{name,namespace,uid}`` (and ``kind``)
_SELECTABLE: dict[str, dict[str, tuple[str, ...]]] = {
    "Event": {
        "involvedObject.kind": ("involvedObject", "kind"),
        "involvedObject.namespace": ("involvedObject", "namespace"),
        "involvedObject.name": ("involvedObject", "name"),
        "involvedObject.uid": ("involvedObject", "uid"),
        "involvedObject.apiVersion": ("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": ("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": ("involvedObject", "fieldPath"),
        "reason": ("reason",),
        "reportingComponent": ("reportingComponent",),
        "source": ("source", "component"),
        "type": ("type",),
    },
    "Pod": {
        "spec.nodeName": ("spec", "nodeName"),
        "spec.restartPolicy": ("spec", "restartPolicy"),
        "spec.schedulerName": ("spec", "schedulerName"),
        "spec.serviceAccountName": ("spec", "serviceAccountName"),
        "spec.hostNetwork": ("spec", "hostNetwork"),
        "status.phase": ("status", "phase"),
        "status.podIP": ("status", "podIP"),
        "status.nominatedNodeName": ("status", "nominatedNodeName"),
    },
}


def field_requirements(kind: str, selector: str) -> list[tuple[tuple[str, ...], bool, str]]:
    """Parse a field selector into (path, equal, value); 400 for a field the kind lacks."""
    fields = {
        "metadata.name": ("metadata", "name"),
        "metadata.namespace": ("metadata", "namespace"),
        **_SELECTABLE.get(kind, {}),
    }
    reqs = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        if m[1] not in fields:
            raise ValueError(f"field label not supported: {m[1]}")
        reqs.append((fields[m[1]], m[2] != "!=", m[3]))
    return reqs


def _field_value(obj: Json, path: tuple[str, ...]) -> str:
    value: Any = obj
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def fields_match(obj: Json, reqs: list[tuple[tuple[str, ...], bool, str]]) -> bool:
    """Whether an object satisfies every parsed field requirement."""
    return all((_field_value(obj, path) == value) == equal for path, equal, value in reqs)
