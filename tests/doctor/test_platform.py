"""Doctor tells the platform apart, names the mechanism that works there, fits its fixes to it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamproc.cluster import permissions
from streamproc.doctor import diagnosing, platform
from streamproc.doctor.checks import Check
from streamproc.lab import platforms
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.lab.kubeemu.resources import rbac_verb
from streamproc.model import topologies
from streamproc.settings import OBSERVATION_BACKENDS, Settings
from tests.conftest import topology

ROOT = Path(__file__).resolve().parents[2]
PLAIN = topologies.load_path(ROOT / "topologies")
#: how docs/aks.md marks the doctor output it shows for a shape
DOC_BLOCK = re.compile(r"<!-- doctor: ([\w-]+) ([\w-]+) -->\n```text\n(.*?)```", re.DOTALL)


def workloads() -> ClusterBuilder:
    builder = ClusterBuilder()
    builder.deployment("shop", "frontend", 2, "nginx:1.27")
    return builder


@contextlib.contextmanager
def serving(
    tmp_path: Path, shape: platforms.Shape, tweak: Callable[[KubeEmulator], None] | None = None
) -> Iterator[tuple[KubeEmulator, Path]]:
    emulator = KubeEmulator()
    shape.load(emulator)
    if tweak is not None:
        tweak(emulator)
    with emulator.serve():
        yield emulator, emulator.write_kubeconfig(tmp_path / "kubeconfig")


async def doctor_on(
    tmp_path: Path,
    shape: platforms.Shape,
    backend: str = "retina-annotation",
    tweak: Callable[[KubeEmulator], None] | None = None,
    loaded: list[topologies.Topology] | None = None,
) -> list[Check]:
    with serving(tmp_path, shape, tweak) as (_, kubeconfig):
        settings = Settings(kubeconfig=str(kubeconfig), observation_backend=backend)
        return await diagnosing.cluster_checks(settings, PLAIN if loaded is None else loaded)


def shape(name: platforms.PlatformName, **kwargs: bool) -> platforms.Shape:
    return platforms.build(name, workloads(), **kwargs)


def named(found: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in found if c.area == platform.AREA}


def no_helm(found: list[Check]) -> None:
    helm = [c for c in found if "helm" in c.fix]
    assert not helm, helm


async def test_a_plain_cluster_with_standard_retina_works_by_annotation(tmp_path: Path) -> None:
    """Retina from its chart, not AKS: the annotation works and is the configured backend."""
    found = await doctor_on(tmp_path, shape("retina"))
    checks = named(found)
    assert "not AKS" in checks["platform"].detail
    assert "Standard control plane, self-installed" in checks["Retina agent"].detail
    assert checks["mechanism"].detail == "works here: " + platform.MECHANISMS["retina-annotation"]
    assert checks["backend"].status == "ok"
    assert "ContainerNetworkMetric CRD" not in checks
    assert {c.status for c in found} == {"ok"}, [c for c in found if c.status != "ok"]


async def test_acns_on_azure_cni_says_pods_cannot_be_selected_and_never_advises_helm(
    tmp_path: Path,
) -> None:
    """ACNS without Cilium: Hubble control plane, all pods or none; disable ACNS or use Cilium."""
    found = await doctor_on(tmp_path, shape("aks-acns"))
    checks = named(found)
    assert "AKS (2 of 2 nodes" in checks["platform"].detail
    assert "no Cilium dataplane" in checks["platform"].detail
    agent = checks["Retina agent"].detail
    assert "Hubble control plane, managed by AKS (ACNS)" in agent
    for marker in (
        "label kubernetes.azure.com/managedby=aks",
        "image mcr.microsoft.com/containernetworking/retina-agent",
        "args hubble-control-plane",
        "ConfigMap keys enable-hubble, hubble-metrics-server",
        "Service kube-system/network-observability port hubble 9965",
    ):
        assert marker in agent
    assert "not installed" in checks["ContainerNetworkMetric CRD"].detail
    mechanism = checks["mechanism"]
    assert mechanism.status == "fail"
    assert mechanism.detail.startswith("none:")
    assert "all pods or none" in mechanism.detail
    assert "--disable-acns-observability" in mechanism.fix
    assert "install OSS Retina" in mechanism.fix
    assert "Do not install a second Retina" in mechanism.fix
    assert "backend" not in checks
    assert not [c for c in found if c.area == "Retina"], "no Retina checks on a managed agent"
    no_helm(found)


@pytest.mark.parametrize("agent", [False, True], ids=["cilium only", "with AKS's retina-agent"])
async def test_acns_on_cilium_with_the_crd_works_by_metric_filters(
    tmp_path: Path, agent: bool
) -> None:
    """ACNS on Cilium with the CNM CRD: filters work, and acns-metric-filters is ✔."""
    found = await doctor_on(
        tmp_path, shape("aks-acns-cilium", agent=agent), backend="acns-metric-filters"
    )
    checks = named(found)
    assert "Cilium dataplane on 2 of 2 nodes" in checks["platform"].detail
    assert (
        "containernetworkmetrics.acn.azure.com served"
        in checks["ContainerNetworkMetric CRD"].detail
    )
    assert checks["mechanism"].detail == "works here: ACNS ContainerNetworkMetric filters"
    assert checks["backend"].status == "ok"
    assert "acns-metric-filters" in checks["backend"].detail
    # the shape's user excludes coredns from dns only: streamproc's includes would narrow it
    assert checks["metric filters"].status == "warn"
    assert not [c for c in found if c.status != "ok" and c.name != "metric filters"], found
    no_helm(found)


async def test_acns_on_cilium_with_the_annotation_backend_fails_naming_the_setting(
    tmp_path: Path,
) -> None:
    """The default backend on ACNS-on-Cilium: ✘ backend, whose fix names the other value."""
    found = await doctor_on(tmp_path, shape("aks-acns-cilium", agent=True))
    checks = named(found)
    backend = checks["backend"]
    assert backend.status == "fail"
    assert "ACNS's Hubble control plane ignores retina.sh annotations" in backend.detail
    assert backend.fix.startswith("set --observation-backend acns-metric-filters")
    no_helm(found)


@pytest.mark.parametrize("agent", [False, True], ids=["cilium only", "with AKS's retina-agent"])
async def test_cilium_without_the_crd_asks_for_the_preview_not_for_helm_over_aks(
    tmp_path: Path, agent: bool
) -> None:
    """Cilium on AKS, no CNM CRD: ✘ naming the preview's needs; helm only with nothing managed."""
    built = shape("aks-acns-cilium", agent=agent)
    built.uninstalled.add(platforms.CNM)
    found = await doctor_on(tmp_path, built, backend="acns-metric-filters")
    mechanism = named(found)["mechanism"]
    assert mechanism.status == "fail"
    assert "the Cilium dataplane, but containernetworkmetrics.acn.azure.com is not installed" in (
        mechanism.detail
    )
    assert "Kubernetes >= 1.32" in mechanism.fix
    assert ("helm" in mechanism.fix) == (not agent)


async def test_aks_with_a_self_installed_retina_works_by_annotation_not_by_filters(
    tmp_path: Path,
) -> None:
    """OSS Retina on AKS: annotations work; asking for metric filters is ✘ with the other value."""
    found = await doctor_on(tmp_path, shape("aks-retina"), backend="acns-metric-filters")
    checks = named(found)
    assert "AKS (2 of 2 nodes" in checks["platform"].detail
    assert "Standard control plane, self-installed" in checks["Retina agent"].detail
    assert checks["mechanism"].detail == "works here: " + platform.MECHANISMS["retina-annotation"]
    assert checks["backend"].status == "fail"
    assert checks["backend"].fix.startswith("set --observation-backend retina-annotation")
    assert {c.name for c in found if c.area == "Retina"} >= {"annotations", "node budget"}


async def test_no_retina_at_all_fails_the_mechanism_with_the_install(tmp_path: Path) -> None:
    """Nothing observes pods: ✘ mechanism, and installing Retina is the fix (nothing managed)."""
    builder = workloads()
    platforms.nodes(builder, aks=False)
    bare = platforms.Shape("retina", builder, {platforms.CNM})
    checks = named(await doctor_on(tmp_path, bare))
    assert checks["Retina agent"].detail.startswith("none")
    assert checks["mechanism"].status == "fail"
    assert "helm upgrade --install retina" in checks["mechanism"].fix


async def test_a_doctor_that_may_not_list_nodes_warns_and_still_names_the_mechanism(
    tmp_path: Path,
) -> None:
    """403 on nodes: ⚠ platform with the permission to ask for; the CRD still tells ACNS."""
    found = await doctor_on(
        tmp_path,
        shape("aks-acns-cilium"),
        backend="acns-metric-filters",
        tweak=lambda e: e.denied.add(("", "nodes", "list")),
    )
    checks = named(found)
    assert checks["platform"].status == "warn"
    assert "cannot list nodes" in checks["platform"].detail
    assert "list nodes" in checks["platform"].fix
    assert checks["mechanism"].detail == "works here: ACNS ContainerNetworkMetric filters"


@pytest.mark.parametrize(
    ("name", "mechanism"), [("aks-acns-cilium", "ok"), ("aks-acns", "warn"), ("retina", "warn")]
)
async def test_a_doctor_that_may_not_list_daemonsets_judges_what_it_can(
    tmp_path: Path, name: platforms.PlatformName, mechanism: str
) -> None:
    """403 on DaemonSets: the CRD still tells ACNS on Cilium; elsewhere ⚠, never a guess."""
    found = await doctor_on(
        tmp_path,
        shape(name),
        backend="acns-metric-filters",
        tweak=lambda e: e.denied.add(("apps", "daemonsets", "list")),
    )
    checks = named(found)
    assert checks["mechanism"].status == mechanism
    assert "Retina agent" not in checks
    assert not [c for c in found if c.status == "fail"], found
    no_helm(found)


async def test_acns_markers_alone_tell_aks_when_nodes_and_the_service_are_forbidden(
    tmp_path: Path,
) -> None:
    """No nodes, no Service: the agent's own markers still make it AKS's, so no helm fix."""

    def deny(emulator: KubeEmulator) -> None:
        emulator.denied |= {("", "nodes", "list"), ("", "services", "get")}

    found = await doctor_on(tmp_path, shape("aks-acns"), tweak=deny)
    checks = named(found)
    assert checks["platform"].status == "warn"
    assert "Service" not in checks["Retina agent"].detail
    assert checks["mechanism"].status == "fail"
    assert "--disable-acns-observability" in checks["mechanism"].fix
    no_helm(found)


async def test_a_managed_standard_agent_gets_no_helm_or_configmap_fix(tmp_path: Path) -> None:
    """AKS's own Standard-plane agent (not ACNS) with pod-level off: the fix leaves it alone."""
    built = shape("aks-retina")
    for obj in built.builder.objects:
        if obj["kind"] == "DaemonSet" and obj["metadata"]["name"] == "retina-agent":
            obj["metadata"]["labels"] |= platforms.MANAGED
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "retina-config":
            obj["data"]["config.yaml"] = obj["data"]["config.yaml"].replace(
                "enablePodLevel: true", "enablePodLevel: false"
            )
    found = await doctor_on(tmp_path, built)
    assert "Standard control plane, managed by AKS" in named(found)["Retina agent"].detail
    pod_level = next(c for c in found if c.name == "pod-level metrics")
    assert pod_level.status == "fail"
    assert "managed by AKS" in pod_level.fix
    no_helm(found)


def test_odd_api_answers_are_skipped_not_fatal() -> None:
    """Nodes and marker objects of the wrong shapes count as nothing, and never raise."""
    odd: list[object] = [
        "node",
        {"metadata": "x"},
        {"metadata": {"labels": ["kubernetes.azure.com/x"]}},
        {"metadata": {"labels": {"kubernetes.azure.com/ebpf-dataplane": "cilium"}}},
    ]
    assert platform.read_nodes(odd) == platform.Nodes(total=3, aks=1, cilium=1)
    agent = platform.retina.Agent("kube-system", "retina-agent", "x/retina-agent:v1", (), {})
    assert platform.agent_markers(
        agent, {"data": ["enable-hubble"]}, {"spec": {"ports": 9965}}
    ) == (
        [],
        [],
    )


async def test_every_read_doctor_makes_is_in_its_permission_list(tmp_path: Path) -> None:
    """Doctor's requests, measured at the API server, are permissions.DOCTOR or the stages' own."""
    with serving(tmp_path, shape("aks-acns-cilium", agent=True)) as (emulator, kubeconfig):
        await diagnosing.cluster_checks(Settings(kubeconfig=str(kubeconfig)), PLAIN)
        requests = list(emulator.requests)
    listed = {(p.group, p.resource, p.verb) for p in permissions.DOCTOR}
    made = set()
    for r in requests:
        parts = [p for p in r.path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) > 2:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3 and parts[1] != "authorization.k8s.io":
            group, rest = parts[1], parts[3:]
        else:
            continue  # discovery, version, access reviews: open to every identity
        if rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]
        made.add((group, rest[0], rbac_verb(r.method, len(rest) > 1, "")))
    assert ("", "nodes", "list") in made
    assert made <= listed, sorted(made - listed)


def test_the_docs_table_of_doctors_reads_is_the_code_list() -> None:
    """docs/operating.md shows permissions.DOCTOR as the module prints it."""
    page = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    assert permissions.doctor_markdown() in page


def test_the_mechanisms_that_select_pods_are_the_backends() -> None:
    """Doctor's mechanisms, but "none", are exactly the values --observation-backend takes."""
    assert [m for m in platform.MECHANISMS if m != "none"] == list(OBSERVATION_BACKENDS)


# ---- the output docs/aks.md shows -----------------------------------------------------------


async def render(tmp_path: Path, name: str, backend: str) -> str:
    """The Platform section of doctor's report on a shape, as docs/aks.md shows it."""
    found = await doctor_on(tmp_path, shape(name), backend=backend)  # type: ignore[arg-type]
    section = [c for c in found if c.area == platform.AREA]
    return "\n".join(diagnosing.lines(section)[:-2]) + "\n"


async def test_the_doctor_output_docs_aks_shows_is_what_doctor_says(tmp_path: Path) -> None:
    """Each doctor block of docs/aks.md is generated from the shape it names (paste on change)."""
    page = (ROOT / "docs" / "aks.md").read_text(encoding="utf-8")
    blocks = DOC_BLOCK.findall(page)
    assert {name for name, _, _ in blocks} == set(platforms.PLATFORMS)
    for name, backend, shown in blocks:
        wanted = await render(tmp_path, name, backend)
        assert shown == wanted, f"docs/aks.md, {name} {backend}: paste\n{wanted}"


def test_the_helm_command_docs_aks_shows_sets_what_doctor_checks() -> None:
    """The page's install sets every flag of doctor's own install line, as the lab's Retina has."""
    page = (ROOT / "docs" / "aks.md").read_text(encoding="utf-8")
    (command,) = re.findall(r"```shell\n(helm upgrade --install retina .*?)```", page, re.DOTALL)
    shown = dict(re.findall(r"--set (\w[\w.]*)=(\S+)", command))
    wanted = dict(re.findall(r"--set (\w[\w.]*)=(\S+)", platform.retina.INSTALL))
    assert wanted.items() <= shown.items()
    assert shown["remoteContext"] == "false"
    config = platforms.sample_cluster().objects
    (config_map,) = [o for o in config if o["kind"] == "ConfigMap"]
    for key in ("enableAnnotations", "enablePodLevel", "remoteContext"):
        assert f"{key}: {shown[key]}" in config_map["data"]["config.yaml"]


def oss_service(builder: ClusterBuilder) -> None:
    """The network-observability Service as OSS Retina's own manifests ship it (no AKS label)."""
    platforms.network_observability_service(builder)
    builder.objects[-1]["metadata"]["labels"] = {"k8s-app": "retina"}


@pytest.mark.parametrize("plane", ["standard", "hubble"])
async def test_a_self_installed_retina_with_its_metrics_service_is_not_called_aks_managed(
    tmp_path: Path, plane: str
) -> None:
    """OSS Retina ships kube-system/network-observability too: not AKS's, helm fixes allowed."""
    built = shape("retina")
    oss_service(built.builder)
    for obj in built.builder.objects:
        if obj["kind"] == "DaemonSet" and obj["metadata"]["name"] == "retina-agent":
            container = obj["spec"]["template"]["spec"]["containers"][0]
            assert container["image"].startswith("ghcr.io/microsoft/retina/")
            if plane == "hubble":
                container["args"] = ["hubble-control-plane", "--config-dir", "/retina/config"]
        if plane == "standard" and obj["metadata"]["name"] == "retina-config":
            obj["data"]["config.yaml"] = obj["data"]["config.yaml"].replace(
                "enablePodLevel: true", "enablePodLevel: false"
            )
    found = await doctor_on(tmp_path, built)
    checks = named(found)
    assert "not AKS" in checks["platform"].detail
    assert "self-installed" in checks["Retina agent"].detail
    assert "managed by AKS" not in " ".join(c.detail + c.fix for c in found)
    if plane == "standard":
        assert checks["mechanism"].status == "ok"
        pod_level = next(c for c in found if c.name == "pod-level metrics")
        assert pod_level.status == "fail"
        assert "helm" in pod_level.fix
    else:
        assert checks["mechanism"].status == "fail"
        assert "Standard control plane" in checks["mechanism"].fix
        assert "helm" in checks["mechanism"].fix


def test_agent_markers_without_aks_nodes_do_not_make_the_cluster_aks() -> None:
    """Nodes that were read and have no AKS label: not AKS, whatever the agent looks like."""
    agent = platform.retina.Agent(
        "kube-system",
        "retina-agent",
        "mcr.microsoft.com/containernetworking/retina-agent:v1",
        ("retina-config",),
        {},
    )
    found = platform.Platform(platform.Nodes(2, 0, 0), agent, ("image mcr...",))
    assert found.aks is False
    assert platform.Platform(None, agent, ("image mcr...",)).aks is True


async def test_topologies_that_all_choose_metric_filters_pass_on_acns_cilium(
    tmp_path: Path,
) -> None:
    """Default setting retina-annotation, but every topology chooses acns-metric-filters: ✔."""
    loaded = [topology(name=name, backend="acns-metric-filters") for name in ("shells", "miners")]
    found = await doctor_on(tmp_path, shape("aks-acns-cilium"), loaded=loaded)
    checks = named(found)
    assert not [c for c in checks.values() if c.status != "ok" and c.name != "metric filters"]
    assert "used by no topology" in checks["backend"].detail
    assert "topology miners: spec.action.backend acns-metric-filters" in (
        checks["backend of miners"].detail
    )


async def test_a_topology_choosing_the_annotation_on_acns_cilium_fails_naming_it(
    tmp_path: Path,
) -> None:
    """The deployment's backend works, but one topology's spec.action.backend does not: ✘ it."""
    loaded = [topology(name="shells"), topology(name="miners", backend="retina-annotation")]
    found = await doctor_on(
        tmp_path, shape("aks-acns-cilium"), backend="acns-metric-filters", loaded=loaded
    )
    checks = named(found)
    assert checks["backend"].status == "ok"
    failed = checks["backend of miners"]
    assert failed.status == "fail"
    assert "topology miners: spec.action.backend retina-annotation" in failed.detail
    assert failed.fix == "set spec.action.backend: acns-metric-filters in topology miners"
    assert "backend of shells" not in checks


def _users(filters: list[dict[str, object]]) -> Callable[[KubeEmulator], None]:
    def put(emulator: KubeEmulator) -> None:
        emulator.update(
            "ContainerNetworkMetric", "", platforms.CNM_NAME, {"spec": {"filters": filters}}
        )

    return put


EXCLUDE = {"from": {"namespacedPod": ["kube-system/coredns"]}}
INCLUDE = {"name": "team", "from": {"labelSelector": {"matchLabels": {"t": "f"}}}}


@pytest.mark.parametrize(
    ("filters", "metrics", "warned"),
    [
        ([{"metric": "dns", "excludeFilters": [EXCLUDE]}], ["dns"], "the dns entry"),
        ([{"metric": "dns", "excludeFilters": [EXCLUDE]}], ["flow"], None),
        (
            [{"metric": "dns", "excludeFilters": [EXCLUDE], "includeFilters": [INCLUDE]}],
            ["dns"],
            None,
        ),
        ([{"metric": "flow", "includeFilters": [INCLUDE]}], ["flow", "dns"], None),
    ],
    ids=["exclude-only", "another metric", "includes already", "includes only"],
)
async def test_doctor_warns_when_streamprocs_includes_would_narrow_an_exclude_only_entry(
    tmp_path: Path, filters: list[dict[str, object]], metrics: list[str], warned: str | None
) -> None:
    """An entry of a metric streamproc adds to, with exclude filters only: ⚠ naming the metric."""
    loaded = [topology(name="shells", backend="acns-metric-filters", metrics=metrics)]
    found = await doctor_on(
        tmp_path, shape("aks-acns-cilium"), loaded=loaded, tweak=_users(filters)
    )
    checks = named(found)
    if warned is None:
        assert "metric filters" not in checks
    else:
        assert checks["metric filters"].status == "warn"
        assert warned in checks["metric filters"].detail
        assert "exclude filters only" in checks["metric filters"].detail


async def test_doctor_warns_that_creating_the_object_narrows_collection(tmp_path: Path) -> None:
    """No ContainerNetworkMetric yet: ⚠, creating it narrows ACNS to the observed pods."""
    found = await doctor_on(
        tmp_path, shape("aks-acns-cilium", user_filters=False), backend="acns-metric-filters"
    )
    warned = named(found)["metric filters"]
    assert warned.status == "warn"
    assert "no ContainerNetworkMetric yet" in warned.detail
    assert "only for the pods observed" in warned.detail


async def test_doctor_says_nothing_of_metric_filters_under_the_annotation_backend(
    tmp_path: Path,
) -> None:
    """Nobody will write filters: no ⚠, and no request for the objects."""
    with serving(tmp_path, shape("aks-acns-cilium", user_filters=False)) as (emulator, kubeconfig):
        settings = Settings(kubeconfig=str(kubeconfig))
        found = await diagnosing.cluster_checks(settings, PLAIN)
        assert not [r for r in emulator.requests if "containernetworkmetrics" in r.path]
    assert "metric filters" not in named(found)


async def test_mixed_node_pools_warn_that_pods_off_cilium_cannot_be_selected(
    tmp_path: Path,
) -> None:
    """One node without the Cilium label: ⚠ naming how many, filters still work elsewhere."""
    built = shape("aks-acns-cilium")
    node = next(o for o in built.builder.objects if o["kind"] == "Node")
    del node["metadata"]["labels"][platform.DATAPLANE]
    checks = named(await doctor_on(tmp_path, built, backend="acns-metric-filters"))
    assert checks["mechanism"].status == "ok"
    pools = checks["node pools"]
    assert pools.status == "warn"
    assert pools.detail.startswith("1 of 2 nodes are not on the Cilium dataplane")
    assert "node pools" not in named(
        await doctor_on(tmp_path, shape("aks-acns-cilium"), backend="acns-metric-filters")
    )
