"""Doctor checks of the evidence's Prometheus: it answers, and it holds Retina's pod series.

Without ``--prometheus-url`` observations still work, they only end without network evidence:
a warning, not a failure. With one, the URL must answer (``/api/v1/status/buildinfo``) and hold
Retina's ``networkobservability_*`` series or ACNS's ``hubble_*`` ones; a bounded ``count(...)``
asks which (``model.evidence.SCRAPED``). Series that exist with nothing observed, so a healthy
setup passes before its first observation. Reads only.
"""

from __future__ import annotations

from collections.abc import Mapping

from streamproc.clients import prometheus
from streamproc.doctor import checks
from streamproc.doctor.checks import Check
from streamproc.model import evidence
from streamproc.settings import Settings

AREA = "Evidence"
DOCS = "docs/evidence.md"


async def evidence_checks(settings: Settings) -> list[Check]:
    """The Prometheus of ``--prometheus-url`` answers and scrapes Retina's (or Hubble's) series."""
    if not settings.prometheus_url:
        return [
            checks.warn(
                AREA,
                "prometheus",
                "no --prometheus-url: observations end without their network evidence",
                f"set --prometheus-url to the Prometheus that scrapes Retina ({DOCS})",
            )
        ]
    client = prometheus.Prometheus(
        settings.prometheus_url,
        timeout_s=settings.evidence_timeout_s,
        token_file=settings.prometheus_token_file,
        ca_file=settings.prometheus_ca_file,
    )
    try:
        return await _checks(client)
    finally:
        await client.close()


async def _checks(client: prometheus.Prometheus) -> list[Check]:
    try:
        info = await client.get("/api/v1/status/buildinfo")
        version = _version(info)
    except prometheus.PrometheusError as exc:
        return [
            checks.fail(
                AREA,
                "prometheus",
                f"{client.url} does not answer: {exc}",
                "check --prometheus-url, --prometheus-token-file and --prometheus-ca-file",
            )
        ]
    found = [checks.ok(AREA, "prometheus", f"Prometheus {version} answers at {client.url}")]
    counts: dict[evidence.Source, int] = {}
    try:
        for source, expr in evidence.SCRAPED.items():
            samples = evidence.vector(await client.get("/api/v1/query", {"query": expr}))
            counts[source] = int(sum(value for _, value in samples))
    except (prometheus.PrometheusError, evidence.BadAnswer) as exc:
        return [
            *found,
            checks.warn(AREA, "series", f"could not count the series: {exc}", "check by hand"),
        ]
    if counts.get("retina"):
        detail = f"{counts['retina']} of Retina's series (networkobservability_*)"
        found.append(checks.ok(AREA, "series", detail))
    elif counts.get("hubble"):
        detail = f"{counts['hubble']} of ACNS Hubble's series (hubble_*), no Retina ones"
        found.append(checks.ok(AREA, "series", detail))
    else:
        found.append(
            checks.fail(
                AREA,
                "series",
                "neither networkobservability_* nor hubble_* series are scraped there",
                "enable Retina's advanced pod-level metrics in annotation mode and have this "
                f"Prometheus scrape the agents ({DOCS})",
            )
        )
    return found


def _version(info: object) -> str:
    """The version a buildinfo answer names ("unknown version" when it names none)."""
    data = info.get("data") if isinstance(info, Mapping) else None
    version = data.get("version") if isinstance(data, Mapping) else None
    return str(version)[:40] if isinstance(version, str) else "(unknown version)"
