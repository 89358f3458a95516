"""``status`` and ``release``: what is under observation now, and ending one early."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from streamproc.cli import options
from streamproc.clients import kafka
from streamproc.model import marks, tallies
from streamproc.settings import Settings


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


@click.command()
@options.knobs("status")
@click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status(
    kubeconfig: str | None, node_budget: int, mark_key_file: Path | None, output: str
) -> None:
    """Show what is under observation now, read from the cluster."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from streamproc.cluster import marking, observing  # noqa: PLC0415

    # with the annotator's key, marks without its seal are not shown as observations either
    policy = marks.Policy(sealer=marking.sealer(mark_key_file))

    async def work(client: Any, resolver: Any) -> Any:
        return await observing.current(client, resolver, policy)

    found = _cluster_command(kubeconfig, work)
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


@click.command()
@click.argument("target")
@click.option(
    "--forget",
    is_flag=True,
    help="Also drop its escalation history: its next observation starts at level 1.",
)
@options.knobs("release")
def release(target: str, forget: bool, **opts: Any) -> None:
    """End an observation early: NAMESPACE/WORKLOAD or NAMESPACE/KIND/WORKLOAD."""
    from streamproc.cluster import marking, observing  # noqa: PLC0415

    parts = target.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise click.BadParameter("use NAMESPACE/WORKLOAD or NAMESPACE/KIND/WORKLOAD")
    namespace, name = parts[0], parts[-1]
    kind = parts[1] if len(parts) == 3 else None
    settings = options.settings_of("release", opts)
    loaded = options.load_topologies(settings)
    # what the topologies write: a key a person changed since is theirs and stays; with the
    # annotator's key, sealed marks are recognised as it recognises them
    policy = marks.Policy.of(loaded, sealer=marking.sealer(settings.mark_key_file))

    async def work(client: Any, resolver: Any) -> tuple[list[str], str | None, Any, str]:
        from streamproc.clients import kube  # noqa: PLC0415 - only the cluster commands need it

        # its start, for the evidence of the range it lasted (read before the marks go)
        before = await observing.find(client, resolver, (namespace, kind, name), policy)
        pods, found = await observing.release(client, resolver, namespace, kind, name, policy)
        # acns-metric-filters: the pods are released; their filters go with them now. The marks
        # are gone already, which is the release: a filter left behind is the annotator's to
        # remove at its next round, not a failure of this command
        lagging = ""
        try:
            await observing.project_filters(client, loaded, settings.observation_backend, policy)
        except kube.KubeError as exc:
            lagging = str(exc)
        return pods, found, before, lagging

    pods, found, before, lagging = _cluster_command(settings.kubeconfig, work)
    found_kind = kind or found
    if pods:
        click.echo(f"released {target}: {len(pods)} pods ({', '.join(pods)})")
        if lagging:
            click.echo(f"the filters follow at the annotator's next round: {lagging}")
        if before is not None:  # the trail: evidence (with a Prometheus) and audit records
            from streamproc.cli import evidence  # noqa: PLC0415

            evidence.after_release(settings, before, pods)
    elif not forget:
        raise click.ClickException(f"{target} is not under observation")
    if forget:
        if found_kind is None:
            raise click.BadParameter(
                f"{target} is not under observation: name its kind, NAMESPACE/KIND/WORKLOAD"
            )
        _forget(settings, namespace, found_kind, name)


def _forget(settings: Settings, namespace: str, kind: str, name: str) -> None:
    """Ask the windows stage to drop the workload's history in every topology with a ladder."""
    try:
        records = tallies.forgetting(
            options.load_topologies(settings), namespace, kind, name, settings.cluster
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not records:
        click.echo("no topology has an escalation ladder: no history to forget")
        return
    kafka.connect_errors.hide = True
    keyed = [(r.workload_key.encode(), r.encode()) for r in records]
    asyncio.run(kafka.publish(settings, settings.topics.tallies, keyed))
    click.echo(
        f"forgot the escalation history of {namespace}/{kind}/{name} in "
        + ", ".join(r.topology for r in records)
    )
