"""Where the credentials come from (kubeconfig, in-cluster), the proxy, and request limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import yaml
from kubernetes_asyncio import client, config

from streamproc.clients.kube.errors import ConfigError
from streamproc.settings import DEFAULTS, Settings


def _kubeconfig_named(kubeconfig: str | None) -> tuple[str, bool]:
    """The kubeconfig that applies (given, KUBECONFIG or the default) and whether it exists."""
    named = kubeconfig or os.environ.get("KUBECONFIG") or ""
    files = [Path(f).expanduser() for f in named.split(os.pathsep) if f]
    if named and not any(f.is_file() for f in files):
        raise ConfigError(
            f"kubeconfig {named} does not exist; point --kubeconfig or KUBECONFIG at your "
            "cluster's kubeconfig file"
        )
    default = Path("~/.kube/config").expanduser()
    return named or str(default), bool(files) or default.is_file()


async def load_configuration(kubeconfig: str | None, context: str | None) -> client.Configuration:
    """The client's configuration: a given file, KUBECONFIG, ~/.kube/config, else the pod's."""
    configuration = client.Configuration()
    where, found = _kubeconfig_named(kubeconfig)
    if context and not found:
        raise ConfigError(
            f"kubeconfig context {context!r} asked for, but there is no kubeconfig ({where}); "
            "point --kubeconfig at the file that holds each cluster's context"
        )
    if found:
        try:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration, context=context
            )
        except (
            config.ConfigException,
            OSError,
            TypeError,
            ValueError,
            AttributeError,
            yaml.YAMLError,
        ) as exc:
            raise ConfigError(
                f"kubeconfig {where} is not usable ({_config_problem(exc)}); check "
                "it with `kubectl --kubeconfig " + where + " config view`"
            ) from None
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        raise ConfigError(
            "no Kubernetes credentials: no kubeconfig (--kubeconfig, KUBECONFIG or "
            "~/.kube/config) and not running in a pod; point --kubeconfig at your cluster's "
            "kubeconfig"
        ) from None
    return configuration


def _config_problem(exc: Exception) -> str:
    """What is wrong with a kubeconfig, in a few words: YAML's own message has five lines."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not YAML: {exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, yaml.YAMLError):
        return "not YAML"
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def proxy_from_environment(configuration: client.Configuration) -> None:
    """Honour HTTP(S)_PROXY / NO_PROXY for the API server, read once rather than per request.

    Credentials in the proxy's URL stay there: aiohttp sends them as Proxy-Authorization.
    """
    server = urlsplit(str(configuration.host))
    if configuration.proxy or not server.hostname or proxy_bypass(server.hostname):
        return
    proxy = getproxies().get(server.scheme)
    if proxy:
        configuration.proxy = proxy if "://" in proxy else f"http://{proxy}"


@dataclass(frozen=True, slots=True)
class Limits:
    """How hard streamproc may press the API server; the defaults are the settings' own."""

    qps: float = DEFAULTS.api_qps
    burst: int = DEFAULTS.api_burst
    concurrency: int = DEFAULTS.api_concurrency
    #: record Kubernetes Events (one more request per pod and change, from their own budget)
    events: bool = DEFAULTS.kube_events
    #: Events' own budget, beside ``qps``: they never delay an observation's requests
    event_qps: float = DEFAULTS.event_qps

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits an operator set (``--api-qps``, ``--api-burst``, ...)."""
        return cls(
            qps=settings.api_qps,
            burst=settings.api_burst,
            concurrency=settings.api_concurrency,
            events=settings.kube_events,
            event_qps=settings.event_qps,
        )

    @property
    def event_burst(self) -> int:
        """Events allowed at once above ``event_qps``: two seconds' worth (a workload's pods)."""
        return max(1, round(2 * self.event_qps))
