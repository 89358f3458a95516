"""Create a topology's Retina Capture for an applied action, once per window.

The body is built by :mod:`streamproc.captures` (pure); this module talks to the cluster and
records the outcome (metric and audit record).
"""

from __future__ import annotations

from collections.abc import Sequence

from streamproc.clients import kube
from streamproc.cluster import marking
from streamproc.model import captures, outcomes
from streamproc.model.actions import Action
from streamproc.model.topologies import Topology
from streamproc.stages.annotate import auditing


async def capture(
    client: kube.Kube,
    auditor: auditing.Auditor,
    action: Action,
    topology: Topology,
    pods: Sequence[kube.Json],
) -> None:
    """Create the topology's Capture when the window's priority reaches its bound."""
    spec = topology.spec.action.capture
    if spec is None or not spec.priority.admits(action.priority):
        return
    if topology.spec.action.level_of(action.level) < spec.min_level:
        return  # not yet: only a repeat offender at minLevel or above is captured
    capture_target = captures.target(spec, action.namespace, pods)
    result: outcomes.CaptureResult = "created"
    if not capture_target:
        result = "no-selector"  # an empty podSelector would capture the whole namespace
    else:
        body = captures.body(
            action_id=action.id,
            namespace=action.namespace,
            capture_target=capture_target,
            capture=spec,
            topology=topology.name,
            rule=action.rule,
        )
        try:
            await client.create_capture(action.namespace, body)
        except kube.Conflict:
            result = "exists"  # this window's capture was created before (a replay)
    marking.patched("capture", result)
    auditor.record(
        result=outcomes.capture_outcome(result),
        action=action.id,
        topology=topology.name,
        rule=action.rule,
        namespace=action.namespace,
        kind=action.kind,
        name=action.name,
        capture=captures.name_for(action.id),
        target=capture_target,
        duration_s=spec.duration,
        max_capture_size_mb=spec.max_capture_size_mb,
    )
