"""streamproc's own Kubernetes errors, wrapping the HTTP client's, and their plain lines.

Callers catch these, never the client's exceptions (as kopf wraps its client's in its own
classes): NotFound, Conflict and Forbidden for the caller to decide, Unavailable worth retrying.
"""

from __future__ import annotations

from collections.abc import Mapping


class KubeError(Exception):
    """Any failure talking to the API server."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    """The object does not exist (a pod deleted between list and patch)."""


class Conflict(KubeError):
    """Stale resourceVersion: re-read and re-apply."""


class Forbidden(KubeError):
    """RBAC refuses the request; retrying will not help."""


class Gone(KubeError):
    """A watch's resourceVersion is too old (410): list again, then watch from there."""


class ConfigError(KubeError):
    """No usable credentials: no kubeconfig, a broken one, and not running in a pod."""


class Unavailable(KubeError):
    """The API server is unreachable, overloaded or failing; worth retrying later."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float = 0) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


def translate(status: int, reason: str, headers: Mapping[str, str] | None, what: str) -> KubeError:
    """Streamproc's own error for an HTTP status the API server answered."""
    if status == 404:
        return NotFound(f"{what}: not found", status=404)
    if status == 409:
        return Conflict(f"{what}: conflict", status=409)
    if status == 403:
        return Forbidden(f"{what}: forbidden ({reason})", status=403)
    if status == 429 or status >= 500:
        retry_after = 0.0
        hint = (headers or {}).get("Retry-After", "")
        if hint.isdigit():
            retry_after = float(hint)
        return Unavailable(f"{what}: HTTP {status}", status=status, retry_after=retry_after)
    return KubeError(f"{what}: HTTP {status} {reason}", status=status)


def explain(exc: KubeError) -> str:
    """One line for a person: what failed and what to do about it."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, Forbidden):
        return (
            f"the Kubernetes API server refused: {exc}; grant streamproc's RBAC "
            "(k8s/rbac.yaml, docs/deploying.md) to the identity in your kubeconfig"
        )
    if isinstance(exc, Unavailable):
        return (
            f"cannot reach the Kubernetes API server: {exc}; check that the cluster is up and "
            "that the kubeconfig's server address is right"
        )
    return f"the Kubernetes API server answered: {exc}"
