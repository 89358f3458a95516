"""``simulate``: what would these topologies have done? Nothing is written anywhere."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from pathlib import Path
from typing import Any

import click

from streamproc import logs, stopping
from streamproc.cli import options
from streamproc.clients import kafka
from streamproc.model import topologies
from streamproc.settings import DEFAULTS


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


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@options.knobs("simulate")
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
@click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the observations of --topology and --compare as a timeline (PNG; needs "
    "streamproc[plot]).",
)
def simulate(
    inputs: tuple[Path, ...],
    compare_path: Path | None,
    topic: str | None,
    since: str,
    until: str | None,
    pod_files: tuple[Path, ...],
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
    settings = options.settings_of("simulate", opts)
    sets = [options.load_topologies(settings)]
    if compare_path is not None:
        sets.append(
            options.load_topologies(dataclasses.replace(settings, topology_path=compare_path))
        )
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
        kubeconfig=settings.kubeconfig,
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
