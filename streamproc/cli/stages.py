"""``run``, ``ingest``, ``windows`` and ``annotate``: the pipeline, whole or one stage.

Each stage offers the knobs it uses and nothing else (``windows --node-budget`` is a usage
error); ``run`` offers what any of its stages uses.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import click

from streamproc import __version__, logs, stopping
from streamproc.cli import options
from streamproc.clients import metrics
from streamproc.settings import Topics

log = logging.getLogger("streamproc")


def _stage_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The command's knobs, the topics it may override, and the log level.

    Only ingest reads the topologies' source topics, so only it (and ``run``) takes
    ``--input-topic``.
    """
    input_topic = click.option(
        "--input-topic",
        envvar="STREAMPROC_INPUT_TOPIC",
        default=None,
        show_envvar=True,
        help="Override every topology's source topic.",
    )
    extra = [
        *([input_topic] if command in ("run", "ingest") else []),
        click.option(
            "--dead-letter-topic",
            envvar="STREAMPROC_DLQ_TOPIC",
            default=Topics().dead_letters,
            show_default=True,
            show_envvar=True,
            help="Where records streamproc cannot use go, with the reason in headers.",
        ),
        click.option(
            "--log-level",
            envvar="STREAMPROC_LOG_LEVEL",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            default="INFO",
            show_default=True,
            show_envvar=True,
        ),
    ]

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(extra):
            func = option(func)
        return options.knobs(command)(func)

    return apply


def _run(command: str, stages: tuple[str, ...], opts: dict[str, Any]) -> None:
    from streamproc import running  # noqa: PLC0415 - keeps `check` and `send` fast to start

    logs.setup(opts["log_level"])
    topics = Topics(dead_letters=opts["dead_letter_topic"])
    if opts.get("input_topic"):
        topics = Topics(input=opts["input_topic"], dead_letters=opts["dead_letter_topic"])
    settings = dataclasses.replace(options.settings_of(command, opts), topics=topics)
    if "annotate" in stages and settings.fleet and not settings.cluster:
        raise click.UsageError(
            "--clusters or --cluster-contexts names a fleet: the annotator acts on one of its "
            "clusters, name it with --cluster (STREAMPROC_CLUSTER)"
        )
    loaded = options.load_topologies(settings, opts.get("input_topic"))
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


@click.command()
@_stage_options("run")
def run(**opts: Any) -> None:
    """Run ingest, windows and annotator in one process."""
    _run("run", ("ingest", "windows", "annotate"), opts)


@click.command()
@_stage_options("ingest")
def ingest(**opts: Any) -> None:
    """Run the ingest stage alone (scale out by partition)."""
    _run("ingest", ("ingest",), opts)


@click.command()
@_stage_options("windows")
def windows(**opts: Any) -> None:
    """Run the windows stage (Faust) alone."""
    _run("windows", ("windows",), opts)


@click.command()
@_stage_options("annotate")
def annotate(**opts: Any) -> None:
    """Run the annotator (and expirer) alone."""
    _run("annotate", ("annotate",), opts)
