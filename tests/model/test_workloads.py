"""Workload identity rules: owner fields, owner chain, name shape."""

from __future__ import annotations

from streamproc.model import workloads


def test_owner_fields_take_precedence_and_record_how() -> None:
    """k8smeta's deployment name wins and the ref says it came from owner fields."""
    ref = workloads.from_owner_fields("shop", "web-7d4b9c8f5x-abcde", (("Deployment", "web"),))
    assert ref == workloads.WorkloadRef("shop", "Deployment", "web", "owner-fields")
    assert ref.key == "shop/Deployment/web"


def test_a_replicaset_owner_field_names_its_deployment() -> None:
    """k8smeta.rs.name alone still resolves to the Deployment."""
    ref = workloads.from_owner_fields("shop", "p", (("ReplicaSet", "web-7d4b9c8f5x"),))
    assert ref is not None
    assert (ref.kind, ref.name) == ("Deployment", "web")


def test_owner_chain_follows_replicaset_to_deployment_and_job_to_cronjob() -> None:
    """The API's ownerReferences chain gives the top-level controller."""
    chain = workloads.from_owner_chain
    assert chain("a", "p", ("ReplicaSet", "web-x"), ("Deployment", "web")).name == "web"
    assert chain("a", "p", ("Job", "rep-29000001"), ("CronJob", "rep")).kind == "CronJob"
    assert chain("a", "p", ("Job", "once"), None) == workloads.WorkloadRef(
        "a", "Job", "once", "api"
    )
    assert chain("a", "p", ("StatefulSet", "db"), None).kind == "StatefulSet"
    assert chain("a", "p", None, None) == workloads.WorkloadRef("a", "Pod", "p", "api")


def test_name_shapes_are_recognised() -> None:
    """Generated pod names reveal Deployments, StatefulSets and CronJobs."""
    shape = workloads.from_name_shape
    assert (
        shape("a", "frontend-7d4b9c8f5x-x2x7k").kind,
        shape("a", "frontend-7d4b9c8f5x-x2x7k").name,
    ) == ("Deployment", "frontend")
    assert shape("a", "redis-0").name == "redis"
    assert shape("a", "report-29000123-b7k2p").kind == "CronJob"
    # A DaemonSet's and a Job's pods look alike: fall back to the pod itself.
    assert shape("a", "node-exporter-b7k2p").kind == "Pod"
    assert shape("a", "debug-shell").kind == "Pod"
