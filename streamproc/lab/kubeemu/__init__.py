"""An emulated Kubernetes API server over real HTTP, for tests and the lab.

No real API server can run on a developer laptop without a container runtime, and mocking the
client in-process would test the mock. This serves the subset of the API that streamproc and
``kubectl get/describe/annotate`` use, on loopback, so the real ``kubernetes_asyncio`` client
(or kubectl) reaches it through an ordinary kubeconfig:

- discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}/{version}``, ``/version``), with
  short names and the ``all`` category, and aggregated (apidiscovery.k8s.io/v2) when asked;
- pods, namespaces, events, configmaps, deployments, replicasets, statefulsets, daemonsets, jobs,
  cronjobs, nodes, services, customresourcedefinitions, Retina's captures and
  metricsconfigurations, and ACNS's (cluster-scoped) containernetworkmetrics: list
  (``labelSelector``,
  ``fieldSelector`` on the fields the API server allows, 400 for others), get, create, put,
  delete;
- ``kubectl get``'s Tables (``Accept: ...;as=Table;v=v1;g=meta.k8s.io``) for pods, deployments,
  replicasets, statefulsets, daemonsets, events, namespaces and configmaps, in lists, gets and
  watches (``tables.py``);
- RBAC as a set of denied (group, resource, verb): such requests get 403, and
  SelfSubjectAccessReviews answer from the same set; a CRD can be uninstalled (its resources
  leave discovery and answer 404), to play clusters that lack Retina's;
- patch: JSON merge patch (RFC 7386, null deletes), strategic merge (as merge for maps) and JSON
  patch (RFC 6902);
- ``resourceVersion`` on every object, 409 when a write (or a DELETE's ``preconditions``)
  names a stale one, 404 for missing objects;
- paged lists (``limit``, ``continue``; every page carries the first page's resourceVersion)
- watch with label filtering, resume from a ``resourceVersion``, ``410 Gone`` when too old,
  bookmarks and ``timeoutSeconds``;
- faults injected per request that fail *before* any state changes (status, ``Retry-After``,
  delay), and a request log with timestamps for assertions on rate and order;
- a ``Date`` header on every answer, from a clock ``clock_offset_s`` away from this host's, to
  play an API server whose clock differs from its clients'.

It runs in its own thread and event loop, so synchronous tests and subprocesses can use it alike.

The package: ``resources`` (what is served, merge patch, RBAC verbs), ``selectors`` (label and
field selectors), ``discovery``, ``faults`` (injected faults, the request log), ``store`` (objects,
resourceVersions, watch history), ``handlers`` (HTTP routing, RBAC, lists, items, watches) and
``server`` (``KubeEmulator``: serving in a thread, kubeconfig, ``python -m
streamproc.lab.kubeemu``). Table printers for kubectl live in ``streamproc.lab.tables``.
"""

from streamproc.lab.kubeemu.faults import Fault, LoggedRequest
from streamproc.lab.kubeemu.resources import RESOURCES, Json, merge_patch
from streamproc.lab.kubeemu.server import KubeEmulator, main

__all__ = ["RESOURCES", "Fault", "Json", "KubeEmulator", "LoggedRequest", "main", "merge_patch"]
