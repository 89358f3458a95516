"""``evidence``: what an observation saw of a workload's network, read from Prometheus.

Also what ``release`` leaves behind (:func:`after_release`): each released pod's evidence line
and a ``released`` audit record, as the expirer writes ``expired`` ones.

For a workload under observation now, over its pods' ``observed-since`` to now; for one whose
observation ended, over its last observation in ``--lookback``, as streamproc's own
``streamproc_observed_pod_since_seconds`` series remember it (value: the start; last sample:
the end). The same evidence the expirer writes into each expiry's audit record
(``cluster.evidencing``); docs/evidence.md shows both outputs.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click
import orjson

from streamproc.cli import options
from streamproc.model import conventions, durations, evidence, outcomes
from streamproc.settings import Settings


def _target(text: str) -> tuple[str, str, str]:
    parts = text.split("/")
    if len(parts) != 3 or not all(parts):
        raise click.BadParameter("use NAMESPACE/KIND/NAME, e.g. shop/Deployment/frontend")
    return parts[0], parts[1], parts[2]


def client_of(settings: Settings) -> Any:
    """The Prometheus of ``--prometheus-url``; a plain error when there is none."""
    from streamproc.clients import prometheus  # noqa: PLC0415 - only this command needs it

    if not settings.prometheus_url:
        raise click.ClickException(
            "no Prometheus to read evidence from: set --prometheus-url (STREAMPROC_PROMETHEUS_URL)"
        )
    return prometheus.Prometheus(
        settings.prometheus_url,
        timeout_s=settings.evidence_timeout_s,
        token_file=settings.prometheus_token_file,
        ca_file=settings.prometheus_ca_file,
    )


async def _live(settings: Settings, workload: tuple[str, str, str]) -> Any:
    """The workload's observation now, read from its pods' marks (None: not observed)."""
    from streamproc.clients import kube  # noqa: PLC0415 - only this command needs it
    from streamproc.cluster import marking, observing  # noqa: PLC0415
    from streamproc.cluster.resolving import WorkloadResolver  # noqa: PLC0415
    from streamproc.model import marks  # noqa: PLC0415 - only this command needs it

    # with the annotator's key, marks without its seal are not a live observation
    policy = marks.Policy(sealer=marking.sealer(settings.mark_key_file))
    client = await kube.Kube.connect(settings.kubeconfig, attempts=3)
    try:
        resolver = WorkloadResolver(client, cache_size=10_000, ttl_s=60)
        return await observing.find(client, resolver, workload, policy)
    finally:
        await client.close()


async def read(
    settings: Settings, workload: tuple[str, str, str], lookback_s: int
) -> tuple[evidence.Evidence, bool]:
    """The evidence of the workload's observation now, else of its last one; and whether live."""
    from streamproc.cluster import evidencing  # noqa: PLC0415 - only this command needs it

    now = time.time()
    live = await _live(settings, workload)
    prom = client_of(settings)
    try:
        if live is not None and live.since is not None and live.pods:
            target = live_target(live, now)
        else:
            found = await evidencing.last_observation(prom, workload, lookback_s=lookback_s)
            if found is None:
                raise click.ClickException(
                    f"{'/'.join(workload)}: no observation found in the last "
                    f"{durations.format_duration(lookback_s)} (streamproc_observed_pod_since_"
                    f"seconds has no series of it at {settings.prometheus_url})"
                )
            target = found.target(workload[0], now if live is not None else None)
        return await evidencing.gather(
            prom, target, total_s=2 * settings.evidence_timeout_s
        ), live is not None
    finally:
        await prom.close()


def live_target(live: Any, now: float) -> evidence.Target:
    """An observation under way as a range: each pod from its own ``observed-since`` to now."""
    starts = dict(zip(live.pods, live.starts, strict=False))
    pods = tuple(sorted(live.pods))
    own = tuple(starts.get(p) or live.since for p in pods)
    return evidence.Target(live.namespace, pods, live.since, now, own)


def _lookback(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        seconds = durations.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not 0 < seconds <= evidence.MAX_RANGE_S * 5:
        raise click.BadParameter("between 1s and 35d")
    return int(seconds)


@click.command("evidence")
@click.argument("target")
@click.option(
    "--lookback",
    default="7d",
    show_default=True,
    callback=_lookback,
    help="How far back to look for the workload's last observation when it has none now.",
)
@click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@options.knobs("evidence")
def evidence_command(target: str, lookback: int, output: str, **opts: Any) -> None:
    """Network evidence of NAMESPACE/KIND/NAME's observation (now, or its last one)."""
    workload = _target(target)
    settings = options.settings_of("evidence", opts)
    client_of(settings)  # the plain error before any connection
    found, live = asyncio.run(read(settings, workload, lookback))
    if found.missing in ("unreachable", "timeout", "http-error", "bad-answer"):
        raise click.ClickException(
            f"Prometheus at {settings.prometheus_url}: {found.detail} ({found.missing}); "
            "check --prometheus-url and that it answers"
        )
    if output == "json":
        click.echo(json.dumps({"workload": target, "live": live, **found.as_dict()}, indent=2))
        return
    show(target, found, live=live)


def show(target: str, found: evidence.Evidence, *, live: bool) -> None:
    """The evidence as a table a person reads at a glance."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    start, end = found.target.bounds()
    state = "under observation" if live else "last observation"
    click.echo(f"{target} ({state}) {start} -> {end}, pods: {', '.join(found.target.pods)}")
    if found.missing is not None:
        click.echo(f"no network evidence: {found.detail} ({found.missing})")
        return
    assert found.source is not None
    click.echo(f"from {evidence.SOURCE_NAMES[found.source]}: {found.summary()}")
    unit = "packets" if found.source == "retina" else "flows"
    table = Table("WHAT", "DETAIL", "COUNT", box=None)
    for direction, counts in sorted(found.forward.items()):
        size = f" / {evidence.human_bytes(counts['bytes'])}" if "bytes" in counts else ""
        table.add_row("forwarded", direction, f"{counts.get('packets', 0):,} {unit}{size}")
    for reason, n in sorted(found.drops.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row("dropped", reason, f"{n:,} {unit}")
    for flag, n in sorted(found.tcp_flags.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row("tcp flag", flag, f"{n:,}")
    for direction, n in sorted(found.retransmissions.items()):
        table.add_row("tcp retransmitted", direction, f"{n:,}")
    for query in found.dns:
        codes = ", ".join(f"{c} x{n:,}" for c, n in sorted(query.return_codes.items()))
        table.add_row(
            "dns", query.query, f"{query.count:,} queries" + (f" ({codes})" if codes else "")
        )
    Console(width=160).print(table)


#: the audit result of a release by hand
RELEASED: outcomes.Outcome = "released"


def released_records(
    settings: Settings,
    before: Any,
    pods: list[str],
    found: list[evidence.Evidence | None],
    now: float,
) -> list[tuple[bytes, bytes]]:
    """The ``released`` audit records (key, value): one per pod, or the Namespace object."""
    whole = before.kind == "Namespace"
    records = []
    for pod, seen in zip(pods, found, strict=True):
        doc = {
            "time": conventions.format_time(now),
            **({"cluster": settings.cluster} if settings.cluster else {}),
            "result": RELEASED,
            "topology": before.topology,
            "namespace": before.namespace,
            "kind": "Namespace" if whole else "Pod",
            "name": pod,
            "pods": [] if whole else [pod],
            "workload": f"{before.namespace}/{before.kind}/{before.workload}",
            **({"evidence": seen.as_dict()} if seen is not None else {}),
        }
        records.append((f"{before.namespace}/{doc['kind']}/{pod}".encode(), orjson.dumps(doc)))
    return records


def after_release(settings: Settings, before: Any, pods: list[str]) -> None:
    """Evidence of each released pod (with ``--prometheus-url``) and its ``released`` record.

    ``before``: the workload's observation as read before the release (its start, topology).
    An audit record that cannot be written is said on stderr; the release stands.
    """
    from streamproc.clients import kafka  # noqa: PLC0415 - only release needs it here
    from streamproc.cluster import evidencing  # noqa: PLC0415

    now = time.time()
    since = before.since if before.since is not None else now
    own = dict(zip(before.pods, before.starts, strict=False))  # each pod from its own start

    # a Namespace observation: one Namespace object, no pods of its own to read evidence of
    whole = before.kind == "Namespace"

    async def read() -> list[evidence.Evidence | None]:
        if not settings.prometheus_url or whole:
            return [None for _ in pods]
        client = client_of(settings)
        total_s = 2 * settings.evidence_timeout_s
        try:
            return list(
                await asyncio.gather(
                    *(
                        evidencing.gather(
                            client,
                            evidence.Target(before.namespace, (pod,), own.get(pod) or since, now),
                            total_s=total_s,
                        )
                        for pod in pods
                    )
                )
            )
        finally:
            await client.close()

    found = asyncio.run(read())
    for pod, seen in zip(pods, found, strict=True):
        if seen is not None:
            click.echo(f"evidence {pod}: {seen.summary()}")
    records = released_records(settings, before, pods, found, now)
    kafka.connect_errors.hide = True
    try:
        asyncio.run(kafka.publish(settings, settings.topics.audit, records))
    except kafka.KafkaError as exc:
        click.echo(f"streamproc: warning: no audit record written: {kafka.explain(exc)}", err=True)
