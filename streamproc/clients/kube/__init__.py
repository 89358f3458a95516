"""Kubernetes access: the only importer of kubernetes_asyncio, behind one small class.

Stages see plain dicts (the API's JSON) and streamproc's own errors, never the client's types, so
the client can be swapped for the emulator at the HTTP level (tests and the lab point a kubeconfig
at it) and nothing else in the code knows. What lives where:

- ``objects``: the shapes spoken (``Json``, ``ObjectRef``, ``MetadataPatch``, ``controller_of``);
- ``errors``: streamproc's errors wrapping the client's (NotFound, Conflict, Forbidden, Gone,
  Unavailable, ConfigError) and ``explain``, their plain line for a person;
- ``config``: kubeconfig or in-cluster credentials, the proxy, ``Limits``;
- ``client``: ``Kube``, the rate-limited, retried connection the stages use, and ``lines_of``;
- ``inspecting``: ``Inspector``, the reads only ``streamproc doctor`` makes.

Callers import the package (``from streamproc.clients import kube``; ``kube.Kube``); the names
below are its public face.
"""

from streamproc.clients import throttling
from streamproc.clients.kube.client import EVENT_BACKLOG, MERGE_PATCH, Kube, lines_of
from streamproc.clients.kube.config import Limits
from streamproc.clients.kube.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    Gone,
    KubeError,
    NotFound,
    Unavailable,
    explain,
)
from streamproc.clients.kube.inspecting import Inspector
from streamproc.clients.kube.objects import Json, MetadataPatch, ObjectRef, controller_of

#: spend the API budget in a lane for the requests made within (``throttling``)
lane = throttling.lane

__all__ = [
    "EVENT_BACKLOG",
    "MERGE_PATCH",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "Gone",
    "Inspector",
    "Json",
    "Kube",
    "KubeError",
    "Limits",
    "MetadataPatch",
    "NotFound",
    "ObjectRef",
    "Unavailable",
    "controller_of",
    "explain",
    "lane",
    "lines_of",
]
