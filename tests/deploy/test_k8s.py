"""The k8s/ kustomize base: renders, validates against Kubernetes' schemas, and its RBAC covers
every request the code makes (measured at the emulated API server, not read from the code)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamproc.clients import kube
from streamproc.cluster import permissions
from streamproc.cluster.resolving import WorkloadResolver
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.settings import Settings
from streamproc.stages.annotate.applying import Annotator
from streamproc.stages.annotate.expiring import Expirer
from streamproc.stages.annotate.filtering import FilterReconciler
from streamproc.stages.annotate.following import Follower
from tests.conftest import Clock, action_for, time_passes, topology, workload

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.31.0"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed; .ci/run installs it")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "k8s")], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] == kind)


def test_every_object_validates_strictly_against_the_kubernetes_schema(
    rendered: list[dict[str, Any]],
) -> None:
    """Unknown or misspelt fields fail here, offline, not at kubectl apply time."""
    checked = 0
    for doc in rendered:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's CRD: not part of Kubernetes' schemas
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    kinds = {d["kind"] for d in rendered}
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "ConfigMap",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    assert checked == len(rendered) - 1


def test_a_misspelt_field_is_caught_by_the_validation(rendered: list[dict[str, Any]]) -> None:
    """The validation above can fail: a typo in a Deployment is refused."""
    deployment = yaml.safe_load(yaml.safe_dump(next(of_kind(rendered, "Deployment"))))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_configmap_carries_the_repository_topologies(rendered: list[dict[str, Any]]) -> None:
    """k8s/topologies/ is the same as topologies/, and the generated ConfigMap holds it."""
    for source in (ROOT / "topologies").glob("*.yaml"):
        assert (ROOT / "k8s" / "topologies" / source.name).read_text() == source.read_text()
    config = next(
        d
        for d in of_kind(rendered, "ConfigMap")
        if d["metadata"]["name"].startswith("streamproc-topologies")
    )
    assert (
        config["data"]["retina-observe.yaml"]
        == (ROOT / "topologies/retina-observe.yaml").read_text()
    )


def test_stages_run_hardened_with_limits_and_probes(rendered: list[dict[str, Any]]) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, requests/limits, probes."""
    stages = set()
    for deployment in of_kind(rendered, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert container["readinessProbe"]
            assert container["livenessProbe"]
            stages.add(container["args"][0])
    assert stages == {"ingest", "windows", "annotate"}


def _rules_for(rendered: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    roles = {r["metadata"]["name"]: r for r in of_kind(rendered, "ClusterRole")}
    rules: list[dict[str, Any]] = []
    for binding in of_kind(rendered, "ClusterRoleBinding"):
        if any(s["name"] == account for s in binding["subjects"]):
            rules += roles[binding["roleRef"]["name"]]["rules"]
    return rules


def _request_to_rbac(method: str, path: str, query: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) the API server would authorise a request as."""
    parts = [p for p in path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    resource, named = rest[0], len(rest) > 1
    verb = {
        "GET": "get" if named else ("watch" if "watch=" in query else "list"),
        "PATCH": "patch",
        "PUT": "update",
        "POST": "create",
        "DELETE": "delete",
    }[method]
    return group, resource, verb


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


async def test_rbac_covers_every_request_each_stage_makes(
    rendered: list[dict[str, Any]],
    kubeconfig: Path,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
) -> None:
    """Resolve (ingest), apply and expire (annotate) for real; every request is authorised."""
    client = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=2)
    try:
        resolver = WorkloadResolver(client, cache_size=100, ttl_s=60)
        for w in cluster.workloads:
            await resolver.resolve(w.namespace, w.pods[0])
        ingest_requests = list(emulator.requests)

        observe = topology(ttl=60)
        expirer = Expirer(client, resync_s=60, clock=Clock())
        annotator = Annotator(
            Settings(),
            [observe],
            client,
            WorkloadResolver(client, cache_size=100, ttl_s=60),
            expirer,
        )
        for name in ("frontend", "report"):
            await annotator.apply(action_for(workload(cluster, name)))
        stop = asyncio.Event()
        follower = Follower(
            client,
            WorkloadResolver(client, cache_size=100, ttl_s=60),
            [observe],
            expirer,
            clock=expirer.clock,
        )
        task = asyncio.create_task(expirer.run(stop))
        watching = asyncio.create_task(follower.run(stop))
        time_passes(expirer, 3600)
        deadline = time.monotonic() + 15
        while expirer.expired < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await task
        await watching
        assert expirer.expired == 4
        annotate_requests = emulator.requests[len(ingest_requests) :]
    finally:
        await client.close()

    for account, requests in (
        ("streamproc-ingest", ingest_requests),
        ("streamproc-annotate", annotate_requests),
    ):
        rules = _rules_for(rendered, account)
        needed = {_request_to_rbac(r.method, r.path, r.query) for r in requests}
        assert needed, account
        missing = {n for n in needed if not _allowed(rules, *n)}
        assert not missing, f"{account} lacks {sorted(missing)}"
        listed = _listed(account.removeprefix("streamproc-"))
        assert needed <= listed, f"permissions.py lacks {sorted(needed - listed)}"
    assert not _rules_for(rendered, "streamproc-windows")


def _listed(stage: str) -> set[tuple[str, str, str]]:
    return {(p.group, p.resource, p.verb) for p in permissions.STAGES[stage]}


@pytest.mark.parametrize("stage", sorted(permissions.STAGES))
def test_the_rbac_grants_exactly_what_the_code_lists(
    rendered: list[dict[str, Any]], stage: str
) -> None:
    """k8s/rbac.yaml and streamproc/cluster/permissions.py name the same permissions, no more."""
    granted = {
        (group, resource, verb)
        for rule in _rules_for(rendered, f"streamproc-{stage}")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == _listed(stage)


def test_the_docs_rbac_table_is_the_code_list() -> None:
    """The docs' RBAC table is rendered from permissions.py (regenerate it if this fails)."""
    page = (ROOT / "docs" / "deploying.md").read_text(encoding="utf-8")
    assert permissions.markdown() in page, "paste what the permissions module prints into the page"


def test_the_sasl_ssl_overlay_gives_each_stage_its_own_secret_as_files(
    rendered: list[dict[str, Any]],
) -> None:
    """The documented TLS + SCRAM overlay renders, validates, and never puts a password in env."""
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "deploy" / "k8s-kafka-sasl-ssl")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == len(rendered)  # the overlay adds nothing but the credentials
    stages = set()
    for deployment in of_kind(docs, "Deployment"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
        stage = deployment["metadata"]["name"].removeprefix("streamproc-")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["STREAMPROC_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert not any(
            "PASSWORD" in name and "value" in e and not name.endswith("_FILE")
            for name, e in env.items()
        )
        secret = f"streamproc-kafka-{stage}"
        volume = next(v for v in pod["volumes"] if v["name"] == "kafka-credentials")
        assert volume["secret"]["secretName"] == secret
        assert env["STREAMPROC_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == secret
        mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-credentials")
        assert env["STREAMPROC_KAFKA_SASL_PASSWORD_FILE"]["value"].startswith(mount["mountPath"])
        assert env["STREAMPROC_KAFKA_SSL_CAFILE"]["value"].startswith(mount["mountPath"])
        stages.add(stage)
    assert stages == {"ingest", "windows", "annotate"}


def _render(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "deploy" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _opt_in(stage: str) -> set[tuple[str, str, str]]:
    return {(p.group, p.resource, p.verb) for p in permissions.OPT_IN.get(stage, ())}


def _granted(docs: list[dict[str, Any]], account: str) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in _rules_for(docs, account)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_acns_component_grants_exactly_the_opt_in_permissions(
    rendered: list[dict[str, Any]],
) -> None:
    """The acns-metric-filters overlay adds the opt-in list to the annotator, and the backend."""
    docs = _render("k8s-acns-metric-filters")
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert _granted(docs, "streamproc-annotate") == _listed("annotate") | _opt_in("annotate")
    assert _granted(docs, "streamproc-ingest") == _listed("ingest")
    assert not _opt_in("annotate") & _granted(rendered, "streamproc-annotate")  # opt in only
    config = next(
        d
        for d in of_kind(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("streamproc-config")
    )
    assert config["data"]["STREAMPROC_OBSERVATION_BACKEND"] == "acns-metric-filters"


async def test_the_acns_rbac_covers_every_request_of_the_metric_filters(
    kubeconfig: Path, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """Open, reconcile, expire and delete through the filters; each request is granted."""
    if KUBECTL is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed; .ci/run installs it")
    client = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=2)
    try:
        observe = topology(ttl=60, backend="acns-metric-filters")
        clock = Clock()
        filters = FilterReconciler(
            client, [observe], default_backend="retina-annotation", resync_s=60, clock=clock
        )
        expirer = Expirer(client, resync_s=60, clock=clock, changed=filters.changed)
        annotator = Annotator(
            Settings(),
            [observe],
            client,
            WorkloadResolver(client, cache_size=100, ttl_s=60),
            expirer,
            clock=clock,
        )
        await annotator.apply(action_for(workload(cluster, "frontend")))
        assert (await filters.reconcile()).outcome == "created"
        await annotator.apply(action_for(workload(cluster, "redis")))
        assert (await filters.reconcile()).outcome == "replaced"
        clock.advance(3600)
        await expirer.resync()
        await expirer.expire_due()
        assert (await filters.reconcile()).outcome == "deleted"
    finally:
        await client.close()
    docs = _render("k8s-acns-metric-filters")
    rules = _rules_for(docs, "streamproc-annotate")
    needed = {_request_to_rbac(r.method, r.path, r.query) for r in emulator.requests}
    assert {verb for group, _, verb in needed if group == "acn.azure.com"} == {
        "list",
        "create",
        "update",
        "delete",
    }
    missing = {n for n in needed if not _allowed(rules, *n)}
    assert not missing, f"streamproc-annotate lacks {sorted(missing)}"
    assert needed <= _listed("annotate") | _opt_in("annotate")
