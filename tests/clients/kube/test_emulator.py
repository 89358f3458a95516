"""The emulated API server, reached by the real kubernetes_asyncio client over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config, watch

from streamproc.clients import kube
from streamproc.lab.kubeemu import Fault, KubeEmulator
from tests import doubles as testing


@pytest.fixture
async def api(kubeconfig: Path) -> AsyncIterator[kube.Kube]:
    connection = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=3)
    yield connection
    await connection.close()


async def test_label_selectors_filter_lists(api: kube.Kube) -> None:
    """Equality, set-based and existence selectors filter pods as a real API server does."""
    frontend = await api.list_pods("shop", "app.kubernetes.io/name=frontend")
    assert len(frontend) == 3
    both = await api.list_pods("shop", "app.kubernetes.io/name in (frontend,redis)")
    assert len(both) == 5
    not_frontend = await api.list_pods("shop", "app.kubernetes.io/name!=frontend")
    assert {p["metadata"]["labels"]["app.kubernetes.io/name"] for p in not_frontend} == {
        "checkout",
        "redis",
    }
    hashed = await api.list_pods(None, "pod-template-hash")
    assert all("pod-template-hash" in p["metadata"]["labels"] for p in hashed)
    assert hashed


async def test_merge_patch_adds_and_null_deletes(api: kube.Kube, emulator: KubeEmulator) -> None:
    """RFC 7386: given keys are set, null removes, other keys stay."""
    pod = emulator.list("Pod", "shop")[0]["metadata"]["name"]
    await api.patch_metadata(
        kube.ObjectRef.pod("shop", pod), annotations={"a": "1", "b": "2"}, labels={"x": "y"}
    )
    await api.patch_metadata(kube.ObjectRef.pod("shop", pod), annotations={"a": None}, labels={})
    meta = (await api.get_pod("shop", pod))["metadata"]
    assert meta["annotations"] == {"b": "2"}
    assert meta["labels"]["x"] == "y"
    assert "app.kubernetes.io/name" in meta["labels"]


async def test_a_stale_resource_version_is_a_conflict(
    api: kube.Kube, emulator: KubeEmulator
) -> None:
    """A write naming an old resourceVersion gets 409 and changes nothing."""
    pod = emulator.list("Pod", "shop")[0]
    name, old_version = pod["metadata"]["name"], pod["metadata"]["resourceVersion"]
    await api.patch_metadata(
        kube.ObjectRef.pod("shop", name), annotations={"first": "1"}, labels={}
    )
    with pytest.raises(kube.Conflict):
        await api.patch_metadata(
            kube.ObjectRef.pod("shop", name),
            annotations={"second": "2"},
            labels={},
            resource_version=old_version,
        )
    assert "second" not in (emulator.get("Pod", "shop", name) or {})["metadata"]["annotations"]


async def test_missing_objects_are_not_found(api: kube.Kube) -> None:
    """404 surfaces as NotFound."""
    with pytest.raises(kube.NotFound):
        await api.get_pod("shop", "no-such-pod")


async def test_faults_fail_before_any_state_change(api: kube.Kube, emulator: KubeEmulator) -> None:
    """A 500 burst is retried by the client; the failed attempts changed nothing."""
    pod = emulator.list("Pod", "shop")[0]["metadata"]["name"]
    emulator.faults.append(Fault(method="PATCH", path=f"/pods/{pod}$", status=500, times=2))
    await api.patch_metadata(kube.ObjectRef.pod("shop", pod), annotations={"k": "v"}, labels={})
    patches = [r for r in emulator.requests if r.method == "PATCH" and r.path.endswith(pod)]
    assert [r.status for r in patches] == [500, 500, 200]
    assert (emulator.get("Pod", "shop", pod) or {})["metadata"]["annotations"] == {"k": "v"}


async def test_too_many_requests_honours_retry_after(
    api: kube.Kube, emulator: KubeEmulator
) -> None:
    """429 with Retry-After: 1 makes the client wait at least that long before retrying."""
    emulator.faults.append(
        Fault(method="GET", path="/pods/debug-shell$", status=429, retry_after=1)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await api.get_pod("default", "debug-shell")
    assert loop.time() - started >= 1.0


async def test_forbidden_is_not_retried(api: kube.Kube, emulator: KubeEmulator) -> None:
    """403 surfaces at once as Forbidden."""
    emulator.faults.append(Fault(method="GET", path="/pods/debug-shell$", status=403, times=5))
    with pytest.raises(kube.Forbidden):
        await api.get_pod("default", "debug-shell")
    assert sum(1 for r in emulator.requests if r.status == 403) == 1


async def test_watch_streams_label_filtered_changes(
    kubeconfig: Path, emulator: KubeEmulator
) -> None:
    """kubernetes_asyncio's Watch sees ADDED for matching pods, then MODIFIED, and not others."""
    configuration = k8s.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with k8s.ApiClient(configuration) as api_client:
        core = k8s.CoreV1Api(api_client)
        listing = await core.list_namespaced_pod(
            "shop", label_selector="app.kubernetes.io/name=redis"
        )
        version = listing.metadata.resource_version
        seen: list[tuple[str, str]] = []
        w = watch.Watch()

        async def consume() -> None:
            async for event in w.stream(
                core.list_namespaced_pod,
                "shop",
                label_selector="app.kubernetes.io/name=redis",
                resource_version=version,
                timeout_seconds=5,
            ):
                seen.append((event["type"], event["object"].metadata.name))
                if len(seen) == 1:
                    w.stop()

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        emulator.update("Pod", "shop", "redis-1", {"metadata": {"annotations": {"x": "1"}}})
        frontend = emulator.list("Pod", "shop")[0]["metadata"]["name"]
        emulator.update("Pod", "shop", frontend, {"metadata": {"annotations": {"x": "1"}}})
        await asyncio.wait_for(task, 10)
        assert seen == [("MODIFIED", "redis-1")]


async def test_discovery_lists_core_and_group_resources(emulator: KubeEmulator) -> None:
    """/api, /apis and resource lists are what kubectl needs to find pods and deployments."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(emulator.url + "/api") as response:
            assert (await response.json())["versions"] == ["v1"]
        async with session.get(emulator.url + "/apis/apps/v1") as response:
            kinds = {r["kind"] for r in (await response.json())["resources"]}
        assert {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"} <= kinds


def test_kubectl_gets_and_annotates_through_the_emulator(
    kubeconfig: Path, emulator: KubeEmulator
) -> None:
    """Discovery is good enough for a real kubectl: get pods, then annotate one."""
    import os
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/run installs it)")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(*args: str) -> str:
        result = subprocess.run(
            [kubectl, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "redis-0" in run("get", "pods", "-n", "shop")
    assert "frontend" in run("get", "deployments", "-A")
    run("annotate", "pod", "redis-0", "-n", "shop", "team=payments")
    annotations = (emulator.get("Pod", "shop", "redis-0") or {})["metadata"]["annotations"]
    assert annotations["team"] == "payments"


async def test_the_client_side_rate_limit_holds_at_the_server(
    kubeconfig: Path, emulator: KubeEmulator
) -> None:
    """120 concurrent requests at qps=40, burst=10: the server never sees more than the budget."""
    before = testing.metric("streamproc_api_rate_limit_waits_total")
    limited = await kube.Kube.connect(
        str(kubeconfig), limits=kube.Limits(qps=40, burst=10, concurrency=8)
    )
    try:
        await asyncio.gather(*(limited.get_pod("default", "debug-shell") for _ in range(120)))
    finally:
        await limited.close()
    times = sorted(r.at for r in emulator.requests if r.path.endswith("/debug-shell"))
    assert len(times) == 120
    # Any two-second span holds at most the burst plus two seconds of the sustained rate (a few
    # requests of slack: the server stamps responses, not arrivals).
    assert max(sum(1 for t in times if start <= t < start + 2) for start in times) <= 10 + 80 + 5
    assert times[-1] - times[0] >= (120 - 10) / 40 * 0.9
    assert testing.metric("streamproc_api_rate_limit_waits_total") > before


async def test_a_slow_response_past_the_timeout_is_retried(
    kubeconfig: Path, emulator: KubeEmulator
) -> None:
    """A response slower than the client timeout counts as unavailable and is tried again."""
    emulator.faults.append(Fault(method="GET", path="/pods/redis-0$", status=0, delay_s=3))
    client = await kube.Kube.connect(str(kubeconfig), timeout_s=1.0, attempts=3)
    try:
        pod = await client.get_pod("shop", "redis-0")
    finally:
        await client.close()
    assert pod["metadata"]["name"] == "redis-0"


async def test_json_patch_and_strategic_merge_patch_change_metadata(
    emulator: KubeEmulator,
) -> None:
    """RFC 6902 JSON patch and strategic merge patch (as kubectl sends them) both apply."""
    import aiohttp

    url = f"{emulator.url}/api/v1/namespaces/shop/pods/redis-0"
    async with aiohttp.ClientSession() as session:
        ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}}]
        async with session.patch(
            url, json=ops, headers={"Content-Type": "application/json-patch+json"}
        ) as r:
            assert r.status == 200
        async with session.patch(
            url,
            json={"metadata": {"annotations": {"b": "2"}}},
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        ) as r:
            assert r.status == 200
        async with session.patch(
            url,
            json=[{"op": "test", "path": "/metadata/name", "value": "x"}],
            headers={"Content-Type": "application/json-patch+json"},
        ) as r:
            assert r.status == 422
    assert (emulator.get("Pod", "shop", "redis-0") or {})["metadata"]["annotations"] == {
        "a": "1",
        "b": "2",
    }
