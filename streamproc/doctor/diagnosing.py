"""``streamproc doctor``: is this Kafka and this cluster ready for streamproc? Reads only.

In the manner of ``linkerd check`` and ``cilium status``: one line per check, and for each
warning or failure what to do. It never writes: topics are listed rather than described (which
could create them where auto-creation is on), offsets are read without joining a group, the API
server is asked with GETs and SelfSubjectAccessReviews. Each area is bounded in time, so a
silent broker or API server becomes a failed line, not a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from streamproc import clocks
from streamproc.clients import kafka, kube
from streamproc.cluster import permissions
from streamproc.doctor import checks, platform, retina, sealing
from streamproc.doctor import evidence as evidence_doctor
from streamproc.doctor.checks import Check
from streamproc.model import conventions, events, fleets, topologies

__all__ = ["Check", "diagnose", "lines", "summary"]
from streamproc.model.topologies import ACNS, Topology
from streamproc.settings import Settings

#: the window for "recent" records when judging how detections spread over partitions
RECENT_S = 3600.0
#: below this many recent records a skew says nothing
SKEW_MIN_RECORDS = 100
#: one partition holding this share of recent records is the nil-key hashing case
SKEW_SHARE = 0.9
#: a group further behind than this is worth a look
LAG_WARN = 10_000
#: the longest any one area may take
AREA_TIMEOUT_S = 30.0


async def diagnose(
    settings: Settings,
    topology_path: Path | None = None,
    *,
    evidence: bool = True,
) -> list[Check]:
    """Every check, in the order a person would fix things: topologies, Kafka, the cluster.

    ``evidence``: also the evidence's Prometheus (the lab has none, and reads no evidence).
    """
    found, loaded = topology_checks(topologies.resolve_path(topology_path))
    found += backend_checks(loaded, settings.observation_backend)
    found.append(sealing.seal_check(settings))
    found += await _bounded("Kafka", kafka_checks(settings, loaded))
    found += await _bounded("Kubernetes", cluster_checks(settings, loaded))
    if evidence:
        found += await _bounded(evidence_doctor.AREA, evidence_doctor.evidence_checks(settings))
    return found


async def _bounded(area: str, work: Coroutine[Any, Any, list[Check]]) -> list[Check]:
    try:
        return await asyncio.wait_for(work, timeout=AREA_TIMEOUT_S)
    except TimeoutError:
        return [
            checks.fail(
                area,
                "answer",
                f"no answer within {AREA_TIMEOUT_S:g}s",
                "check the address and that the servers run",
            )
        ]


def topology_checks(path: Path) -> tuple[list[Check], list[Topology]]:
    """The topologies load, as ``streamproc check`` would have them."""
    loaded, errors = topologies.check_path(path)
    found = [
        checks.fail("Topologies", "topology", str(error), "fix the file (streamproc check)")
        for error in errors
    ]
    if loaded:
        names = ", ".join(t.name for t in loaded)
        found.insert(
            0, checks.ok("Topologies", "topologies", f"{len(loaded)} valid in {path} ({names})")
        )
    return found, loaded


def backend_checks(loaded: Sequence[Topology], default: str) -> list[Check]:
    """Each topology is valid under the deployment's backend too, as ``run`` will refuse it."""
    found = []
    for topology in loaded:
        try:
            topologies.resolve_backend(topology, default)
        except topologies.TopologyError as exc:
            found.append(
                checks.fail(
                    "Topologies",
                    "topology",
                    str(exc),
                    "use scope workload or pod, or set spec.action.backend: retina-annotation "
                    "in the topology",
                )
            )
    return found


# ---- Kafka ---------------------------------------------------------------------------------


async def kafka_checks(settings: Settings, loaded: Sequence[Topology]) -> list[Check]:
    """Brokers reachable; source and internal topics; spread over partitions; groups' lag."""
    area = "Kafka"
    sources = list(dict.fromkeys(t.spec.source.topic for t in loaded))
    names = settings.topics
    internal = [names.tallies, settings.actions_topic, names.audit, names.dead_letters]
    groups = settings.groups
    reads = {
        groups.ingest: sources,
        groups.windows: [names.tallies],
        settings.annotate_group: [settings.actions_topic],
    }
    try:
        found = await kafka.survey(
            settings,
            [*sources, *internal],
            reads,
            since_ms=int((time.time() - RECENT_S) * 1000),
            readers=lambda topic: _annotate_group(settings, topic),
            sample=sources,
        )
    except (kafka.KafkaError, OSError, TimeoutError) as exc:
        line = kafka.explain(exc) if isinstance(exc, kafka.KafkaError) else kafka.describe(exc)
        return [checks.fail(area, "brokers", f"not usable at {settings.bootstrap_servers}", line)]
    result = [
        checks.ok(
            area,
            "brokers",
            f"reachable at {settings.bootstrap_servers} ({settings.kafka_security.protocol})",
        )
    ]
    for topic in sources:
        result += _source_checks(topic, found.topics.get(topic))
        result += cluster_field_checks(settings, topic, found.latest.get(topic, []))
    result += _internal_checks(settings, internal, found)
    result += action_checks(settings, found)
    for group, lag in found.lag.items():
        if lag is None:
            result.append(checks.ok(area, f"group {group}", "no committed offsets yet"))
        elif lag > LAG_WARN:
            result.append(
                checks.warn(
                    area,
                    f"group {group}",
                    f"{lag} records behind",
                    "the stage is down or too slow: check it runs, then add replicas "
                    "(up to the topic's partitions)",
                )
            )
        else:
            result.append(checks.ok(area, f"group {group}", f"{lag} records behind"))
    return result


def _source_checks(topic: str, survey: kafka.TopicSurvey | None) -> list[Check]:
    area = "Kafka"
    if survey is None:
        return [
            checks.warn(
                area,
                f"topic {topic}",
                "does not exist yet: no detection has been published to it",
                "point Falcosidekick's kafka.hostport and kafka.topic here "
                "(kafka.topiccreation: true lets it create the topic), or create it",
            )
        ]
    partitions = survey.partitions
    found = [
        checks.ok(
            area,
            f"topic {topic}",
            f"{partitions} partition{'s' if partitions != 1 else ''}"
            + ("" if partitions > 1 else ": ingest runs as one replica"),
        )
    ]
    total = sum(survey.recent.values())
    if partitions > 1 and total >= SKEW_MIN_RECORDS:
        busiest, most = max(survey.recent.items(), key=lambda item: item[1])
        share = most / total
        if share >= SKEW_SHARE:
            found.append(
                checks.warn(
                    area,
                    f"topic {topic} spread",
                    f"{share:.0%} of the last hour's {total} records are on partition "
                    f"{busiest}: one ingest replica does all the work",
                    "Falcosidekick sends no key, and kafka.balancer crc32 or murmur2 hash it "
                    "to one partition: use round_robin (the default) or a *_random balancer",
                )
            )
        else:
            found.append(
                checks.ok(
                    area,
                    f"topic {topic} spread",
                    f"busiest partition has {share:.0%} of the last hour's {total} records",
                )
            )
    return found


def _internal_checks(
    settings: Settings, internal: Sequence[str], found: kafka.Survey
) -> list[Check]:
    area = "Kafka"
    result = []
    for topic in internal:
        survey = found.topics.get(topic)
        if survey is None:
            result.append(
                checks.warn(
                    area,
                    f"topic {topic}",
                    "not created yet",
                    "streamproc creates it at first start; where its principal may not "
                    f"create topics, create it with {settings.partitions} partition(s)",
                )
            )
        elif topic == settings.topics.tallies and survey.partitions != settings.partitions:
            result.append(
                checks.fail(
                    area,
                    f"topic {topic}",
                    f"{survey.partitions} partitions, but --partitions is "
                    f"{settings.partitions}: the windows stage (Faust) refuses to start when "
                    "its tables and their source topic differ",
                    f"run every stage with --partitions {survey.partitions}",
                )
            )
        else:
            result.append(checks.ok(area, f"topic {topic}", f"{survey.partitions} partition(s)"))
    return result


def cluster_field_checks(settings: Settings, topic: str, latest: Sequence[bytes]) -> list[Check]:
    """Whose the latest detections are, by their cluster field: none refused, none lost.

    A sample of each partition's last records (``kafka.SAMPLE_PER_PARTITION``), so that a
    Falcosidekick naming a cluster the deployment does not route shows before its detections
    pile up in the dead letters.
    """
    fleet = fleets.Fleet.of(settings)
    named: Counter[tuple[str, fleets.Placement]] = Counter()
    for raw in latest:
        try:
            detection = events.parse(raw, cluster_field=settings.cluster_field)
        except events.ParseError:
            continue  # ingest dead-letters it with its own reason
        named[(detection.cluster, fleet.place(detection.cluster)[1])] += 1
    refused = sorted(n for (n, placement), _ in named.items() if placement in fleets.REFUSED)
    ignored = sorted(n for (n, placement), _ in named.items() if placement == "ignored")
    name, field = f"clusters in {topic}", settings.cluster_field
    total = sum(named.values())
    if refused:
        shown = ", ".join(repr(n) if n else "(none)" for n in refused[:10])
        count = sum(c for (n, p), c in named.items() if p in fleets.REFUSED)
        return [
            checks.fail(
                "Kafka",
                name,
                f"{count} of the latest {total} detections name clusters the fleet does not "
                f"route ({shown}; field {field!r}): ingest dead-letters them (unknown-cluster)",
                "add them to --clusters of ingest and windows and run their annotators "
                "(docs/scaling.md), or stop those Falcosidekicks writing here; give doctor "
                "the stages' --cluster/--clusters",
            )
        ]
    if ignored:
        shown = ", ".join(repr(n) for n in ignored[:10])
        return [
            checks.ok(
                "Kafka",
                name,
                f"the latest detections name {shown} (field {field!r}); one cluster: they are "
                "its own (for a fleet: docs/scaling.md)",
            )
        ]
    if fleet.declared and total:
        return [checks.ok("Kafka", name, f"the latest {total} detections are the fleet's")]
    return []


def _cluster_of(settings: Settings, topic: str) -> str | None:
    """The cluster whose actions ``topic`` holds ("" for the single cluster's); None: not one."""
    actions = settings.topics.actions
    if topic == actions:
        return ""
    cluster = topic.removeprefix(f"{actions}.")
    return cluster if cluster != topic and conventions.is_dns1123_label(cluster) else None


def _annotate_group(settings: Settings, topic: str) -> str | None:
    cluster = _cluster_of(settings, topic)
    return None if cluster is None else settings.annotate_group_of(cluster)


def action_checks(settings: Settings, found: kafka.Survey) -> list[Check]:
    """Every actions topic that holds actions is read by its cluster's annotators.

    An action nobody reads is a detection that observed nothing, silently: the annotators of
    another cluster name, or none at all, or a cluster this configuration does not route.
    """
    area = "Kafka"
    fleet = fleets.Fleet.of(settings)
    result = []
    for topic, read in sorted(found.read.items()):
        cluster = _cluster_of(settings, topic)
        survey = found.topics.get(topic)
        if cluster is None or survey is None:
            continue
        held = sum(survey.ends.values())
        group = settings.annotate_group_of(cluster)
        command = f"streamproc annotate{f' --cluster {cluster}' if cluster else ''}"
        where = f"cluster {cluster}" if cluster else "the cluster"
        if held and not read:
            result.append(
                checks.fail(
                    area,
                    f"actions in {topic}",
                    f"{held} action(s) that no annotator has read (group {group} never "
                    "committed): those detections observed nothing",
                    f"run `{command}` in {where}"
                    if fleet.serves(cluster)
                    else f"{where} is not routed by the --cluster/--clusters given to doctor "
                    "(give it the stages' own): if it is one of your clusters, run "
                    f"`{command}` there (docs/scaling.md, 'From one cluster to a fleet'); "
                    f"if not, nothing will read {topic}: delete it",
                )
            )
        elif not fleet.serves(cluster):
            result.append(
                checks.warn(
                    area,
                    f"actions in {topic}",
                    f"for {where}, which this configuration does not route"
                    + (f" (the fleet: {', '.join(fleet.clusters)})" if fleet.declared else ""),
                    "run doctor with the stages' --cluster/--clusters; if no stage routes it, "
                    f"delete {topic}",
                )
            )
        elif held:
            result.append(checks.ok(area, f"actions in {topic}", f"read by group {group}"))
    return result


# ---- Kubernetes and Retina -----------------------------------------------------------------


async def cluster_checks(settings: Settings, loaded: Sequence[Topology]) -> list[Check]:
    """API reachable, every permission the stages use, and Retina set up to honour annotations."""
    area = "Kubernetes"
    try:
        client = await kube.Kube.connect(
            settings.kubeconfig, timeout_s=min(settings.api_timeout_s, 10.0), attempts=2
        )
    except kube.KubeError as exc:
        return [checks.fail(area, "credentials", "no usable credentials", kube.explain(exc))]
    try:
        try:
            version = await client.server_version()
        except kube.KubeError as exc:
            return [checks.fail(area, "API server", f"{client.server} failed", kube.explain(exc))]
        found = [
            checks.ok(
                area, "API server", f"{client.server} answers ({version.get('gitVersion', '?')})"
            ),
            clock_check(client.skew, settings.clock_tolerance_s),
        ]
        inspector = kube.Inspector(client)
        found += await permission_checks(inspector, loaded, settings.observation_backend)
        found += await retina_checks(inspector, settings, loaded)
        return found
    finally:
        await client.close()


def clock_check(skew: clocks.Skew, tolerance_s: float) -> Check:
    """How far this host's clock is from the API server's ``Date`` (each stage exports its own).

    Within the header's one-second resolution it is in step. The stages keep the API server's
    time, but compare it with times from Kafka: a skew within ``--clock-tolerance`` is
    tolerated and worth fixing; beyond it, record times are replaced by arrival times and late
    actions are judged expired (docs/reliability.md, "Time and clocks").
    """
    area, name = "Kubernetes", "clock"
    if not skew.measured:
        return checks.warn(
            area,
            name,
            "the API server sent no readable Date header, so clock skew is unknown",
            "keep every host on NTP (chrony, systemd-timesyncd)",
        )
    seconds = skew.seconds
    side = "ahead of" if seconds > 0 else "behind"
    detail = f"this host's clock is {abs(seconds):.1f}s {side} the API server's"
    fix = (
        "synchronise this host and the API server with NTP (chrony, systemd-timesyncd); "
        "every stage exports its own as streamproc_clock_skew_seconds"
    )
    if abs(seconds) > tolerance_s:
        return checks.fail(area, name, f"{detail}, beyond --clock-tolerance {tolerance_s:g}s", fix)
    if abs(seconds) > 2 * clocks.DATE_RESOLUTION_S:
        return checks.warn(
            area, name, f"{detail} (tolerated up to --clock-tolerance {tolerance_s:g}s)", fix
        )
    return checks.ok(area, name, f"in step with the API server's ({seconds:+.1f}s)")


def _features(loaded: Sequence[Topology], backend: str) -> set[str]:
    used = set()
    for t in loaded:
        if t.spec.action.observed_through(backend) == ACNS:
            used.add(permissions.ACNS_FEATURE)
        if t.spec.action.capture is not None:
            used.add("capture")
        if t.spec.action.scope == "namespace":
            used.add("namespace scope")
    return used


async def permission_checks(
    client: kube.Inspector, loaded: Sequence[Topology], backend: str = "retina-annotation"
) -> list[Check]:
    """Each stage's permissions (``permissions.STAGES``), asked of the API server itself.

    The opt-in ones (``permissions.OPT_IN``) too where a feature they serve is used: the
    ``acns-metric-filters`` backend, configured (``backend``) or chosen by a topology.
    """
    area = "Kubernetes"
    used = _features(loaded, backend)
    stages = {
        stage: (*needed, *(p for p in permissions.OPT_IN.get(stage, ()) if p.feature in used))
        for stage, needed in permissions.STAGES.items()
    }
    wanted = {p for needed in stages.values() for p in needed}
    unique = sorted({(p.group, p.resource, p.verb) for p in wanted})
    try:
        answers = await asyncio.gather(*(client.can_i(*key) for key in unique))
    except kube.KubeError as exc:
        return [
            checks.warn(
                area,
                "permissions",
                f"cannot ask the API server ({exc})",
                "run doctor with an identity that may create SelfSubjectAccessReviews "
                "(every authenticated one may, by default)",
            )
        ]
    allowed = {key for key, (yes, _) in zip(unique, answers, strict=True) if yes}
    found = []
    for stage, needed in stages.items():
        if not needed:
            continue
        missing = [p for p in needed if (p.group, p.resource, p.verb) not in allowed]
        blocking = [p for p in missing if p.feature is None or p.feature in used]
        if blocking:
            opt_in = any(p.feature == permissions.ACNS_FEATURE for p in blocking)
            found.append(
                checks.fail(
                    area,
                    f"{stage} permissions",
                    "missing " + ", ".join(p.label for p in blocking),
                    "apply k8s/rbac.yaml"
                    + (" and k8s/components/acns-metric-filters" if opt_in else "")
                    + " (docs/deploying.md); doctor checks the identity it runs "
                    f"as, so run it as streamproc-{stage} to check that account",
                )
            )
        else:
            spare = (
                f"; unused features lack {', '.join(p.label for p in missing)}" if missing else ""
            )
            found.append(
                checks.ok(
                    area, f"{stage} permissions", f"{len(needed) - len(missing)} granted{spare}"
                )
            )
    return found


async def retina_checks(
    client: kube.Inspector, settings: Settings, loaded: Sequence[Topology]
) -> list[Check]:
    """What works on this platform; then Retina recent and set so that annotations take effect."""
    area = retina.AREA
    try:
        agents = retina.find_agents(await client.list_daemonsets())
    except kube.KubeError as exc:
        found, _ = await platform.survey(client, settings, None, loaded)
        return [
            *found,
            checks.warn(
                area,
                "agent",
                f"cannot list DaemonSets to find Retina's agent ({exc})",
                "run doctor with an identity that may list daemonsets, configmaps and "
                "deployments (kubectl auth can-i list daemonsets -A)",
            ),
        ]
    found, seen = await platform.survey(client, settings, agents, loaded)
    if "retina-annotation" not in seen.mechanisms():
        return found  # the platform's lines said what works here instead
    agent = agents[0]
    found += [
        platform.managed_fix(c, seen) for c in await _retina_checks(client, settings, loaded, agent)
    ]
    return found


async def _retina_checks(
    client: kube.Inspector, settings: Settings, loaded: Sequence[Topology], agent: retina.Agent
) -> list[Check]:
    area = retina.AREA
    found = retina.agent_checks([agent])
    config = await _agent_config(client, agent, found)
    if config is not None:
        found += retina.config_checks(
            config, f"{agent.namespace}/{agent.config_maps[0]}", settings.node_budget
        )
    served = await client.served_resources("retina.sh", "v1alpha1")
    found.append(await _metrics_configurations(client, served))
    captures = [t.spec.action.capture for t in loaded if t.spec.action.capture is not None]
    found += retina.capture_checks(
        served,
        wanted=bool(captures),
        version=agent.version,
        host_path=any(c.output.host_path for c in captures),
    )
    needs = [
        *(["the agent's remoteContext"] if config is not None and config.remote_context else []),
        *(["captures"] if captures else []),
    ]
    try:
        deployments = await client.list_deployments(agent.namespace)
    except kube.KubeError as exc:
        found.append(
            checks.warn(
                area, "operator", f"cannot list Deployments ({exc})", "grant list deployments"
            )
        )
    else:
        found.append(retina.operator_check(deployments, needed_for=" and ".join(needs)))
    return found


async def _agent_config(
    client: kube.Inspector, agent: retina.Agent, found: list[Check]
) -> retina.AgentConfig | None:
    area = retina.AREA
    if not agent.config_maps:
        found.append(
            checks.fail(
                area,
                "config",
                f"{agent.where} mounts no ConfigMap",
                f"reinstall Retina with its chart: {retina.INSTALL}",
            )
        )
        return None
    name = agent.config_maps[0]
    try:
        config_map = await client.get_config_map(agent.namespace, name)
        return retina.read_config(config_map, agent.env)
    except kube.KubeError as exc:
        found.append(
            checks.warn(
                area,
                "config",
                f"cannot read ConfigMap {agent.namespace}/{name} ({exc})",
                "grant get configmaps in Retina's namespace, or check its config by hand",
            )
        )
    except retina.ConfigUnreadable as exc:
        found.append(
            checks.fail(
                area,
                "config",
                f"ConfigMap {agent.namespace}/{name}: {exc}",
                f"install Retina's standard control plane: {retina.INSTALL}",
            )
        )
    return None


async def _metrics_configurations(client: kube.Inspector, served: set[str] | None) -> Check:
    if served is None or "metricsconfigurations" not in served:
        return retina.metrics_configuration_check(None)
    try:
        items = await client.list_cluster_objects("retina.sh", "v1alpha1", "metricsconfigurations")
    except kube.KubeError as exc:
        return checks.warn(
            retina.AREA,
            "MetricsConfiguration",
            f"cannot list MetricsConfigurations ({exc})",
            "check by hand: kubectl get metricsconfigurations.retina.sh",
        )
    return retina.metrics_configuration_check(
        [str((i.get("metadata") or {}).get("name", "")) for i in items]
    )


# ---- the report ----------------------------------------------------------------------------


def summary(found: Sequence[Check]) -> dict[str, int]:
    """How many checks passed, warned and failed."""
    return {status: sum(1 for c in found if c.status == status) for status in checks.MARKS}


def lines(found: Sequence[Check]) -> list[str]:
    """The report for a person: grouped by area, a mark per check, the fix under it."""
    out: list[str] = []
    area = ""
    for check in found:
        if check.area != area:
            area = check.area
            out += ["", area] if out else [area]
        out.append(f"  {checks.MARKS[check.status]} {check.name}: {check.detail}")
        if check.fix:
            out.append(f"      fix: {check.fix}")
    counts = summary(found)
    out += [
        "",
        f"{counts['ok']} passed, {counts['warn']} warnings, {counts['fail']} failed"
        + ("" if counts["fail"] else ": ready" if not counts["warn"] else ": ready, with warnings"),
    ]
    return out
