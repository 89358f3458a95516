"""Names, keys and limits that streamproc shares with the cluster and with itself.

Everything that ends up written on a Kubernetes object is spelled here once, so that the
annotator that writes it and the expirer that removes it can never disagree. Kubernetes limits
annotation and label keys to an optional DNS-subdomain prefix (<= 253 chars) and a name
(<= 63 chars); namespace names are DNS-1123 labels and pod names DNS-1123 subdomains. Input from
Kafka is untrusted, so every name is checked here before it reaches a URL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

PREFIX = "streamproc.io"

#: label that marks every pod streamproc manages, so the expirer can list exactly those.
OBSERVED_LABEL = f"{PREFIX}/observed"
#: when the observation ends (RFC 3339, UTC).
EXPIRES_AT = f"{PREFIX}/expires-at"
#: which topology opened the observation.
TOPOLOGY = f"{PREFIX}/topology"
#: the rule that fired first in the window that opened or last extended the observation.
RULE = f"{PREFIX}/rule"
#: id of the last action applied; makes a replayed action a no-op.
ACTION_ID = f"{PREFIX}/action"
#: comma-separated annotation keys that streamproc itself added (and so may remove).
OWNED_KEYS = f"{PREFIX}/owned-keys"
#: the escalation level of the observation ("3/4"), only for topologies with a ladder.
LEVEL = f"{PREFIX}/level"
#: when the observation of this object opened (RFC 3339, UTC); kept on extension: the start of
#: the range its network evidence is read over (docs/evidence.md)
OBSERVED_SINCE = f"{PREFIX}/observed-since"
#: the Hubble metrics ("dns,flow") the observation gets through ACNS's ContainerNetworkMetric,
#: only on observations through the ``acns-metric-filters`` backend: every annotate process
#: projects the filters from it, whatever topologies it loaded (docs/architecture.md)
METRIC_FILTERS = f"{PREFIX}/metric-filters"
#: HMAC of the object's identity and the marks above, written only with ``--mark-key-file``:
#: tells streamproc's marks from a tenant's exact copy of them (``model.seals``)
SEAL = f"{PREFIX}/seal"

BOOKKEEPING_KEYS = (
    EXPIRES_AT,
    TOPOLOGY,
    RULE,
    ACTION_ID,
    OWNED_KEYS,
    LEVEL,
    OBSERVED_SINCE,
    METRIC_FILTERS,
    SEAL,
)

#: namespaces never observed unless a topology lists them in ``include`` explicitly, whatever
#: its ``exclude`` says: the control plane's, and streamproc's own (k8s/ deploys it there).
PROTECTED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "streamproc")

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def is_dns1123_label(value: str) -> bool:
    """Namespace names: lower-case alphanumerics and '-', at most 63 characters."""
    return len(value) <= 63 and _DNS1123_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    """Object names such as pods: dot-separated DNS labels, at most 253 characters."""
    return len(value) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(value) is not None


def is_annotation_key(key: str) -> bool:
    """Kubernetes' qualified-name rule for annotation and label keys."""
    prefix, _, name = key.rpartition("/")
    if prefix and not is_dns1123_subdomain(prefix):
        return False
    return 0 < len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name) is not None


def format_time(epoch_seconds: float) -> str:
    """RFC 3339 in UTC with a 'Z', second precision: what ``expires-at`` holds."""
    return datetime.fromtimestamp(int(epoch_seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> float | None:
    """Read an RFC 3339 timestamp back; None when it is not one (someone edited it by hand)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
