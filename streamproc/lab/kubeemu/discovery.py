"""Discovery as kubectl reads it: group lists, resource lists, and aggregated discovery v2."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from streamproc.lab.kubeemu.resources import IN_ALL, RESOURCES, SHORT_NAMES, VERBS, Json

#: aggregated discovery (apidiscovery.k8s.io/v2, GA in Kubernetes 1.30): kubectl asks /api and
#: /apis for it first and needs no per-group requests when it gets it
DISCOVERY_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def wants_aggregated(accept: str) -> bool:
    """Whether an Accept header asks for aggregated discovery v2 (kubectl >= 1.30 does)."""
    for entry in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in entry.split(";"))}
        if (params.get("g"), params.get("v"), params.get("as")) == (
            "apidiscovery.k8s.io",
            "v2",
            "APIGroupDiscoveryList",
        ):
            return True
    return False


def group_list(uninstalled: AbstractSet[tuple[str, str]]) -> Json:
    """/apis: the groups served (a group whose CRDs are all uninstalled is not)."""
    groups = sorted({(g, v) for g, v, p in RESOURCES if g and (g, p) not in uninstalled})
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": g,
                "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
            }
            for g, v in groups
        ],
    }


def served(
    group: str, version: str, uninstalled: AbstractSet[tuple[str, str]]
) -> list[tuple[str, str, bool]]:
    """(plural, kind, namespaced) of the resources served in one group version."""
    return [
        (plural, kind, namespaced)
        for (g, v, plural), (kind, namespaced) in RESOURCES.items()
        if (g, v) == (group, version) and (g, plural) not in uninstalled
    ]


def resource_list(group: str, version: str, uninstalled: AbstractSet[tuple[str, str]]) -> Json:
    """/api/{version} or /apis/{group}/{version}: an APIResourceList."""
    resources = []
    for plural, kind, namespaced in served(group, version, uninstalled):
        resource: Json = {
            "name": plural,
            "singularName": kind.lower(),
            "namespaced": namespaced,
            "kind": kind,
            "verbs": VERBS,
        }
        if plural in SHORT_NAMES:
            resource["shortNames"] = list(SHORT_NAMES[plural])
        if plural in IN_ALL:
            resource["categories"] = ["all"]
        resources.append(resource)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def aggregated(*, legacy: bool, uninstalled: AbstractSet[tuple[str, str]]) -> Json:
    """/api (the core group) or /apis as one apidiscovery.k8s.io/v2 APIGroupDiscoveryList."""
    versions = sorted({(g, v) for g, v, _ in RESOURCES if (g == "") == legacy})
    items = []
    for group, version in versions:
        resources = [
            {
                "resource": plural,
                "responseKind": {"group": group, "version": version, "kind": kind},
                "scope": "Namespaced" if namespaced else "Cluster",
                "singularResource": kind.lower(),
                "verbs": VERBS,
                **({"shortNames": list(SHORT_NAMES[plural])} if plural in SHORT_NAMES else {}),
                **({"categories": ["all"]} if plural in IN_ALL else {}),
            }
            for plural, kind, namespaced in served(group, version, uninstalled)
        ]
        if resources:
            items.append(
                {
                    "metadata": {"name": group},
                    "versions": [
                        {"version": version, "resources": resources, "freshness": "Current"}
                    ],
                }
            )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }
