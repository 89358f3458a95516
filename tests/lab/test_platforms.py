"""The lab's platform shapes, and how it reads the ContainerNetworkMetric's filters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from streamproc.lab import platforms, session
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.view import View


def ours(name: str) -> dict[str, Any]:
    return {"name": f"streamproc.io/{name}", "from": {"namespacedPod": [f"shop/{name}"]}}


def test_each_shape_holds_what_doctor_tells_it_by() -> None:
    """Nodes everywhere; AKS labels off the plain shape; the CNM CRD and Cilium only on one."""
    for name in platforms.PLATFORMS:
        shape = platforms.build(name)
        kinds = [o["kind"] for o in shape.builder.objects]
        nodes = [o for o in shape.builder.objects if o["kind"] == "Node"]
        assert len(nodes) == 2
        aks = any(k.startswith("kubernetes.azure.com/") for k in nodes[0]["metadata"]["labels"])
        assert aks == (name != "retina")
        cilium = nodes[0]["metadata"]["labels"].get("kubernetes.azure.com/ebpf-dataplane")
        assert (cilium == "cilium") == (name == "aks-acns-cilium")
        assert ("CustomResourceDefinition" in kinds) == (name == "aks-acns-cilium")
        assert (platforms.CNM in shape.uninstalled) == (name != "aks-acns-cilium")
        assert ("ContainerNetworkMetric" in kinds) == (name == "aks-acns-cilium")


def test_filters_are_counted_as_streamprocs_or_the_users_and_junk_is_skipped() -> None:
    """Only include filters named streamproc.io. are ours; anything not a filter counts nothing."""
    metric = platforms.user_metric()
    assert platforms.filter_counts(metric) == (0, 1)
    metric["spec"]["filters"].append(
        {"metric": "flow", "includeFilters": [ours("a"), ours("b"), {"name": "mine"}, "junk"]}
    )
    metric["spec"]["filters"].append("junk")
    assert platforms.filter_counts(metric) == (2, 2)
    for odd in (None, {}, {"spec": []}, {"spec": {"filters": {"a": 1}}}):
        assert platforms.filter_counts(odd) == (0, 0)


def test_the_lab_sees_streamprocs_filters_come_and_go_and_the_users_stay() -> None:
    """As a backend would: a filter of ours added, then removed; the summary says both."""
    emulator = KubeEmulator()
    platforms.build("aks-acns-cilium").load(emulator)
    view, summary = View(live=False), session.Summary()
    session.watch_filters(emulator, "aks-acns-cilium", view, summary)
    assert view.filters == (0, 1)
    filters = [
        *platforms.user_metric()["spec"]["filters"],
        {"metric": "flow", "includeFilters": [ours("a")]},
    ]
    emulator.update(
        "ContainerNetworkMetric", "", platforms.CNM_NAME, {"spec": {"filters": filters}}
    )
    session.watch_filters(emulator, "aks-acns-cilium", view, summary)
    assert view.filters == (1, 1)
    emulator.update(
        "ContainerNetworkMetric", "", platforms.CNM_NAME, {"spec": {"filters": filters[:1]}}
    )
    session.watch_filters(emulator, "aks-acns-cilium", view, summary)
    summary.platform, summary.backend = "aks-acns-cilium", "acns-metric-filters"
    lines = "\n".join(summary.lines())
    assert "metric filters     1 streamproc.io at most, 0 at the end" in lines
    assert "user's filters     1 of 1 kept as written" in lines
    assert "an entry that only excluded pods collects only the observed ones" in lines


def test_a_lost_user_filter_is_a_failure_in_the_summary() -> None:
    """streamproc must never drop the user's own filters from the singleton."""
    summary = session.Summary(
        metric_filters_peak=1, metric_filters_end=0, user_filters_start=1, user_filters_end=0
    )
    assert "user's filters     0 of 1 FAILED: not all kept" in "\n".join(summary.lines())


def test_the_default_lab_has_no_filter_lines() -> None:
    """The plain Retina lab shows no ContainerNetworkMetric (it has none to read)."""
    emulator = KubeEmulator()
    view, summary = View(live=False), session.Summary()
    session.watch_filters(emulator, "retina", view, summary)
    assert view.filters is None
    assert "metric filters" not in "\n".join(summary.lines())


def test_the_next_steps_serve_the_same_platform_for_kubectl() -> None:
    """After an AKS lab, the kubectl suggestion serves that platform again, not the plain one."""
    options = session.LabOptions(platform="aks-acns-cilium")
    steps = "\n".join(
        session.next_steps(options, session.Summary(platform="aks-acns-cilium", replay_total=1))
    )
    assert (
        "python -m streamproc.lab.kubeemu --kubeconfig lab.kubeconfig --platform aks-acns-cilium"
        in steps
    )
    plain = "\n".join(session.next_steps(session.LabOptions(), session.Summary(replay_total=1)))
    assert "--platform" not in plain


def test_the_emulator_serves_a_platform_on_its_own(tmp_path: Path) -> None:
    """python -m streamproc.lab.kubeemu --platform: nodes with their labels, and the CNM."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamproc.lab.kubeemu", "--platform", "aks-acns-cilium"),
            *("--kubeconfig", str(tmp_path / "kubeconfig")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        def get(path: str) -> dict[str, Any]:
            with urllib.request.urlopen(url + path, timeout=5) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]

        nodes = get("/api/v1/nodes")["items"]
        assert {n["metadata"]["labels"]["kubernetes.azure.com/ebpf-dataplane"] for n in nodes} == {
            "cilium"
        }
        metric = get(f"/apis/acn.azure.com/v1alpha1/containernetworkmetrics/{platforms.CNM_NAME}")
        assert platforms.filter_counts(metric) == (0, 1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
