"""Click options built from the ``knob`` declarations in ``settings.py``, and Settings from them.

A knob names the commands that take it; ``knobs(command)`` offers exactly those, with the
flag, environment variable, default and help written in the knob. ``run`` takes what any of
its stages takes. Kafka's security options come with every command that takes
``--bootstrap-servers``; passwords come from files or the environment, never a flag.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from streamproc.model import conventions, topologies
from streamproc.settings import (
    DEFAULTS,
    LAB_SPEED,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    STAGES,
    KafkaSecurity,
    Settings,
)

log = logging.getLogger("streamproc")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

SASL_PASSWORD_ENV = "STREAMPROC_KAFKA_SASL_PASSWORD"  # noqa: S105 - a variable's name
KEY_PASSWORD_ENV = "STREAMPROC_KAFKA_SSL_KEY_PASSWORD"  # noqa: S105 - a variable's name

#: every Settings field an operator may set, by name, in the order Settings declares them
KNOBS = {f.name: f for f in dataclasses.fields(Settings) if "flag" in f.metadata}
#: the commands in the order the docs' table lists them
COMMANDS = (
    "run",
    "ingest",
    "windows",
    "annotate",
    "send",
    "doctor",
    "status",
    "release",
    "evidence",
    "simulate",
    "lab",
)
#: where one command's default differs from the Settings one: the lab time-lapses by default
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {"lab": {"speed": LAB_SPEED}}


def commands_of(name: str) -> frozenset[str]:
    """The commands that take one knob: those it declares, and ``run`` with any stage."""
    declared: frozenset[str] = KNOBS[name].metadata["commands"]
    return declared | {"run"} if declared & STAGES else declared


def taken_by(command: str) -> list[str]:
    """The knobs one command takes, in the order Settings declares them."""
    return [name for name in KNOBS if command in commands_of(name)]


def default_of(name: str, command: str | None = None) -> Any:
    """A knob's default on one command (the Settings default unless that command has its own)."""
    return COMMAND_DEFAULTS.get(command or "", {}).get(name, KNOBS[name].default)


def settings_option(name: str, command: str | None = None) -> Decorator:
    """The click option of one ``Settings`` field, built from the field's ``knob`` metadata."""
    spec = KNOBS[name]
    meta = spec.metadata
    default = default_of(name, command)
    extra = dict(meta["click"])
    kind = extra.pop("type", None)
    if kind == "ms":
        extra["type"] = click.IntRange(1, 10_000)
    elif kind == "count":
        extra["type"] = click.IntRange(min=0)
    elif kind is Path:
        extra["type"] = click.Path(path_type=Path)
    elif isinstance(kind, tuple):  # the knob's allowed values
        extra["type"] = click.Choice(kind)
    elif isinstance(default, bool):
        extra["is_flag"] = True
    elif default is not None:
        extra["type"] = type(default)
    return click.option(
        meta["flag"],
        name,
        envvar=meta["env"],
        default=default,
        show_default=default is not None,
        show_envvar=True,
        help=meta["help"],
        **extra,
    )


def _security_options() -> list[Decorator]:
    """Kafka security, shared by every command that talks to Kafka; defaults: KafkaSecurity.

    Passwords have no flag of their own (a flag's value shows in ``ps`` and shell history):
    they come from an environment variable or a file, such as a mounted Kubernetes Secret.
    """
    security = DEFAULTS.kafka_security
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    return [
        click.option(
            "--kafka-security-protocol",
            envvar="STREAMPROC_KAFKA_SECURITY_PROTOCOL",
            show_envvar=True,
            type=click.Choice(SECURITY_PROTOCOLS, case_sensitive=False),
            default=security.protocol,
            show_default=True,
            help="TLS and/or SASL for every Kafka connection.",
        ),
        click.option(
            "--kafka-sasl-mechanism",
            envvar="STREAMPROC_KAFKA_SASL_MECHANISM",
            show_envvar=True,
            type=click.Choice(SASL_MECHANISMS, case_sensitive=False),
            default=security.sasl_mechanism,
            show_default=True,
            help="SASL mechanism, with SASL_PLAINTEXT or SASL_SSL.",
        ),
        click.option(
            "--kafka-sasl-username",
            envvar="STREAMPROC_KAFKA_SASL_USERNAME",
            show_envvar=True,
            help="SASL user.",
        ),
        click.option(
            "--kafka-sasl-password-file",
            envvar="STREAMPROC_KAFKA_SASL_PASSWORD_FILE",
            show_envvar=True,
            type=path,
            help=f"File holding the SASL password (or set {SASL_PASSWORD_ENV}).",
        ),
        click.option(
            "--kafka-ssl-cafile",
            envvar="STREAMPROC_KAFKA_SSL_CAFILE",
            show_envvar=True,
            type=path,
            help="CA bundle for the brokers' certificates [default: the system's].",
        ),
        click.option(
            "--kafka-ssl-certfile",
            envvar="STREAMPROC_KAFKA_SSL_CERTFILE",
            show_envvar=True,
            type=path,
            help="Client certificate for mutual TLS.",
        ),
        click.option(
            "--kafka-ssl-keyfile",
            envvar="STREAMPROC_KAFKA_SSL_KEYFILE",
            show_envvar=True,
            type=path,
            help="The client certificate's key.",
        ),
        click.option(
            "--kafka-ssl-key-password-file",
            envvar="STREAMPROC_KAFKA_SSL_KEY_PASSWORD_FILE",
            show_envvar=True,
            type=path,
            help=f"File holding the client key's password (or set {KEY_PASSWORD_ENV}).",
        ),
        click.option(
            "--kafka-ssl-check-hostname/--no-kafka-ssl-check-hostname",
            envvar="STREAMPROC_KAFKA_SSL_CHECK_HOSTNAME",
            show_envvar=True,
            default=security.check_hostname,
            show_default=True,
            help="Check that the broker's certificate names the host connected to.",
        ),
    ]


def knobs(command: str) -> Decorator:
    """Every option ``command`` takes from Settings; Kafka security after the broker address."""
    options: list[Decorator] = []
    for name in taken_by(command):
        options.append(settings_option(name, command))
        if name == "bootstrap_servers":
            options += _security_options()

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def _secret(file: Path | None, env: str) -> str | None:
    """A secret from its file (trailing newline dropped, as Secrets are often written) or env."""
    if file is not None:
        return file.read_text(encoding="utf-8").rstrip("\r\n")
    return os.environ.get(env) or None


def _kafka_security(opts: dict[str, Any]) -> KafkaSecurity:
    try:
        return KafkaSecurity(
            protocol=opts["kafka_security_protocol"].upper(),
            sasl_mechanism=opts["kafka_sasl_mechanism"].upper(),
            sasl_username=opts["kafka_sasl_username"],
            sasl_password=_secret(opts["kafka_sasl_password_file"], SASL_PASSWORD_ENV),
            ca_file=opts["kafka_ssl_cafile"],
            cert_file=opts["kafka_ssl_certfile"],
            key_file=opts["kafka_ssl_keyfile"],
            key_password=_secret(opts["kafka_ssl_key_password_file"], KEY_PASSWORD_ENV),
            check_hostname=opts["kafka_ssl_check_hostname"],
        )
    except ValueError as exc:
        raise click.UsageError(f"Kafka security: {exc}") from None


def settings_of(command: str, opts: dict[str, Any]) -> Settings:
    """The Settings of one command's options (``knobs(command)``); the rest are defaults."""
    taken = {name: opts[name] for name in taken_by(command)}
    if "bootstrap_servers" in taken:
        taken["kafka_security"] = _kafka_security(opts)
    return _checked_clusters(dataclasses.replace(DEFAULTS, **taken))


def _checked_clusters(settings: Settings) -> Settings:
    """Cluster names become topic and group names: DNS-1123 labels, as in the detections."""
    for name in settings.fleet:
        if not conventions.is_dns1123_label(name):
            raise click.BadParameter(
                f"cluster name {name!r} is not a DNS-1123 label (lowercase letters, digits, "
                "'-', at most 63)",
                param_hint="--cluster / --clusters / --cluster-contexts",
            )
    return settings


def load_topologies(
    settings: Settings, input_topic: str | None = None
) -> list[topologies.Topology]:
    """Load and validate topologies; a bad one stops the command with file and line.

    Never time-lapsed: only the lab scales windows and TTLs (``--speed``), and it does so itself.
    """
    path = topologies.resolve_path(settings.topology_path)
    try:
        loaded = topologies.load_path(path)
    except topologies.TopologyError as exc:
        raise click.ClickException(f"invalid topology: {exc}") from None
    try:  # valid on its own, but maybe not under the deployment's backend
        for topology in loaded:
            topologies.resolve_backend(topology, settings.observation_backend)
    except topologies.TopologyError as exc:
        raise click.ClickException(f"invalid topology: {exc}") from None
    log.info("topologies from %s: %s", path, ", ".join(t.name for t in loaded))
    if input_topic:
        loaded = [topologies.reading(t, input_topic) for t in loaded]
    return loaded


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _in_order(command: str) -> tuple[int, str]:
    return (COMMANDS.index(command) if command in COMMANDS else len(COMMANDS), command)


def markdown() -> str:
    """The table of every knob: flag, variable, default and the commands that take it.

    ``docs/getting-started.md`` holds it; a test checks that the page shows what the code says.
    Regenerate: ``python -c "from streamproc.cli import options; print(options.markdown())"``.
    """
    rows = [
        "| Option | Environment | Default | Commands |",
        "| --- | --- | --- | --- |",
    ]
    for name, spec in KNOBS.items():
        taken = sorted(commands_of(name), key=_in_order)
        defaults = {c: default_of(name, c) for c in taken}
        default = (
            _cell(spec.default)
            if set(map(repr, defaults.values())) <= {repr(spec.default)}
            else "; ".join(f"{_cell(v)} ({c})" for c, v in defaults.items())
        )
        flag = spec.metadata["flag"].split("/")[0]
        rows.append(f"| `{flag}` | `{spec.metadata['env']}` | {default} | {', '.join(taken)} |")
    return "\n".join(rows) + "\n"
