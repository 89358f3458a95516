"""``check``: validate topology files the way every command that loads them would."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streamproc.model import topologies


@click.command()
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
