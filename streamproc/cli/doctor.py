"""``doctor``: read-only checks that Kafka, the cluster and Retina are ready."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import click

from streamproc import logs, stopping
from streamproc.cli import options
from streamproc.clients import kafka
from streamproc.settings import DEFAULTS


@click.command()
@options.knobs("doctor")
@click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def doctor(output: str, **opts: Any) -> None:
    """Check that Kafka, the cluster and Retina are ready; read only; exit 1 on a failure."""
    from streamproc.doctor import diagnosing  # noqa: PLC0415 - only this command needs it

    logs.setup("ERROR")  # the report says it all; library chatter would only interleave
    kafka.connect_errors.hide = True
    settings = options.settings_of("doctor", opts)
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
