"""The reads only ``streamproc doctor`` makes (never a write): access reviews, Retina's setup.

Kept apart from ``Kube`` so the class the stages use stays the hot path alone; an ``Inspector``
borrows a connection's request path (its rate limit, retries and errors).
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from streamproc.clients.kube.client import Kube
from streamproc.clients.kube.errors import NotFound
from streamproc.clients.kube.objects import Json


class Inspector:
    """The doctor's reads over one ``Kube`` connection."""

    def __init__(self, kube: Kube) -> None:
        # the package's own connection: its private request path is shared on purpose
        self._call = kube._call  # noqa: SLF001
        self._api = kube._api  # noqa: SLF001
        self._timeout = kube._timeout  # noqa: SLF001
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        self._authorization = client.AuthorizationV1Api(self._api)

    async def can_i(self, group: str, resource: str, verb: str) -> tuple[bool, str]:
        """Whether the identity in use may ``verb`` ``resource`` in every namespace, and why not.

        A SelfSubjectAccessReview: the API server answers for its own authorizers (RBAC,
        webhooks), which reading the Roles could not.
        """
        body: Any = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": verb}},
        }
        doc = await self._call(
            "create",
            f"access review {verb} {resource}",
            lambda: self._authorization.create_self_subject_access_review(
                body, _preload_content=False, _request_timeout=self._timeout
            ),
        )
        status = doc.get("status") or {}
        return status.get("allowed") is True, str(status.get("reason") or "")

    async def list_daemonsets(self) -> list[Json]:
        """Every DaemonSet in the cluster (Retina's agent is one, wherever it was installed)."""
        doc = await self._call(
            "list",
            "daemonsets",
            lambda: self._apps.list_daemon_set_for_all_namespaces(
                _preload_content=False, _request_timeout=self._timeout
            ),
        )
        return list(doc.get("items") or [])

    async def list_deployments(self, namespace: str) -> list[Json]:
        """The Deployments of one namespace."""
        doc = await self._call(
            "list",
            f"deployments in {namespace}",
            lambda: self._apps.list_namespaced_deployment(
                namespace, _preload_content=False, _request_timeout=self._timeout
            ),
        )
        return list(doc.get("items") or [])

    async def get_config_map(self, namespace: str, name: str) -> Json:
        """One ConfigMap."""
        return await self._call(
            "get",
            f"configmap {namespace}/{name}",
            lambda: self._core.read_namespaced_config_map(
                name, namespace, _preload_content=False, _request_timeout=self._timeout
            ),
        )

    async def list_nodes(self) -> list[Json]:
        """Every Node (their labels tell the platform: AKS, its dataplane)."""
        doc = await self._call(
            "list",
            "nodes",
            lambda: self._core.list_node(_preload_content=False, _request_timeout=self._timeout),
        )
        return list(doc.get("items") or [])

    async def get_service(self, namespace: str, name: str) -> Json:
        """One Service."""
        return await self._call(
            "get",
            f"service {namespace}/{name}",
            lambda: self._core.read_namespaced_service(
                name, namespace, _preload_content=False, _request_timeout=self._timeout
            ),
        )

    async def served_resources(self, group: str, version: str) -> set[str] | None:
        """The resources discovery lists for ``group/version``; None when it is not served.

        Discovery is open to every authenticated identity, so this tells whether a CRD is
        installed without the right to read CustomResourceDefinitions.
        """
        try:
            doc = await self._call(
                "get",
                f"discovery {group}/{version}",
                lambda: self._api.call_api(
                    f"/apis/{group}/{version}",
                    "GET",
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=self._timeout,
                ),
            )
        except NotFound:
            return None
        return {str(r.get("name")) for r in doc.get("resources") or () if isinstance(r, dict)}

    async def list_cluster_objects(self, group: str, version: str, plural: str) -> list[Json]:
        """Cluster-scoped custom objects (Retina's MetricsConfigurations)."""
        doc = await self._call(
            "list",
            f"{plural}.{group}",
            lambda: self._custom.list_cluster_custom_object(
                group, version, plural, _preload_content=False, _request_timeout=self._timeout
            ),
        )
        return list(doc.get("items") or [])
