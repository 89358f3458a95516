"""The ``streamproc`` command: one module per command or group of commands.

``stages`` (run, ingest, windows, annotate), ``send`` (send, samples), ``check``, ``doctor``,
``operating`` (status, release), ``evidence``, ``simulate`` and ``lab``. Their options come from
the knobs in ``settings.py`` through ``options``; ``errors`` turns known failures into one plain
line.
"""

from __future__ import annotations

from typing import Any

import click

from streamproc import __version__, stopping
from streamproc.cli import check, doctor, errors, evidence, lab, operating, send, simulate, stages


class _Commands(click.Group):
    """Known failures become one plain line (traceback with --debug); Ctrl-C is not a crash."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("streamproc: interrupted", err=True)
            stopping.finish(130)
        except Exception as exc:
            line = errors.explain(exc)
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


for _command in (
    stages.run,
    stages.ingest,
    stages.windows,
    stages.annotate,
    send.send,
    send.samples,
    check.check,
    lab.lab,
    doctor.doctor,
    operating.status,
    operating.release,
    evidence.evidence_command,
    simulate.simulate,
):
    main.add_command(_command)
