"""``send`` publishes detections as Falcosidekick would; ``samples`` prints the lab's."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.parse
from typing import Any

import click

from streamproc import stopping
from streamproc.cli import options
from streamproc.clients import kafka
from streamproc.settings import DEFAULTS, Topics


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.File("rb"))
@options.knobs("send")
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
    settings = options.settings_of("send", {**opts, "bootstrap_servers": bootstrap_servers})
    kafka.connect_errors.hide = True  # a failure is explained in one line instead
    lines = (line.rstrip(b"\r\n") for file in files for line in file if line.strip())
    count = asyncio.run(kafka.publish(settings, topic, ((None, line) for line in lines)))
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


@click.command()
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
