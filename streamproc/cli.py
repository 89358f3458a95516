"""The ``streamproc`` command: run the pipeline or a stage, publish detections, check topologies."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
import time
import typing
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from streamproc import __version__, logs, stopping
from streamproc.clients import kafka, metrics
from streamproc.model import conventions, topologies, workloads
from streamproc.settings import (
    DEFAULTS,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaSecurity,
    Settings,
    Topics,
)

log = logging.getLogger("streamproc")


SASL_PASSWORD_ENV = "STREAMPROC_KAFKA_SASL_PASSWORD"  # noqa: S105 - a variable's name
KEY_PASSWORD_ENV = "STREAMPROC_KAFKA_SSL_KEY_PASSWORD"  # noqa: S105 - a variable's name


def _kafka_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Broker address and security, shared by every command that talks to Kafka.

    Passwords have no flag of their own (a flag's value shows in ``ps`` and shell history):
    they come from an environment variable or a file, such as a mounted Kubernetes Secret.
    Defaults come from ``KafkaSecurity``.
    """
    security = DEFAULTS.kafka_security
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        settings_option("bootstrap_servers"),
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
    for option in reversed(options):
        func = option(func)
    return func


def settings_option(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one ``Settings`` field, built from the field's ``knob`` metadata."""
    spec = next(f for f in dataclasses.fields(Settings) if f.name == name)
    meta = spec.metadata
    extra = dict(meta["click"])
    kind = extra.pop("type", None)
    if kind == "ms":
        extra["type"] = click.IntRange(1, 10_000)
    elif kind == "count":
        extra["type"] = click.IntRange(min=0)
    elif kind is Path:
        extra["type"] = click.Path(path_type=Path)
    elif isinstance(spec.default, bool):
        extra["is_flag"] = True
    elif spec.default is not None:
        extra["type"] = type(spec.default)
    return click.option(
        meta["flag"],
        name,
        envvar=meta["env"],
        default=spec.default,
        show_default=spec.default is not None,
        show_envvar=True,
        help=meta["help"],
        **extra,
    )


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


def _kafka_settings(opts: dict[str, Any], *fields: str) -> Settings:
    """Settings from a command's Kafka options (``_kafka_options``) and the named fields."""
    return dataclasses.replace(
        DEFAULTS,
        bootstrap_servers=opts["bootstrap_servers"],
        kafka_security=_kafka_security(opts),
        **{name: opts[name] for name in fields},
    )


#: Settings fields every stage command takes as an option (the Kafka ones come with them).
STAGE_SETTINGS = tuple(
    f.name
    for f in dataclasses.fields(Settings)
    if "flag" in f.metadata and f.metadata["stage"] and f.name != "bootstrap_servers"
)


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        *(settings_option(name) for name in STAGE_SETTINGS),
        click.option(
            "--input-topic",
            envvar="STREAMPROC_INPUT_TOPIC",
            default=None,
            show_envvar=True,
            help="Override every topology's source topic.",
        ),
        click.option(
            "--dead-letter-topic",
            envvar="STREAMPROC_DLQ_TOPIC",
            default=Topics().dead_letters,
            show_default=True,
            show_envvar=True,
            help="Where records streamproc cannot use go, with the reason in headers.",
        ),
        _log_level_option,
    ]
    for option in reversed(options):
        func = option(func)
    return _kafka_options(func)


_log_level_option = click.option(
    "--log-level",
    envvar="STREAMPROC_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    show_envvar=True,
)


def _settings(**opts: Any) -> Settings:
    topics = Topics(dead_letters=opts["dead_letter_topic"])
    if opts.get("input_topic"):
        topics = Topics(input=opts["input_topic"], dead_letters=opts["dead_letter_topic"])
    return _checked_clusters(
        dataclasses.replace(_kafka_settings(opts, *STAGE_SETTINGS), topics=topics)
    )


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
    """Load, validate and scale topologies; a bad one stops the command with file and line."""
    path = topologies.resolve_path(settings.topology_path)
    try:
        loaded = topologies.load_path(path)
    except topologies.TopologyError as exc:
        raise click.ClickException(f"invalid topology: {exc}") from None
    log.info("topologies from %s: %s", path, ", ".join(t.name for t in loaded))
    result = [topologies.scaled(t, settings.speed) for t in loaded]
    if input_topic:
        result = [topologies.reading(t, input_topic) for t in result]
    return result


def _run(stages: tuple[str, ...], opts: dict[str, Any]) -> None:
    from streamproc import running  # noqa: PLC0415 - keeps `check` and `send` fast to start

    logs.setup(opts["log_level"])
    settings = _settings(**opts)
    if "annotate" in stages and settings.fleet and not settings.cluster:
        raise click.UsageError(
            "--clusters or --cluster-contexts names a fleet: the annotator acts on one of its "
            "clusters, name it with --cluster (STREAMPROC_CLUSTER)"
        )
    loaded = load_topologies(settings, opts.get("input_topic"))
    metrics.serve(settings.metrics_port, settings.metrics_host)
    log.info(
        "streamproc %s: %s with %d topologies on %s",
        __version__,
        "+".join(stages),
        len(loaded),
        settings.bootstrap_servers,
    )
    stopping.run(
        lambda stop: running.run_stages(settings, loaded, stages, stop),
        grace_s=settings.shutdown_timeout_s,
    )
    log.info("stopped")
    stopping.finish(0)


def _explain(exc: BaseException) -> str | None:
    """One line naming the cause and the fix, for every failure a person can act on."""
    from streamproc.clients import kube  # noqa: PLC0415 - only needed when something failed
    from streamproc.stages import windows as windowing  # noqa: PLC0415 - only needed when something failed

    if isinstance(exc, windowing.StageCrashed):
        return str(exc)
    if isinstance(exc, kube.KubeError):
        return kube.explain(exc)
    if isinstance(exc, kafka.KafkaError):
        return kafka.explain(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror}: another process holds the port; choose another --metrics-port"
    return None


class _Commands(click.Group):
    """Known failures become one plain line (traceback with --debug); Ctrl-C is not a crash."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("streamproc: interrupted", err=True)
            stopping.finish(130)
        except Exception as exc:
            line = _explain(exc)
            if line is None or (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"streamproc: error: {line}", err=True)
            stopping.finish(1)
        return None


@click.group(cls=_Commands)
@click.version_option(__version__)
@click.option(
    "--debug",
    is_flag=True,
    envvar="STREAMPROC_DEBUG",
    show_envvar=True,
    help="Show tracebacks for failures that otherwise get one line.",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Falco detections on Kafka -> per-workload windows -> expiring Retina observation."""
    ctx.obj = {"debug": debug}


@main.command()
@_common
def run(**opts: Any) -> None:
    """Run ingest, windows and annotator in one process."""
    _run(("ingest", "windows", "annotate"), opts)


@main.command()
@_common
def ingest(**opts: Any) -> None:
    """Run the ingest stage alone (scale out by partition)."""
    _run(("ingest",), opts)


@main.command()
@_common
def windows(**opts: Any) -> None:
    """Run the windows stage (Faust) alone."""
    _run(("windows",), opts)


@main.command()
@_common
def annotate(**opts: Any) -> None:
    """Run the annotator (and expirer) alone."""
    _run(("annotate",), opts)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.File("rb"))
@_kafka_options
@click.option(
    "--topic",
    envvar="STREAMPROC_INPUT_TOPIC",
    default=Topics().input,
    show_default=True,
    show_envvar=True,
)
@click.option(
    "--falcosidekick",
    "falcosidekick_url",
    envvar="STREAMPROC_FALCOSIDEKICK_URL",
    show_envvar=True,
    metavar="URL",
    callback=lambda _ctx, _param, url: _http_url(url),
    help="POST each detection to this Falcosidekick (as Falco's http_output does) instead of "
    "writing to Kafka: Falcosidekick publishes it, with its customfields and codec.",
)
def send(
    files: tuple[Any, ...],
    bootstrap_servers: str,
    topic: str,
    falcosidekick_url: str | None,
    **opts: Any,
) -> None:
    """Publish JSON-lines detections (as Falcosidekick would) to the input topic.

    With --falcosidekick, post them to a Falcosidekick instead, which publishes them itself.
    """
    if falcosidekick_url:
        _post_to_falcosidekick(files, falcosidekick_url)
        return
    settings = _kafka_settings({**opts, "bootstrap_servers": bootstrap_servers})
    kafka.connect_errors.hide = True  # a failure is explained in one line instead

    async def publish() -> int:
        producer = kafka.producer(settings)
        try:
            await producer.start()
            futures = [
                await producer.send(topic, value=line.rstrip(b"\r\n"))
                for file in files
                for line in file
                if line.strip()
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return len(futures)

    count = asyncio.run(publish())
    click.echo(f"sent {count} detections to {topic} on {bootstrap_servers}")


def _http_url(url: str | None) -> str | None:
    """The URL as given, if it is http(s) with a host; else a usage error naming the fix."""
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise click.BadParameter(
            f"{url!r} is not an http(s) URL; e.g. http://falcosidekick:2801/",
            param_hint="'--falcosidekick'",
        )
    return url


def _post_to_falcosidekick(files: tuple[Any, ...], url: str) -> None:
    """``send --falcosidekick``: one POST per line, in order, until done or a signal.

    A refused line is named (a warning) and skipped, as the Kafka path publishes malformed lines
    for the stages to dead-letter; only an unreachable Falcosidekick fails the command.
    """
    from streamproc.clients import falcosidekick as posting  # noqa: PLC0415 - only this path needs the HTTP client

    detections = (
        (f"{getattr(file, 'name', '-')}:{number}", line.strip())
        for file in files
        for number, line in enumerate(file, 1)
        if line.strip()
    )
    done: list[int] = []
    refused: list[posting.PostFailed] = []

    def refuse(exc: posting.PostFailed) -> None:
        refused.append(exc)
        click.echo(f"streamproc: warning: {exc}", err=True)

    async def main(stop: asyncio.Event) -> None:
        count = await posting.post_all(url, detections, stop, refuse)
        if count is not None:
            done.append(count)

    try:
        received = stopping.run(main, grace_s=DEFAULTS.shutdown_timeout_s, name="streamproc send")
    except posting.PostFailed as exc:
        click.echo(f"streamproc: error: {exc}", err=True)
        stopping.finish(1)
    if not done:
        click.echo("streamproc: interrupted", err=True)
        stopping.finish(stopping.exit_code(received or signal.SIGINT))
    click.echo(
        f"posted {done[0]} detections to Falcosidekick at {url}"
        + (f"; it refused {len(refused)} (named above)" if refused else "")
    )


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def check(paths: tuple[Path, ...]) -> None:
    """Validate topology files or folders; exit 1 naming file, line and field of every error."""
    failed = False
    for path in paths or (topologies.resolve_path(None),):
        loaded, errors = topologies.check_path(path)
        for topology in loaded:
            spec = topology.spec
            click.echo(
                f"ok {topology.name}: topic={spec.source.topic} window={spec.window.size:g}s "
                f"threshold={spec.window.threshold} ttl={spec.action.ttl:g}s "
                f"annotate={','.join(f'{k}={v}' for k, v in spec.action.annotate.items())}"
            )
        for error in errors:
            click.echo(f"error {error}", err=True)
        failed = failed or bool(errors)
    if failed:
        sys.exit(1)


@main.command()
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds to run.")
@click.option(
    "--speed",
    type=float,
    default=12.0,
    show_default=True,
    help="Divide window sizes and TTLs (60s windows become 5s at 12).",
)
@click.option(
    "--topology",
    "topology_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Topology file or folder [default: ./topologies if present, else the shipped one].",
)
@click.option("--broker", default=None, help="Use this Kafka instead of the embedded broker.")
@click.option(
    "--kubeconfig",
    default=None,
    help="Use this cluster instead of the emulated one (observations are real!).",
)
@click.option(
    "--metrics-port",
    type=int,
    default=DEFAULTS.metrics_port,
    show_default=True,
    help="Port for /metrics (a free one if taken); 0 turns it off.",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="The closing summary as text or as one JSON document on stdout.",
)
@click.option("--log-level", default="WARNING", show_default=True)
def lab(
    duration: float,
    speed: float,
    topology_path: Path | None,
    broker: str | None,
    kubeconfig: str | None,
    metrics_port: int,
    output: str,
    log_level: str,
) -> None:
    """Run the whole system on this machine: broker, cluster, pipeline and a replay."""
    from streamproc.lab import session  # noqa: PLC0415 - the lab's extra is optional

    logs.setup(log_level)
    topology_path = topologies.resolve_path(topology_path)
    try:
        topologies.load_path(topology_path)
    except topologies.TopologyError as exc:
        raise click.ClickException(f"invalid topology: {exc}") from None
    options = session.LabOptions(
        duration_s=duration,
        speed=speed,
        topology_path=topology_path,
        broker=broker,
        kubeconfig=kubeconfig,
        metrics_port=metrics_port,
        live=output == "text",
    )
    result: list[session.Summary] = []

    async def main(stop: asyncio.Event) -> None:
        result.append(await session.run_lab(options, stop))

    stopping.run(main, grace_s=DEFAULTS.shutdown_timeout_s, name="streamproc lab")
    summary = result[0]
    if output == "json":
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        for line in [*summary.lines(), *session.next_steps(options, summary)]:
            click.echo(line)
    if summary.interrupted:
        stopping.finish(130)
    stopping.finish(0 if summary.clean else 1)


@main.command()
@_kafka_options
@settings_option("topology_path")
@settings_option("kubeconfig")
@settings_option("node_budget")
@settings_option("partitions")
@settings_option("cluster")
@settings_option("clusters")
@settings_option("cluster_contexts")
@click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def doctor(output: str, **opts: Any) -> None:
    """Check that Kafka, the cluster and Retina are ready; read only; exit 1 on a failure."""
    from streamproc.doctor import diagnosing  # noqa: PLC0415 - only this command needs it

    logs.setup("ERROR")  # the report says it all; library chatter would only interleave
    kafka.connect_errors.hide = True
    settings = _checked_clusters(
        _kafka_settings(
            opts,
            "topology_path",
            "kubeconfig",
            "node_budget",
            "partitions",
            "cluster",
            "clusters",
            "cluster_contexts",
        )
    )
    result: list[list[Any]] = []

    async def main(stop: asyncio.Event) -> None:
        found = await stopping.unless_stopped(
            diagnosing.diagnose(settings, settings.topology_path), stop
        )
        if found is not None:
            result.append(found)

    received = stopping.run(main, grace_s=DEFAULTS.shutdown_timeout_s, name="streamproc doctor")
    if not result:
        click.echo("streamproc: interrupted", err=True)
        stopping.finish(stopping.exit_code(received or signal.SIGINT))
    found = result[0]
    if output == "json":
        doc = {"checks": [c.as_dict() for c in found], "summary": diagnosing.summary(found)}
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for line in diagnosing.lines(found):
            click.echo(line)
    sys.exit(1 if any(c.status == "fail" for c in found) else 0)


@main.command()
@click.option(
    "--span",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds the sample's incidents are spread over.",
)
@click.option("--seed", type=int, default=11, show_default=True)
def samples(span: float, seed: int) -> None:
    """Print the lab's realistic Falcosidekick detections as JSON lines (for ``send``)."""
    from streamproc.lab import cluster, replay  # noqa: PLC0415 - only this command needs them

    now = time.time()
    for item in replay.timeline(cluster.sample_cluster().workloads, span, seed):
        sys.stdout.buffer.write(replay.stamp(item.value, now + item.at) + b"\n")


def _cluster_command(kubeconfig: str | None, work: Callable[..., Coroutine[Any, Any, Any]]) -> Any:
    from streamproc.clients import kube  # noqa: PLC0415 - only the cluster commands need it
    from streamproc.cluster.resolving import WorkloadResolver  # noqa: PLC0415

    async def main() -> Any:
        # a person is waiting: a few quick attempts, then the plain reason
        client = await kube.Kube.connect(kubeconfig, attempts=3)
        try:
            return await work(client, WorkloadResolver(client, cache_size=10_000, ttl_s=60))
        finally:
            await client.close()

    return asyncio.run(main())


@main.command()
@settings_option("kubeconfig")
@settings_option("node_budget")
@click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status(kubeconfig: str | None, node_budget: int, output: str) -> None:
    """Show what is under observation now, read from the cluster."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from streamproc.cluster import observing  # noqa: PLC0415

    found = _cluster_command(kubeconfig, observing.current)
    if output == "json":
        click.echo(json.dumps([o.as_dict() for o in found], indent=2))
        return
    table = Table(
        "NAMESPACE", "WORKLOAD", "PODS", "TOPOLOGY", "LEVEL", "RULE", "EXPIRES IN", box=None
    )
    for o in found:
        left = f"{max(0, int(o.expires_in))}s" if o.expires_in > 0 else "overdue"
        table.add_row(
            o.namespace,
            f"{o.kind}/{o.workload}",
            str(len(o.pods)),
            o.topology,
            o.level or "-",
            o.rule,
            left,
        )
    Console(width=160).print(table)
    if not found:
        click.echo("nothing is under observation")
        return
    busiest = list(observing.per_node(found).items())[:5]
    if busiest:
        load = ", ".join(f"{node} {n}" for node, n in busiest)
        click.echo(f"observed pods per node (busiest; --node-budget {node_budget}): {load}")


@main.command()
@click.argument("target")
@settings_option("kubeconfig")
@click.option(
    "--forget",
    is_flag=True,
    help="Also drop its escalation history: its next observation starts at level 1.",
)
@_kafka_options
@settings_option("topology_path")
@settings_option("cluster")
def release(target: str, kubeconfig: str | None, forget: bool, **opts: Any) -> None:
    """End an observation early: NAMESPACE/WORKLOAD or NAMESPACE/KIND/WORKLOAD."""
    from streamproc.cluster import observing  # noqa: PLC0415

    parts = target.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise click.BadParameter("use NAMESPACE/WORKLOAD or NAMESPACE/KIND/WORKLOAD")
    namespace, name = parts[0], parts[-1]
    kind = parts[1] if len(parts) == 3 else None

    async def work(client: Any, resolver: Any) -> tuple[list[str], str | None]:
        return await observing.release(client, resolver, namespace, kind, name)

    pods, found = _cluster_command(kubeconfig, work)
    found_kind = kind or found
    if pods:
        click.echo(f"released {target}: {len(pods)} pods ({', '.join(pods)})")
    elif not forget:
        raise click.ClickException(f"{target} is not under observation")
    if forget:
        if found_kind is None:
            raise click.BadParameter(
                f"{target} is not under observation: name its kind, NAMESPACE/KIND/WORKLOAD"
            )
        _forget(opts, namespace, found_kind, name)


def _forget(opts: dict[str, Any], namespace: str, kind: str, name: str) -> None:
    """Ask the windows stage to drop the workload's history in every topology with a ladder."""
    from streamproc.model.tallies import forget_tally  # noqa: PLC0415

    if kind not in typing.get_args(workloads.Kind):
        raise click.BadParameter(f"{kind!r} is not a workload kind streamproc observes")
    settings = _kafka_settings(opts, "topology_path", "cluster")
    laddered = [t.name for t in load_topologies(settings) if t.spec.action.escalation]
    if not laddered:
        click.echo("no topology has an escalation ladder: no history to forget")
        return
    kafka.connect_errors.hide = True
    checked = typing.cast("workloads.Kind", kind)
    records = [forget_tally(t, namespace, checked, name, settings.cluster) for t in laddered]

    async def publish() -> None:
        producer = kafka.producer(settings)
        try:
            await producer.start()
            for record in records:
                await producer.send_and_wait(
                    settings.topics.tallies, key=record.workload_key.encode(), value=record.encode()
                )
        finally:
            await producer.stop()

    asyncio.run(publish())
    click.echo(
        f"forgot the escalation history of {namespace}/{kind}/{name} in {', '.join(laddered)}"
    )


def _moment(text: str, now: float, option: str) -> int:
    """Epoch ms of ``--since``/``--until``: a duration ago (``24h``) or an RFC 3339 time."""
    from streamproc.model import durations, events  # noqa: PLC0415

    try:
        return int((now - durations.parse_duration(text)) * 1000)
    except ValueError:
        pass
    try:
        return events.epoch_ms(text)
    except (ValueError, events.ParseError):
        raise click.BadParameter(
            f"{text!r} is neither a duration (24h) nor an RFC 3339 time", param_hint=option
        ) from None


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@settings_option("topology_path")
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(exists=True, path_type=Path),
    help="A second topology file or folder, simulated beside --topology on the same input.",
)
@click.option("--topic", help="Read this topic's records instead of files (joins no group).")
@click.option(
    "--since", default="24h", show_default=True, help="With --topic: from (24h ago, or a time)."
)
@click.option("--until", default=None, help="With --topic: until (a duration ago, or a time).")
@click.option(
    "--pods",
    "pod_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Pods as `kubectl get pods -A -o json` wrote them (ReplicaSets and Jobs may be in it).",
)
@settings_option("kubeconfig")
@settings_option("cluster")
@settings_option("clusters")
@settings_option("node_budget")
@settings_option("extend_below")
@settings_option("simulate_workers")
@click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the observations of --topology and --compare as a timeline (PNG; needs "
    "streamproc[plot]).",
)
@_kafka_options
def simulate(
    inputs: tuple[Path, ...],
    compare_path: Path | None,
    topic: str | None,
    since: str,
    until: str | None,
    pod_files: tuple[Path, ...],
    kubeconfig: str | None,
    output: str,
    plot: Path | None,
    **opts: Any,
) -> None:
    """What would these topologies have done? Detections from files or a topic, nothing written.

    INPUT files hold Falcosidekick payloads, one JSON object per line (plain or gzip). Workloads
    are identified as live: owner fields, else the --pods snapshot, else read-only lookups
    through the kubeconfig, else the pod name's shape.
    """
    from streamproc.simulating import session  # noqa: PLC0415 - the simulation's imports

    if bool(inputs) == bool(topic):
        raise click.UsageError("give INPUT files or --topic, not both and not neither")
    logs.setup("ERROR")
    kafka.connect_errors.hide = True
    settings = _checked_clusters(
        _kafka_settings(
            opts,
            "topology_path",
            "cluster",
            "clusters",
            "node_budget",
            "extend_below",
            "simulate_workers",
        )
    )
    sets = [load_topologies(settings)]
    if compare_path is not None:
        sets.append(load_topologies(dataclasses.replace(settings, topology_path=compare_path)))
    now = time.time()
    window = (_moment(since, now, "--since"), _moment(until, now, "--until") if until else None)
    request = session.Request(
        settings=settings,
        topology_sets=sets,
        names=[
            str(topologies.resolve_path(settings.topology_path)),
            *([str(compare_path)] if compare_path else []),
        ],
        files=list(inputs),
        topic=topic,
        since_ms=window[0],
        until_ms=window[1] or int(now * 1000),
        pod_files=list(pod_files),
        kubeconfig=kubeconfig,
    )
    done: list[list[Any]] = []

    async def run(stop: asyncio.Event) -> None:
        found = await stopping.unless_stopped(session.simulate(request), stop)
        if found is not None:
            done.append(found)

    try:
        received = stopping.run(
            run, grace_s=DEFAULTS.shutdown_timeout_s, name="streamproc simulate"
        )
        if not done:
            click.echo("streamproc: interrupted", err=True)
            stopping.finish(stopping.exit_code(received or signal.SIGINT))
        reports = done[0]
        if plot is not None:
            session.draw(reports, plot)
    except session.SimulationError as exc:
        raise click.ClickException(str(exc)) from None
    if output == "json":
        click.echo(json.dumps(session.as_json(reports), indent=2))
    else:
        session.show(reports)
    if plot is not None:
        click.echo(f"timeline written to {plot}", err=output == "json")
