"""Matching detections to topologies: every condition given must hold."""

from __future__ import annotations

from streamproc.model import events
from streamproc.model.events import Detection
from streamproc.model.matching import Matcher
from streamproc.model.topologies import Topology


def topology(**match: object) -> Topology:
    return Topology.model_validate(
        {
            "apiVersion": "streamproc/v1",
            "kind": "Topology",
            "metadata": {"name": "t"},
            "spec": {"match": match},
        }
    )


def detection(
    rule: str = "r",
    priority: str = "Warning",
    source: str = "syscall",
    tags: tuple[str, ...] = (),
    namespace: str = "shop",
) -> Detection:
    return Detection(
        rule=rule,
        priority=events.PRIORITY_RANK[priority],
        source=source,
        tags=tags,
        namespace=namespace,
        pod="p",
        owners=(),
        cluster="",
        uuid="",
        time="",
        hostname="",
    )


def test_priority_bound_admits_equal_and_more_severe() -> None:
    """'>=Warning' takes Warning and Critical, not Notice."""
    matcher = Matcher([topology(priority=">=Warning")])
    assert matcher.match(detection(priority="Warning"))
    assert matcher.match(detection(priority="Critical"))
    assert not matcher.match(detection(priority="Notice"))


def test_rules_tags_and_sources_are_any_of() -> None:
    """A list condition holds when any listed value matches."""
    matcher = Matcher([topology(rules=["a", "b"], tags=["mitre_execution"], sources=["syscall"])])
    assert matcher.match(detection(rule="b", tags=("x", "mitre_execution")))
    assert not matcher.match(detection(rule="c", tags=("mitre_execution",)))
    assert not matcher.match(detection(rule="a", tags=("x",)))
    assert not matcher.match(detection(rule="a", tags=("mitre_execution",), source="k8s_audit"))


def test_protected_namespaces_are_excluded_by_default() -> None:
    """kube-system is never observed unless a topology includes it explicitly."""
    assert not Matcher([topology()]).match(detection(namespace="kube-system"))
    assert Matcher([topology(namespaces={"include": ["kube-system"]})]).match(
        detection(namespace="kube-system")
    )


def test_a_topologys_own_exclude_list_does_not_unprotect_the_protected_namespaces() -> None:
    """Excluding one namespace must not open kube-system or streamproc's own namespace."""
    matcher = Matcher([topology(namespaces={"exclude": ["payments"]})])
    for protected in ("kube-system", "kube-public", "kube-node-lease", "streamproc", "payments"):
        assert not matcher.match(detection(namespace=protected)), protected
    assert matcher.match(detection(namespace="shop"))


def test_include_is_an_allowlist() -> None:
    """With include given, other namespaces do not match."""
    matcher = Matcher([topology(namespaces={"include": ["shop"]})])
    assert matcher.match(detection(namespace="shop"))
    assert not matcher.match(detection(namespace="payments"))


def test_the_memo_does_not_confuse_different_detections() -> None:
    """The same rule in an excluded namespace does not reuse a cached positive answer."""
    matcher = Matcher([topology(namespaces={"exclude": ["payments"]})])
    assert matcher.match(detection(namespace="shop"))
    assert not matcher.match(detection(namespace="payments"))
    assert matcher.match(detection(namespace="shop"))
