"""The annotator's last check: an action is written only if its own topology could have made it.

The actions topic is the annotator's only input, and the annotator holds ``patch pods`` and
``create captures``: anyone who can write that topic (a principal with a wrong ACL, a mistaken
tool, a replay from another deployment) could otherwise observe or capture any workload,
``kube-system`` included. Ingest checks the topology's rules on every detection; the annotator
checks them again, against its own loaded copy, on every action before anything is written:
the namespaces (protected ones, ``include``, ``exclude``), the clusters, the rules and priority
the action says fired, and the shape its scope needs. An action that fails is refused with one
of :data:`Refusal` (dead-lettered with it by the stage, audited and counted). Pure: no I/O.

What a record cannot be checked for, it cannot choose either: annotations, TTL and scope come
from the topology (``applying``), and a capture needs the topology's own ``capture`` block, its
priority bound and ``minLevel``, on top of the checks here.
"""

from __future__ import annotations

from typing import get_args

from streamproc import reasons
from streamproc.model import conventions
from streamproc.model.actions import Action
from streamproc.model.topologies import Topology

#: why the annotator refuses an action it decoded: every one is dead-lettered and counted
Refusal = reasons.ActionRefusal
REFUSALS: tuple[Refusal, ...] = get_args(Refusal)


def refusal(action: Action, topology: Topology | None) -> tuple[Refusal, str] | None:
    """Why ``action`` must not be applied under ``topology`` (its own copy), or None.

    The namespace rules are those ingest applies (``matching``): a protected namespace only
    when ``include`` names it, ``include`` as an allowlist, ``exclude`` on top of the
    protected ones.
    """
    if topology is None:
        return "unknown-topology", f"no topology {action.topology!r} is loaded here"
    match = topology.spec.match
    namespace = action.namespace
    include = match.namespaces.include
    if namespace not in include:
        if include:
            return "namespace-not-included", f"{namespace!r} is not in {topology.name}'s include"
        if namespace in conventions.PROTECTED_NAMESPACES:
            return "protected-namespace", f"{namespace!r} is protected; include it to observe it"
        if namespace in match.namespaces.exclude:
            return "excluded-namespace", f"{namespace!r} is in {topology.name}'s exclude"
    if match.clusters and action.cluster not in match.clusters:
        return "cluster-not-matched", f"cluster {action.cluster or '(none)'!r} is not matched"
    if match.rules and action.rule not in match.rules:
        return "rule-not-matched", f"rule {action.rule[:80]!r} is not in {topology.name}'s rules"
    if not match.priority.admits(action.priority):
        return "priority-not-matched", f"priority {action.priority} is outside the match"
    return _scope_refusal(action, topology)


def _scope_refusal(action: Action, topology: Topology) -> tuple[Refusal, str] | None:
    """The fields the topology's scope writes through must name one object, consistently.

    A bare pod is its own workload (ingest sends its name twice); ``scope: pod`` writes on the
    pod that fired, so it needs one.
    """
    if action.kind == "Pod" and action.pod != action.name:
        return "scope-mismatch", f"a Pod action names pod {action.pod!r} beside {action.name!r}"
    if topology.spec.action.scope == "pod" and not action.pod:
        return "scope-mismatch", "scope: pod, but the action names no pod"
    return None
