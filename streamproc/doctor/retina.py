"""What streamproc needs from a Retina install, judged from the install's own objects (no I/O).

streamproc only writes ``retina.sh: observe``; whether Retina acts on it depends on how Retina
was installed. Every rule here comes from Retina's sources (microsoft/retina v1.2.6):

- the agent is a DaemonSet (``.Values.agent.name``, default ``retina-agent``) running the
  ``retina-agent`` image, configured by the ``config.yaml`` key of the ConfigMap it mounts as
  its ``config`` volume (``deploy/standard/manifests/controller/helm/retina/templates/``);
  ``RETINA_<KEY>`` variables override the file (``pkg/config/config.go``: viper, prefix
  ``retina``, AutomaticEnv);
- annotations take effect only on the standard control plane, with ``enableAnnotations`` and
  ``enablePodLevel`` true, not with ``bypassLookupIPOfInterest`` true, and not together with
  MetricsConfiguration objects (``docs/02-Installation/03-Config.md``,
  ``docs/03-Metrics/annotations.md``);
- before v1.2.0 the agent leaks filter-map entries when an annotation is removed
  (microsoft/retina#2114), so an apply/expire cycle fills the map; the map holds
  ``filterMapMaxEntries`` IPs per node (0 or unset: the eBPF default of 255;
  ``pkg/plugin/filter/filter_map_linux.go``) and the agent fails past it;
- with ``remoteContext`` the agent learns pods from RetinaEndpoints that the operator keeps
  (``cmd/standard/daemon.go``), and Captures are run by the operator; a Capture's
  ``outputConfiguration.hostPath`` is a subpath under the operator's base directory since
  v1.2.1 (microsoft/retina#2335).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from streamproc.doctor import checks
from streamproc.doctor.checks import Check

Json = dict[str, Any]
AREA = "Retina"
#: the eBPF filter map's size when filterMapMaxEntries is 0 or unset
DEFAULT_FILTER_MAP_ENTRIES = 255
MINIMUM = (1, 2, 0)
RELATIVE_HOST_PATH = (1, 2, 1)
INSTALL = (
    "helm upgrade --install retina oci://ghcr.io/microsoft/retina/charts/retina -n kube-system "
    "--set enableAnnotations=true --set enablePodLevel=true --set operator.enabled=true "
    "--set operator.enableRetinaEndpoint=true"
)
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True, slots=True)
class Agent:
    """Retina's agent DaemonSet, as far as streamproc cares."""

    namespace: str
    name: str
    image: str
    #: the ConfigMaps it mounts, in volume order
    config_maps: tuple[str, ...]
    #: ``RETINA_*`` variables set on its container (they override the config file)
    env: Mapping[str, str]
    #: the DaemonSet's labels (AKS marks the components it manages)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: the container's command and args: ``hubble-control-plane`` names the Hubble control plane
    args: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def version(self) -> tuple[int, int, int] | None:
        """The image tag's version; None for a digest, ``latest`` or anything else."""
        _, _, tag = self.image.rpartition(":")
        found = _VERSION.match(tag) if "@" not in self.image and "/" not in tag else None
        return (int(found[1]), int(found[2]), int(found[3])) if found else None


def _agent_container(daemonset: Json) -> Json | None:
    spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in spec.get("containers") or ():
        if isinstance(container, dict) and "/retina-agent" in str(container.get("image", "")):
            return container
    return None


def _windows(daemonset: Json) -> bool:
    spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    name = str((daemonset.get("metadata") or {}).get("name", ""))
    return selector.get("kubernetes.io/os") == "windows" or name.endswith("-win")


def find_agents(daemonsets: Sequence[Json]) -> list[Agent]:
    """The Linux DaemonSets that run Retina's agent image, wherever they were installed."""
    found = []
    for daemonset in daemonsets:
        container = _agent_container(daemonset)
        if container is None or _windows(daemonset):
            continue
        meta = daemonset.get("metadata") or {}
        spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
        config_maps = tuple(
            str(v["configMap"]["name"])
            for v in spec.get("volumes") or ()
            if isinstance(v, dict) and isinstance(v.get("configMap"), dict)
        )
        env = {
            str(e["name"]): str(e["value"])
            for e in container.get("env") or ()
            if isinstance(e, dict) and str(e.get("name", "")).startswith("RETINA_") and "value" in e
        }
        labels = meta.get("labels")
        found.append(
            Agent(
                str(meta.get("namespace", "")),
                str(meta.get("name", "")),
                str(container["image"]),
                config_maps,
                env,
                {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
                tuple(
                    str(a)
                    for key in ("command", "args")
                    if isinstance(container.get(key), list)
                    for a in container[key]
                ),
            )
        )
    return found


def agent_checks(agents: Sequence[Agent]) -> list[Check]:
    """The agent is installed, and recent enough not to leak filter-map entries."""
    if not agents:
        return [
            checks.fail(
                AREA,
                "agent",
                "no Retina agent DaemonSet (a container image named retina-agent) in the cluster",
                f"install Retina >= v1.2.0 (standard control plane): {INSTALL}",
            )
        ]
    agent = agents[0]
    version = agent.version
    if version is None:
        return [
            checks.warn(
                AREA,
                "agent version",
                f"{agent.where} runs {agent.image}; its version cannot be told from the image",
                "make sure it is Retina >= v1.2.0 (earlier versions leak filter-map entries "
                "when an annotation is removed, microsoft/retina#2114)",
            )
        ]
    shown = "v" + ".".join(map(str, version))
    if version < MINIMUM:
        return [
            checks.fail(
                AREA,
                "agent version",
                f"{agent.where} runs Retina {shown}: before v1.2.0 the agent leaks a filter-map "
                "entry each time an annotation is removed (microsoft/retina#2114), so "
                "streamproc's observe/expire cycle fills the map",
                "upgrade Retina to v1.2.0 or later",
            )
        ]
    return [checks.ok(AREA, "agent version", f"{agent.where} runs Retina {shown}")]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The settings of the agent's ``config.yaml`` that decide whether annotations work."""

    enable_annotations: bool
    enable_pod_level: bool
    bypass_lookup: bool
    remote_context: bool
    filter_map_max_entries: int


class ConfigUnreadable(ValueError):
    """The agent's ConfigMap does not hold a standard control plane's ``config.yaml``."""


def _flag(value: object) -> bool:
    return value is True or str(value).strip().lower() == "true"


def read_config(config_map: Json, env: Mapping[str, str]) -> AgentConfig:
    """The agent's effective settings: its ConfigMap's ``config.yaml``, then ``RETINA_*`` env."""
    data = config_map.get("data") or {}
    text = data.get("config.yaml")
    if not isinstance(text, str):
        if any(str(k).startswith("enable-hubble") for k in data):
            raise ConfigUnreadable(
                "Retina runs the Hubble control plane; retina.sh annotations only work with "
                "the standard control plane (docs/03-Metrics/annotations.md)"
            )
        raise ConfigUnreadable("it has no config.yaml key")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigUnreadable(
            f"its config.yaml is not YAML ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigUnreadable("its config.yaml is not a mapping")
    # viper matches keys case-insensitively; RETINA_<KEY> overrides the file
    settings = {str(k).lower(): v for k, v in doc.items()}
    for name, value in env.items():
        settings[name.removeprefix("RETINA_").lower()] = value
    try:
        entries = int(settings.get("filtermapmaxentries") or 0)
    except (TypeError, ValueError):
        raise ConfigUnreadable("its filterMapMaxEntries is not a number") from None
    return AgentConfig(
        enable_annotations=_flag(settings.get("enableannotations")),
        enable_pod_level=_flag(settings.get("enablepodlevel")),
        bypass_lookup=_flag(settings.get("bypasslookupipofinterest")),
        remote_context=_flag(settings.get("remotecontext")),
        filter_map_max_entries=entries or DEFAULT_FILTER_MAP_ENTRIES,
    )


def config_checks(config: AgentConfig, where: str, node_budget: int) -> list[Check]:
    """Annotations take effect, and the node budget stays inside the agent's filter map."""
    found = []
    restart = f"in ConfigMap {where}, then restart the agent (kubectl rollout restart)"
    for name, on, flag in (
        ("annotations", config.enable_annotations, "enableAnnotations"),
        ("pod-level metrics", config.enable_pod_level, "enablePodLevel"),
    ):
        if on:
            found.append(checks.ok(AREA, name, f"{flag}: true"))
        else:
            found.append(
                checks.fail(
                    AREA,
                    name,
                    f"{flag} is not true: Retina ignores retina.sh: observe",
                    f"set {flag}: true (helm --set {flag}=true) {restart}",
                )
            )
    if config.bypass_lookup:
        found.append(
            checks.fail(
                AREA,
                "IP lookup",
                "bypassLookupIPOfInterest is true: annotations do not work with it",
                f"set bypassLookupIPOfInterest: false {restart}",
            )
        )
    entries = config.filter_map_max_entries
    if node_budget <= 0:
        found.append(
            checks.warn(
                AREA,
                "node budget",
                f"--node-budget is 0 (off): more than {entries} observed pods on one node "
                "(filterMapMaxEntries) make the agent fail with 'no space left on device'",
                f"set --node-budget below {entries}",
            )
        )
    elif node_budget >= entries:
        found.append(
            checks.fail(
                AREA,
                "node budget",
                f"--node-budget {node_budget} is not below filterMapMaxEntries {entries}: "
                "a busy node fills the agent's filter map and the agent fails",
                f"set --node-budget below {entries}, or raise filterMapMaxEntries {restart}",
            )
        )
    else:
        found.append(
            checks.ok(
                AREA,
                "node budget",
                f"--node-budget {node_budget} < filterMapMaxEntries {entries}",
            )
        )
    return found


def metrics_configuration_check(names: Sequence[str] | None) -> Check:
    """No MetricsConfiguration objects: Retina does not mix them with annotations."""
    if names is None:
        return checks.ok(AREA, "MetricsConfiguration", "no MetricsConfiguration CRD installed")
    if names:
        shown = ", ".join(sorted(names)[:5])
        return checks.fail(
            AREA,
            "MetricsConfiguration",
            f"{len(names)} MetricsConfiguration object(s) in use ({shown}): Retina does not "
            "use annotations and MetricsConfiguration together",
            "delete them (kubectl delete metricsconfigurations.retina.sh --all) and let "
            "annotations choose what Retina observes",
        )
    return checks.ok(AREA, "MetricsConfiguration", "none in use")


def capture_checks(
    served: set[str] | None,
    *,
    wanted: bool,
    version: tuple[int, int, int] | None,
    host_path: bool,
) -> list[Check]:
    """The Capture CRD is there when a topology captures, and understands relative hostPaths."""
    if not wanted:
        return [checks.ok(AREA, "Capture CRD", "no topology captures; not needed")]
    if served is None or "captures" not in served:
        return [
            checks.fail(
                AREA,
                "Capture CRD",
                "a topology captures, but captures.retina.sh is not installed",
                "install Retina's CRDs (operator.installCRDs=true, the default, with "
                "operator.enabled=true), or remove capture from the topology",
            )
        ]
    found = [checks.ok(AREA, "Capture CRD", "captures.retina.sh installed")]
    if host_path and version is not None and version < RELATIVE_HOST_PATH:
        found.append(
            checks.warn(
                AREA,
                "capture hostPath",
                "a topology captures to a relative hostPath, which Retina reads as a subpath "
                "of capture.hostPathBaseDir only from v1.2.1 (microsoft/retina#2335)",
                "upgrade Retina to v1.2.1 or later",
            )
        )
    return found


def operator_check(deployments: Sequence[Json], *, needed_for: str) -> Check:
    """Retina's operator runs when the agent or a capture depends on it."""
    running = [
        d
        for d in deployments
        if any(
            "/retina-operator" in str(c.get("image", ""))
            for c in (((d.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
                "containers"
            )
            or ()
            if isinstance(c, dict)
        )
    ]
    if running:
        name = (running[0].get("metadata") or {}).get("name", "")
        return checks.ok(AREA, "operator", f"{name} runs")
    if not needed_for:
        return checks.ok(AREA, "operator", "not running; not needed (no remoteContext, no capture)")
    return checks.fail(
        AREA,
        "operator",
        f"Retina's operator is not running, and {needed_for} need it",
        "install it: helm --set operator.enabled=true --set operator.enableRetinaEndpoint=true",
    )
