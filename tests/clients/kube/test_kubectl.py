"""The emulated API server as a real kubectl sees it: what the lab tells a person to run."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from streamproc.clients import kube
from streamproc.lab.kubeemu import KubeEmulator

Kubectl = Callable[..., str]


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    """Run the installed kubectl against the emulator (its discovery cache under tmp_path)."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not installed (.ci/run installs Debian's)")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(*args: str) -> str:
        result = subprocess.run(
            [binary, "--cache-dir", str(tmp_path / "kube-cache"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


def rows(output: str) -> list[dict[str, str]]:
    """kubectl's table output as dicts by header (columns split on runs of 2+ spaces)."""
    lines = [line for line in output.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    return [
        dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=False)) for line in lines[1:]
    ]


def test_kubectl_knows_the_short_names_of_what_the_emulator_serves(kubectl: Kubectl) -> None:
    """`get ds` and `get deploy` resolve through discovery, with the columns of a real cluster."""
    daemonsets = {r["NAME"]: r for r in rows(kubectl("get", "ds", "-A"))}
    assert daemonsets["retina-agent"]["DESIRED"] == "2"
    assert daemonsets["retina-agent"]["READY"] == "2"
    assert daemonsets["retina-agent"]["NODE SELECTOR"] == "kubernetes.io/os=linux"
    deployments = {r["NAME"]: r for r in rows(kubectl("get", "deploy", "-A"))}
    assert deployments["frontend"]["READY"] == "3/3"
    assert deployments["retina-operator"]["NAMESPACE"] == "kube-system"
    assert "redis" in kubectl("get", "sts", "-n", "shop")
    assert "pod/redis-0" in kubectl("get", "all", "-n", "shop")
    namespaces = {r["NAME"]: r["STATUS"] for r in rows(kubectl("get", "ns"))}
    assert namespaces["kube-system"] == "Active"
    config_maps = {r["NAME"]: r["DATA"] for r in rows(kubectl("get", "cm", "-n", "kube-system"))}
    assert config_maps["retina-config"] == "1"


def test_kubectl_get_pods_wide_shows_status_ip_and_node(kubectl: Kubectl) -> None:
    """`get pods -A -o wide` prints READY, STATUS, RESTARTS, AGE, IP and NODE with values."""
    output = kubectl("get", "pods", "-A", "-o", "wide")
    header = re.split(r"\s{2,}", output.splitlines()[0].strip())
    assert header[:8] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    redis = next(r for r in rows(output) if r["NAME"] == "redis-0")
    assert (redis["READY"], redis["STATUS"], redis["RESTARTS"]) == ("1/1", "Running", "0")
    assert re.fullmatch(r"10\.244\.\d+\.\d+", redis["IP"])
    assert redis["NODE"] == "node-a"
    assert re.fullmatch(r"\d+s", redis["AGE"])
    # the labels column the lab suggests comes from the rows' object metadata
    labelled = kubectl("get", "pods", "-n", "shop", "-L", "app.kubernetes.io/name")
    assert re.search(r"^redis-0\s.*\sredis$", labelled, re.MULTILINE), labelled


def test_kube_system_holds_retinas_agent_and_operator_pods(kubectl: Kubectl) -> None:
    """The pods Retina's Helm chart runs: one host-network agent per node, and its operator."""
    pods = rows(kubectl("get", "pods", "-n", "kube-system", "-o", "wide"))
    agents = [p for p in pods if re.fullmatch(r"retina-agent-[a-z0-9]{5}", p["NAME"])]
    assert sorted(p["NODE"] for p in agents) == ["node-a", "node-b"]
    assert all(p["IP"].startswith("10.224.0.") for p in agents)  # hostNetwork: the node's IP
    operators = [p for p in pods if p["NAME"].startswith("retina-operator-")]
    assert len(operators) == 1
    assert operators[0]["STATUS"] == "Running"
    by_label = kubectl("get", "pods", "-n", "kube-system", "-l", "k8s-app=retina", "-o", "name")
    assert len(by_label.split()) == 2
    by_label = kubectl("get", "pods", "-A", "-l", "control-plane=retina-operator", "-o", "name")
    assert by_label.strip() == f"pod/{operators[0]['NAME']}"


def test_kubectl_describe_pod_shows_the_events_streamproc_posted(
    kubectl: Kubectl, kubeconfig: Path, emulator: KubeEmulator
) -> None:
    """describe finds the pod's Events by involvedObject field selectors, and only its own."""

    async def post() -> None:
        api = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=3)
        try:
            for name in ("redis-0", "redis-1"):
                pod = emulator.get("Pod", "shop", name)
                assert pod is not None
                api.post_event(pod, "ObservationStarted", f"Retina observes {name}")
        finally:
            await api.close()

    asyncio.run(post())
    described = kubectl("describe", "pod", "redis-0", "-n", "shop")
    events = described.split("Events:", 1)[1]
    assert re.search(
        r"Normal\s+ObservationStarted\s+\S+\s+streamproc\s+Retina observes redis-0", events
    )
    assert "redis-1" not in events
    listed = rows(kubectl("get", "events", "-n", "shop"))
    assert {(r["REASON"], r["OBJECT"]) for r in listed} == {
        ("ObservationStarted", "pod/redis-0"),
        ("ObservationStarted", "pod/redis-1"),
    }


async def test_unknown_field_selectors_are_refused_and_known_ones_filter(
    emulator: KubeEmulator,
) -> None:
    """As the API server: 400 for a field a kind cannot select on; pods select by node."""
    async with aiohttp.ClientSession() as session:
        url = f"{emulator.url}/api/v1/pods"
        async with session.get(url, params={"fieldSelector": "spec.color=red"}) as response:
            assert response.status == 400
            assert "field label not supported: spec.color" in (await response.json())["message"]
        async with session.get(url, params={"fieldSelector": "spec.nodeName=node-b"}) as response:
            nodes = {p["spec"]["nodeName"] for p in (await response.json())["items"]}
        assert nodes == {"node-b"}


async def test_aggregated_discovery_answers_kubectls_accept_header(
    emulator: KubeEmulator,
) -> None:
    """/apis as apidiscovery.k8s.io/v2, so kubectl needs no request per group version."""
    accept = (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
        "application/json"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(emulator.url + "/apis", headers={"Accept": accept}) as response,
    ):
        assert "as=APIGroupDiscoveryList" in response.headers["Content-Type"]
        found = orjson.loads(await response.read())
    assert found["kind"] == "APIGroupDiscoveryList"
    apps = next(g for g in found["items"] if g["metadata"]["name"] == "apps")
    daemonsets = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "daemonsets")
    assert daemonsets["shortNames"] == ["ds"]
    assert daemonsets["scope"] == "Namespaced"


async def test_a_table_watch_sends_one_row_per_change(emulator: KubeEmulator) -> None:
    """`kubectl get -w` asks for Tables: every change is a one-row Table, columns only first."""
    table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    url = f"{emulator.url}/api/v1/namespaces/shop/pods"
    query = {"watch": "1", "labelSelector": "app.kubernetes.io/name=redis", "timeoutSeconds": "10"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params=query, headers={"Accept": table}) as response,
    ):
        first = orjson.loads(await response.content.readline())
        second = orjson.loads(await response.content.readline())
        emulator.update("Pod", "shop", "redis-0", {"metadata": {"labels": {"x": "y"}}})
        while (event := orjson.loads(await response.content.readline()))["type"] != "MODIFIED":
            pass
    assert first["object"]["kind"] == "Table"
    assert [c["name"] for c in first["object"]["columnDefinitions"]][:5] == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
    ]
    assert second["object"]["columnDefinitions"] == []
    assert event["object"]["rows"][0]["cells"][0] == "redis-0"
    assert event["object"]["rows"][0]["object"]["metadata"]["labels"]["x"] == "y"
