"""Doctor's evidence checks against a real Prometheus: it answers, and holds Retina's series."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.doctor import evidence as evidence_doctor
from streamproc.lab.broker import free_port
from streamproc.lab.retina_exporter import ExportedPod, Family, RetinaExporter
from streamproc.settings import Settings
from tests.conftest import async_wait_for
from tests.prometheus_server import running_prometheus

pytestmark = pytest.mark.e2e


def statuses(found: list[object]) -> dict[str, str]:
    return {c.name: c.status for c in found}  # type: ignore[attr-defined]


async def test_without_a_prometheus_url_evidence_is_a_warning_not_a_failure() -> None:
    """Observations still work: they only end without their evidence."""
    found = await evidence_doctor.evidence_checks(Settings())
    assert statuses(found) == {"prometheus": "warn"}
    assert "--prometheus-url" in found[0].fix


async def test_a_prometheus_that_does_not_answer_fails_with_the_fix() -> None:
    """Nothing listens there: one failed line naming the knobs to check."""
    settings = Settings(prometheus_url=f"http://127.0.0.1:{free_port()}", evidence_timeout_s=2)
    found = await evidence_doctor.evidence_checks(settings)
    assert statuses(found) == {"prometheus": "fail"}
    assert "--prometheus-url" in found[0].fix


@pytest.mark.parametrize(
    ("families", "series", "detail"),
    [
        (("retina",), "ok", "Retina's series"),
        (("hubble",), "ok", "Hubble's series"),
        ((), "fail", "neither networkobservability_* nor hubble_*"),
    ],
    ids=["retina", "acns-hubble", "none"],
)
async def test_the_series_check_says_which_exporter_is_scraped(
    tmp_path: Path, families: tuple[Family, ...], series: str, detail: str
) -> None:
    """Retina's series pass, Hubble's pass for ACNS, neither fails: evidence would be empty."""
    pods = [ExportedPod("shop", "web-0", workload_name="web")]
    exporter = RetinaExporter(pods, families=families)
    exporter.observe("shop/web-0")
    with exporter, running_prometheus(tmp_path, {"retina": exporter.target}) as prom:
        if families:  # until a scrape has the observed series (a bounded wait)
            expr = 'count({__name__=~"networkobservability_adv_forward_count|hubble_flows_.+"})'
            await async_wait_for(lambda: prom.has(expr), timeout=30, what="the observed series")
        found = await evidence_doctor.evidence_checks(Settings(prometheus_url=prom.url))
    assert statuses(found) == {"prometheus": "ok", "series": series}
    assert detail in found[1].detail
    assert "Prometheus 2." in found[0].detail


async def test_a_healthy_setup_with_nothing_observed_yet_passes(tmp_path: Path) -> None:
    """Retina scraped, no pod observed (no adv_forward/adv_drop series): ok, not a failure."""
    exporter = RetinaExporter([ExportedPod("shop", "web-0", workload_name="web")])
    with exporter, running_prometheus(tmp_path, {"retina": exporter.target}) as prom:
        expr = 'count({__name__="networkobservability_forward_count"})'
        await async_wait_for(lambda: prom.has(expr), timeout=30, what="the node-level series")
        assert not prom.has('count({__name__=~"networkobservability_adv_(forward|drop)_count"})')
        found = await evidence_doctor.evidence_checks(Settings(prometheus_url=prom.url))
    assert statuses(found) == {"prometheus": "ok", "series": "ok"}
