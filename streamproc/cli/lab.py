"""``lab``: the whole system on this machine, time-lapsed; the only command with ``--speed``.

Its ``--kubeconfig`` and ``--metrics-port`` are its own, not the knobs: the lab uses its
emulated cluster unless told otherwise (never ``KUBECONFIG``'s), and any free port.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from streamproc import logs, stopping
from streamproc.cli import options
from streamproc.lab import platforms
from streamproc.model import topologies
from streamproc.settings import DEFAULTS


@click.command()
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds to run.")
@options.knobs("lab")
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
@click.option(
    "--platform",
    type=click.Choice(platforms.PLATFORMS),
    default="retina",
    show_default=True,
    help="The emulated cluster's platform: Retina from its chart, or AKS with it, with ACNS on "
    "Azure CNI, or with ACNS on Cilium (observed through ContainerNetworkMetric filters; "
    "docs/aks.md).",
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
    platform: platforms.PlatformName,
    log_level: str,
) -> None:
    """Run the whole system on this machine: broker, cluster, pipeline and a replay."""
    from streamproc.lab import session  # noqa: PLC0415 - the lab's extra is optional

    logs.setup(log_level)
    if kubeconfig is not None and platform != "retina":
        raise click.UsageError("--platform shapes the emulated cluster; not with --kubeconfig")
    topology_path = topologies.resolve_path(topology_path)
    try:
        for topology in topologies.load_path(topology_path):  # and under the platform's backend
            topologies.resolve_backend(topology, platforms.BACKENDS[platform])
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
        platform=platform,
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
