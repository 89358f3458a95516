"""The annotator is the last line: a forged action its own topology would not make writes nothing.

Each case is an action that decodes (so it reaches the annotator), forged against one rule of
the annotator's topology; the annotator holds ``patch pods`` and ``create captures``, so it
re-checks every rule ingest checks before anything is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streamproc.clients import kube
from streamproc.lab.cluster import ClusterBuilder
from streamproc.lab.kubeemu import KubeEmulator
from streamproc.model import guarding
from streamproc.model.actions import Action
from tests import doubles as testing
from tests.conftest import action_for, annotated, make, topology, workload

CAPTURE = {"priority": ">=Debug", "output": {"hostPath": "captures"}}
#: stands for a pod of another workload (frontend's first)
FRONTEND_POD = "frontend's pod"


def _own_pod(emulator: KubeEmulator) -> None:
    """A pod in streamproc's own namespace (where k8s/ deploys it)."""
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "streamproc"}})
    emulator.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "annotator", "namespace": "streamproc", "labels": {}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.0.9.9"},
        }
    )


def _forged(cluster: ClusterBuilder, name: str, **fields: Any) -> Action:
    return dataclasses.replace(action_for(workload(cluster, name)), **fields)


def _writes(emulator: KubeEmulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in emulator.requests if r.method in ("PATCH", "POST")]


# (what the topology says, the forged action, the refusal): one case per rule
CASES: list[tuple[str, dict[str, Any], str, dict[str, Any], guarding.Refusal]] = [
    ("kube-system, with a capture", {"capture": CAPTURE}, "coredns", {}, "protected-namespace"),
    ("streamproc's own", {"capture": CAPTURE}, "", {}, "protected-namespace"),
    (
        "exclude",
        {"match": {"namespaces": {"exclude": ["payments"]}}},
        "api",
        {},
        "excluded-namespace",
    ),
    (
        "include",
        {"match": {"namespaces": {"include": ["shop"]}}},
        "api",
        {},
        "namespace-not-included",
    ),
    ("clusters", {"match": {"clusters": ["east"]}}, "frontend", {}, "cluster-not-matched"),
    ("rules", {"match": {"rules": ["Terminal shell"]}}, "frontend", {}, "rule-not-matched"),
    (
        "priority",
        {"match": {"priority": ">=Error"}},
        "frontend",
        {"priority": 3},
        "priority-not-matched",
    ),
    ("scope: pod", {"scope": "pod"}, "frontend", {"pod": ""}, "scope-mismatch"),
    ("a bare pod", {}, "debug-shell", {"pod": FRONTEND_POD}, "scope-mismatch"),
    ("no topology", {}, "frontend", {"topology": "made-up"}, "unknown-topology"),
]


@pytest.mark.parametrize(
    ("spec", "name", "fields", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_an_action_its_topology_would_not_make_is_refused_before_any_write(
    client: kube.Kube,
    emulator: KubeEmulator,
    cluster: ClusterBuilder,
    spec: dict[str, Any],
    name: str,
    fields: dict[str, Any],
    reason: guarding.Refusal,
) -> None:
    """Refused with the rule's reason and counted; no pod, namespace or Capture is written."""
    _own_pod(emulator)
    spec = dict(spec)
    match = spec.pop("match", {})
    own = topology(**spec)
    if match:
        own = own.model_copy(
            update={"spec": own.spec.model_copy(update={"match": type(own.spec.match)(**match)})}
        )
    annotator, _ = make(client)
    annotator.topologies = {own.name: own}
    if fields.get("pod") == FRONTEND_POD:
        fields = {**fields, "pod": workload(cluster, "frontend").pods[0]}
    if name:
        forged = _forged(cluster, name, **fields)
    else:  # a pod in streamproc's own namespace, named as ingest would name a bare pod
        base = action_for(workload(cluster, "debug-shell"))
        forged = dataclasses.replace(
            base,
            namespace="streamproc",
            name="annotator",
            pod="annotator",
            id="retina-observe/streamproc/Pod/annotator/0",
        )
    before = testing.metric("streamproc_actions_refused_total", reason=reason)
    assert annotator.refuse(forged) is not None
    assert await annotator.apply(forged) == reason
    await annotator.handle([forged])
    assert testing.metric("streamproc_actions_refused_total", reason=reason) == before + 3
    assert _writes(emulator) == []
    assert annotated(emulator) == set()
    assert emulator.list("Capture") == []


async def test_the_same_actions_from_the_topology_itself_are_applied(
    client: kube.Kube, emulator: KubeEmulator, cluster: ClusterBuilder
) -> None:
    """The checks refuse only what the topology would not make: its own actions land."""
    own = topology(capture=CAPTURE)
    own = own.model_copy(
        update={
            "spec": own.spec.model_copy(
                update={
                    "match": type(own.spec.match).model_validate(
                        {
                            "namespaces": {"include": ["shop", "default"]},
                            "rules": ["Read sensitive file untrusted"],
                            "priority": ">=Warning",
                        }
                    )
                }
            )
        }
    )
    annotator, _ = make(client)
    annotator.topologies = {own.name: own}
    for name in ("frontend", "debug-shell"):
        assert annotator.refuse(action_for(workload(cluster, name))) is None
        assert await annotator.apply(action_for(workload(cluster, name))) == "applied"
    assert annotated(emulator) == {*workload(cluster, "frontend").pods, "debug-shell"}
    assert len(emulator.list("Capture")) == 2


def test_every_refusal_reason_is_one_of_the_declared_ones() -> None:
    """The reasons the tests expect are exactly the Literal's, so none goes unchecked."""
    assert {case[-1] for case in CASES} == set(guarding.REFUSALS)
