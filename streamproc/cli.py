"""The ``streamproc`` command: run the pipeline or a stage, publish detections, check topologies."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from streamproc import __version__, kafka, logs, metrics, topologies
from streamproc.settings import (
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
    """
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--bootstrap-servers",
            envvar="STREAMPROC_BOOTSTRAP_SERVERS",
            default="localhost:9092",
            show_default=True,
            help="Kafka bootstrap servers.",
        ),
        click.option(
            "--kafka-security-protocol",
            envvar="STREAMPROC_KAFKA_SECURITY_PROTOCOL",
            type=click.Choice(SECURITY_PROTOCOLS, case_sensitive=False),
            default="PLAINTEXT",
            show_default=True,
            help="TLS and/or SASL for every Kafka connection.",
        ),
        click.option(
            "--kafka-sasl-mechanism",
            envvar="STREAMPROC_KAFKA_SASL_MECHANISM",
            type=click.Choice(SASL_MECHANISMS, case_sensitive=False),
            default="SCRAM-SHA-512",
            show_default=True,
        ),
        click.option("--kafka-sasl-username", envvar="STREAMPROC_KAFKA_SASL_USERNAME"),
        click.option(
            "--kafka-sasl-password-file",
            envvar="STREAMPROC_KAFKA_SASL_PASSWORD_FILE",
            type=path,
            help=f"File holding the SASL password (or set {SASL_PASSWORD_ENV}).",
        ),
        click.option(
            "--kafka-ssl-cafile",
            envvar="STREAMPROC_KAFKA_SSL_CAFILE",
            type=path,
            help="CA bundle for the brokers' certificates (default: the system's).",
        ),
        click.option(
            "--kafka-ssl-certfile",
            envvar="STREAMPROC_KAFKA_SSL_CERTFILE",
            type=path,
            help="Client certificate for mutual TLS.",
        ),
        click.option("--kafka-ssl-keyfile", envvar="STREAMPROC_KAFKA_SSL_KEYFILE", type=path),
        click.option(
            "--kafka-ssl-key-password-file",
            envvar="STREAMPROC_KAFKA_SSL_KEY_PASSWORD_FILE",
            type=path,
            help=f"File holding the client key's password (or set {KEY_PASSWORD_ENV}).",
        ),
        click.option(
            "--kafka-ssl-check-hostname/--no-kafka-ssl-check-hostname",
            envvar="STREAMPROC_KAFKA_SSL_CHECK_HOSTNAME",
            default=True,
            show_default=True,
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--topology",
            "topology_path",
            envvar="STREAMPROC_TOPOLOGY",
            type=click.Path(path_type=Path),
            default=Path("topologies"),
            show_default=True,
            help="Topology file or folder.",
        ),
        click.option(
            "--input-topic",
            envvar="STREAMPROC_INPUT_TOPIC",
            default=None,
            help="Override every topology's source topic.",
        ),
        click.option(
            "--dead-letter-topic",
            envvar="STREAMPROC_DLQ_TOPIC",
            default=Topics().dead_letters,
            show_default=True,
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            envvar="STREAMPROC_DRY_RUN",
            help="Do everything except write to the cluster.",
        ),
        click.option(
            "--kubeconfig",
            envvar="KUBECONFIG",
            default=None,
            help="Kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).",
        ),
        click.option(
            "--metrics-port",
            envvar="STREAMPROC_METRICS_PORT",
            type=int,
            default=9108,
            show_default=True,
            help="Port for /metrics; 0 turns it off.",
        ),
        click.option(
            "--metrics-host",
            envvar="STREAMPROC_METRICS_HOST",
            default="0.0.0.0",  # noqa: S104
            show_default=True,
            help="Address /metrics listens on.",
        ),
        click.option(
            "--api-qps",
            envvar="STREAMPROC_API_QPS",
            type=float,
            default=20.0,
            show_default=True,
            help="Sustained Kubernetes API requests/s per process.",
        ),
        click.option(
            "--api-burst",
            envvar="STREAMPROC_API_BURST",
            type=int,
            default=40,
            show_default=True,
            help="Requests allowed at once above --api-qps.",
        ),
        click.option(
            "--events/--no-events",
            "kube_events",
            envvar="STREAMPROC_EVENTS",
            default=True,
            show_default=True,
            help="Record Kubernetes Events on observed objects.",
        ),
        click.option(
            "--api-concurrency",
            envvar="STREAMPROC_API_CONCURRENCY",
            type=int,
            default=16,
            show_default=True,
            help="Kubernetes API requests in flight.",
        ),
        click.option(
            "--pod-lookups",
            envvar="STREAMPROC_POD_LOOKUPS",
            type=float,
            default=10.0,
            show_default=True,
            help="API lookups/s for pods not yet cached (ingest); beyond, the pod name's shape.",
        ),
        click.option(
            "--partitions",
            envvar="STREAMPROC_PARTITIONS",
            type=int,
            default=1,
            show_default=True,
            help="Partitions of the internal topics it creates.",
        ),
        click.option(
            "--session-timeout",
            envvar="STREAMPROC_SESSION_TIMEOUT",
            type=float,
            default=10.0,
            show_default=True,
            help="Consumer group session timeout (s).",
        ),
        click.option(
            "--fetch-max-wait",
            envvar="STREAMPROC_FETCH_MAX_WAIT_MS",
            type=click.IntRange(1, 10_000),
            default=20,
            show_default=True,
            help="Longest a consumer's fetch waits for records (ms). On Apache Kafka it only "
            "sets how often an idle consumer asks; on brokers that do not wake a waiting fetch "
            "it adds up to this much latency per stage.",
        ),
        click.option(
            "--speed",
            envvar="STREAMPROC_SPEED",
            type=float,
            default=1.0,
            show_default=True,
            help="Divide window sizes and TTLs (time-lapse).",
        ),
        click.option(
            "--enable-idempotence/--no-enable-idempotence",
            envvar="STREAMPROC_ENABLE_IDEMPOTENCE",
            default=False,
            show_default=True,
            help="Idempotent producer (Apache Kafka supports it; tansu does not).",
        ),
        click.option(
            "--log-level", envvar="STREAMPROC_LOG_LEVEL", default="INFO", show_default=True
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return _kafka_options(func)


def _topology_path(given: Path | None) -> Path:
    if given is not None:
        return given
    local = Path("topologies")
    return local if local.exists() else topologies.default_path()


def _settings(**opts: Any) -> Settings:
    topics = Topics(dead_letters=opts["dead_letter_topic"])
    if opts.get("input_topic"):
        topics = Topics(input=opts["input_topic"], dead_letters=opts["dead_letter_topic"])
    return Settings(
        bootstrap_servers=opts["bootstrap_servers"],
        kafka_security=_kafka_security(opts),
        topology_path=_topology_path(opts["topology_path"]),
        topics=topics,
        dry_run=opts["dry_run"],
        kubeconfig=opts["kubeconfig"],
        metrics_port=opts["metrics_port"],
        metrics_host=opts["metrics_host"],
        partitions=opts["partitions"],
        api_qps=opts["api_qps"],
        api_burst=opts["api_burst"],
        api_concurrency=opts["api_concurrency"],
        resolver_lookups_per_s=opts["pod_lookups"],
        kube_events=opts["kube_events"],
        session_timeout_s=opts["session_timeout"],
        fetch_max_wait_ms=opts["fetch_max_wait"],
        speed=opts["speed"],
        enable_idempotence=opts["enable_idempotence"],
    )


def load_topologies(
    settings: Settings, input_topic: str | None = None
) -> list[topologies.Topology]:
    """Load, validate and scale topologies; a bad one stops the command with file and line."""
    try:
        loaded = topologies.load_path(settings.topology_path)
    except topologies.TopologyError as exc:
        raise click.ClickException(f"invalid topology: {exc}") from None
    result = [topologies.scaled(t, settings.speed) for t in loaded]
    if input_topic:
        result = [topologies.reading(t, input_topic) for t in result]
    return result


def run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` for a clean shutdown."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(wrapper())


def _run(stages: tuple[str, ...], opts: dict[str, Any]) -> None:
    from streamproc import running  # noqa: PLC0415 - keeps `check` and `send` fast to start

    logs.setup(opts["log_level"])
    settings = _settings(**opts)
    loaded = load_topologies(settings, opts.get("input_topic"))
    metrics.serve(settings.metrics_port, settings.metrics_host)
    log.info(
        "streamproc %s: %s with %d topologies on %s",
        __version__,
        "+".join(stages),
        len(loaded),
        settings.bootstrap_servers,
    )
    run_until_signal(lambda stop: running.run_stages(settings, loaded, stages, stop))


@click.group()
@click.version_option(__version__)
def main() -> None:
    """Falco detections on Kafka -> per-workload windows -> expiring Retina observation."""


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
@click.option("--topic", envvar="STREAMPROC_INPUT_TOPIC", default="falco", show_default=True)
def send(files: tuple[Any, ...], bootstrap_servers: str, topic: str, **opts: Any) -> None:
    """Publish JSON-lines detections (as Falcosidekick would) to the input topic."""
    settings = Settings(bootstrap_servers=bootstrap_servers, kafka_security=_kafka_security(opts))

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

    try:
        count = asyncio.run(publish())
    except kafka.KafkaError as exc:
        raise click.ClickException(f"cannot publish to {bootstrap_servers}: {exc}") from None
    click.echo(f"sent {count} detections to {topic} on {bootstrap_servers}")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def check(paths: tuple[Path, ...]) -> None:
    """Validate topology files or folders; exit 1 naming file, line and field on the first error."""
    failed = False
    for path in paths or (_topology_path(None),):
        try:
            for topology in topologies.load_path(path):
                spec = topology.spec
                click.echo(
                    f"ok {topology.name}: topic={spec.source.topic} window={spec.window.size:g}s "
                    f"threshold={spec.window.threshold} ttl={spec.action.ttl:g}s "
                    f"annotate={','.join(f'{k}={v}' for k, v in spec.action.annotate.items())}"
                )
        except topologies.TopologyError as exc:
            click.echo(f"error {exc}", err=True)
            failed = True
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
    help="Topology file or folder [default: ./topologies, else the shipped one].",
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
    default=9108,
    show_default=True,
    help="Port for /metrics (a free one if taken); 0 turns it off.",
)
@click.option("--log-level", default="WARNING", show_default=True)
def lab(
    duration: float,
    speed: float,
    topology_path: Path | None,
    broker: str | None,
    kubeconfig: str | None,
    metrics_port: int,
    log_level: str,
) -> None:
    """Run the whole system on this machine: broker, cluster, pipeline and a replay."""
    from streamproc.lab import session  # noqa: PLC0415 - the lab's extra is optional

    logs.setup(log_level)
    topology_path = _topology_path(topology_path)
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
    )
    result: list[session.Summary] = []

    async def main(stop: asyncio.Event) -> None:
        result.append(await session.run_lab(options, stop))

    run_until_signal(main)
    summary = result[0]
    for line in summary.lines():
        print(line)
    sys.exit(0 if summary.clean else 1)


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
    from streamproc import kube  # noqa: PLC0415 - only the cluster commands need it
    from streamproc.resolving import WorkloadResolver  # noqa: PLC0415

    async def main() -> Any:
        client = await kube.Kube.connect(kubeconfig)
        try:
            return await work(client, WorkloadResolver(client, cache_size=10_000, ttl_s=60))
        finally:
            await client.close()

    return asyncio.run(main())


@main.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
@click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status(kubeconfig: str | None, output: str) -> None:
    """Show what is under observation now, read from the cluster."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from streamproc import observing  # noqa: PLC0415

    found = _cluster_command(kubeconfig, observing.current)
    if output == "json":
        click.echo(json.dumps([o.as_dict() for o in found], indent=2))
        return
    table = Table("NAMESPACE", "WORKLOAD", "PODS", "TOPOLOGY", "RULE", "EXPIRES IN", box=None)
    for o in found:
        left = f"{max(0, int(o.expires_in))}s" if o.expires_in > 0 else "overdue"
        table.add_row(
            o.namespace, f"{o.kind}/{o.workload}", str(len(o.pods)), o.topology, o.rule, left
        )
    Console(width=160).print(table)
    if not found:
        click.echo("nothing is under observation")


@main.command()
@click.argument("target")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
def release(target: str, kubeconfig: str | None) -> None:
    """End an observation early: NAMESPACE/WORKLOAD or NAMESPACE/KIND/WORKLOAD."""
    from streamproc import observing  # noqa: PLC0415

    parts = target.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise click.BadParameter("use NAMESPACE/WORKLOAD or NAMESPACE/KIND/WORKLOAD")
    namespace, name = parts[0], parts[-1]
    kind = parts[1] if len(parts) == 3 else None

    async def work(client: Any, resolver: Any) -> list[str]:
        return await observing.release(client, resolver, namespace, kind, name)

    pods = _cluster_command(kubeconfig, work)
    if not pods:
        raise click.ClickException(f"{target} is not under observation")
    click.echo(f"released {target}: {len(pods)} pods ({', '.join(pods)})")
