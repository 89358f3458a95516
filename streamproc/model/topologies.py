"""Topologies: declarative YAML that says which detections open which observation.

One topology per file (``apiVersion: streamproc/v1``, ``kind: Topology``). A bad file stops
streamproc at start, before it touches Kafka or the cluster, with an error that names the file,
the line and the field: a typo in a security control must not degrade silently into "matches
nothing". Unknown fields are refused for the same reason.
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from streamproc.model import conventions, durations, events

API_VERSION = "streamproc/v1"
_PRIORITY_EXPR = re.compile(r"\s*(>=|<=|==|=|>|<)?\s*([A-Za-z]+)\s*")


#: a topology is a page of YAML; anything this large is a mistake (or an alias bomb's output).
MAX_TOPOLOGY_CHARS = 256 * 1024
#: aliases let a few lines expand into an exponential structure for the validator to walk.
MAX_ALIASES = 64


class TopologyError(ValueError):
    """A topology that cannot be used, located as precisely as the YAML allows."""

    def __init__(self, path: Path | str, line: int | None, field: str, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PriorityBound(_Strict):
    """``>=Warning`` and friends, over Falco's priority order."""

    op: Literal[">=", "<=", "==", ">", "<"]
    rank: int

    def admits(self, rank: int) -> bool:
        """Whether a detection of ``rank`` passes this bound."""
        if self.op == ">=":
            return rank >= self.rank
        if self.op == ">":
            return rank > self.rank
        if self.op == "<=":
            return rank <= self.rank
        if self.op == "<":
            return rank < self.rank
        return rank == self.rank


def parse_priority(text: str) -> PriorityBound:
    """Read a priority expression; a bare name means equality."""
    match = _PRIORITY_EXPR.fullmatch(text)
    name = match[2].lower() if match else ""
    ranks = {p.lower(): r for p, r in events.PRIORITY_RANK.items()}
    if not match or name not in ranks:
        raise ValueError(
            f"{text!r} is not a priority expression; use e.g. '>=Warning' over "
            + ", ".join(events.PRIORITIES)
        )
    op = match[1] or "=="
    return PriorityBound(op="==" if op == "=" else op, rank=ranks[name])  # type: ignore[arg-type]


#: the longest duration a topology may give (a window, a TTL, a capture, forgetAfter): a year.
#: Durations become RFC 3339 times on pods and Faust window ranges, and an unbounded one
#: (``ttl: 1e300``) would overflow the time it is added to in the annotator.
MAX_SECONDS = 366 * 86400.0
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]


class Namespaces(_Strict):
    """Namespace scope: ``include`` (allowlist, empty = all) and ``exclude``."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = conventions.PROTECTED_NAMESPACES

    @field_validator("include", "exclude")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not conventions.is_dns1123_label(name):
                raise ValueError(f"{name!r} is not a valid namespace name")
        return value


class Match(_Strict):
    """Every condition given must hold; lists mean "any of", empty means "any"."""

    priority: PriorityBound = PriorityBound(op=">=", rank=0)
    rules: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    namespaces: Namespaces = Namespaces()
    #: clusters of a fleet sharing one Kafka (a detection's cluster field, else ``--cluster``)
    clusters: tuple[str, ...] = ()

    @field_validator("clusters")
    @classmethod
    def _clusters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not conventions.is_dns1123_label(name):
                raise ValueError(f"{name!r} is not a valid cluster name (a DNS-1123 label)")
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_priority(value)
        return value


def _duration(value: object) -> object:
    if isinstance(value, str):
        return durations.parse_duration(value)
    return value


class Window(_Strict):
    """Tumbling window per workload; ``threshold`` detections in one window open an observation."""

    size: Seconds = 60.0
    threshold: Annotated[int, Field(ge=1)] = 1

    _parse_size = field_validator("size", mode="before")(_duration)

    @field_validator("size")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        if value < 1:
            raise ValueError("window size must be at least 1s")
        return value


#: Retina's operator joins a Capture's ``outputConfiguration.hostPath`` under its
#: ``capture.hostPathBaseDir`` (default ``/var/log/retina/captures``) and refuses an absolute
#: path or one with ``..`` (microsoft/retina v1.2.1, PR #2335; ``docs/02-Installation/03-Config.md``
#: and the Capture CRD's field description in ``retina.sh_captures.yaml``).
DEFAULT_CAPTURE_SUBPATH = "streamproc"
_WINDOWS_ABSOLUTE = re.compile(r"[A-Za-z]:[\\/]|[\\/]")


def _relative_subpath(value: str | None) -> str | None:
    if value is None:
        return None
    if not value:
        raise ValueError("hostPath must not be empty")
    if _WINDOWS_ABSOLUTE.match(value):
        raise ValueError(
            f"{value!r} is absolute: since Retina v1.2.1 hostPath is a relative subpath that "
            "its operator joins under capture.hostPathBaseDir (default /var/log/retina/"
            f"captures), and an absolute one is refused; use e.g. {DEFAULT_CAPTURE_SUBPATH!r}"
        )
    if ".." in re.split(r"[\\/]", value):
        raise ValueError(
            f"{value!r} contains '..': Retina's operator refuses it (hostPath stays under "
            "capture.hostPathBaseDir)"
        )
    return value


class S3Upload(_Strict):
    """Retina's ``outputConfiguration.s3Upload``: an S3-compatible bucket and its Secret."""

    bucket: Annotated[str, Field(min_length=1)]
    secret_name: Annotated[str, Field(min_length=1, alias="secretName")]
    region: str | None = None
    endpoint: str | None = None
    path: str | None = None

    @field_validator("secret_name")
    @classmethod
    def _secret(cls, value: str) -> str:
        if not conventions.is_dns1123_subdomain(value):
            raise ValueError(f"{value!r} is not a valid Secret name")
        return value


class CaptureOutput(_Strict):
    """Where Retina stores the capture (Retina's ``spec.outputConfiguration``)."""

    host_path: str | None = Field(default=None, alias="hostPath")
    blob_upload: str | None = Field(default=None, alias="blobUpload")
    persistent_volume_claim: str | None = Field(default=None, alias="persistentVolumeClaim")
    s3_upload: S3Upload | None = Field(default=None, alias="s3Upload")

    _host_path = field_validator("host_path")(_relative_subpath)

    @property
    def uploads(self) -> bool:
        """Whether the capture goes to remote storage (what cleanUpAfterUpload needs)."""
        return self.blob_upload is not None or self.s3_upload is not None


class Capture(_Strict):
    """A bounded Retina packet capture of the workload's pods, on a stronger condition."""

    priority: PriorityBound = PriorityBound(op=">=", rank=5)  # >= Critical
    duration: Seconds = 60.0
    max_capture_size_mb: Annotated[int, Field(ge=1, le=10_000, alias="maxCaptureSizeMB")] = 100
    packet_size: Annotated[int, Field(ge=64, le=65_535, alias="packetSize")] = 1500
    #: ``podNames`` (Retina >= v1.1: exactly the workload's pods by name) or ``podSelector``
    #: (older Retina: the labels the pods share; no capture when they share none)
    target: Literal["podNames", "podSelector"] = "podNames"
    output: CaptureOutput = CaptureOutput(hostPath=DEFAULT_CAPTURE_SUBPATH)
    #: delete the capture's jobs, Secrets and the Capture once the upload succeeded
    clean_up_after_upload: bool = Field(default=False, alias="cleanUpAfterUpload")
    #: capture only from this escalation level on (1: every observation that qualifies)
    min_level: Annotated[int, Field(ge=1, alias="minLevel")] = 1

    _parse_priority = field_validator("priority", mode="before")(
        lambda v: parse_priority(v) if isinstance(v, str) else v
    )
    _parse_duration = field_validator("duration", mode="before")(_duration)

    @field_validator("duration")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if value > 3600:
            raise ValueError("a capture lasts at most 1h")
        return value

    @model_validator(mode="after")
    def _upload_to_clean_up(self) -> Capture:
        if self.clean_up_after_upload and not self.output.uploads:
            raise ValueError("cleanUpAfterUpload needs output.blobUpload or output.s3Upload")
        return self


#: the most steps an escalation ladder may have
MAX_LEVELS = 10


class Escalation(_Strict):
    """Longer observation for repeat offenders (``streamproc.escalation``)."""

    #: the TTL of a workload's 1st, 2nd, ... observation; the last step repeats
    ttls: Annotated[tuple[Seconds, ...], Field(min_length=1, max_length=MAX_LEVELS)]
    #: offences older than this no longer count
    forget_after: Seconds = Field(default=7 * 86400.0, alias="forgetAfter")

    _parse_ttls = field_validator("ttls", mode="before")(
        lambda v: [_duration(x) for x in v] if isinstance(v, list | tuple) else v
    )
    _parse_forget = field_validator("forget_after", mode="before")(_duration)

    @field_validator("ttls")
    @classmethod
    def _climbs(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(later < earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError("each step must last at least as long as the one before it")
        return value


#: how a pod is put under observation (``Settings.observation_backend``, ``spec.action.backend``):
#: Retina's annotation (its Standard control plane), or include filters in AKS ACNS's one
#: ContainerNetworkMetric (Retina's Hubble control plane on Cilium, which ignores annotations)
Backend = Literal["retina-annotation", "acns-metric-filters"]
ACNS: Backend = "acns-metric-filters"
#: the Hubble metrics a ContainerNetworkMetric filters, as ``spec.filters[].metric`` names them
#: (MicrosoftDocs/azure-aks-docs, articles/aks/how-to-configure-container-network-metrics-
#: filtering.md at fb060abe, ms.date 10/30/2025)
MetricName = Literal["flow", "drop", "tcp", "dns"]
METRICS: tuple[MetricName, ...] = ("flow", "drop", "tcp", "dns")


class Action(_Strict):
    """What an observation writes, on which pods, and for how long."""

    annotate: dict[str, str] = Field(default_factory=lambda: {"retina.sh": "observe"})
    #: how the pods are observed; None: the deployment's ``--observation-backend``
    backend: Backend | None = None
    #: with ``acns-metric-filters``: the Hubble metrics the pods' filters include
    metrics: tuple[MetricName, ...] = METRICS
    ttl: Seconds = 900.0
    scope: Literal["workload", "pod", "namespace"] = "workload"
    #: workloads this topology may observe at once; beyond it new observations are refused, so
    #: a flood of detections cannot annotate the whole cluster.
    max_observations: Annotated[int, Field(ge=1, alias="maxObservations")] = 100
    #: optional Retina Capture, created when the window's detections reach its priority.
    capture: Capture | None = None
    #: optional ladder of TTLs for repeat offenders; without it every observation lasts ``ttl``
    escalation: Escalation | None = None

    _parse_ttl = field_validator("ttl", mode="before")(_duration)

    @property
    def levels(self) -> int:
        """Steps of the escalation ladder (1 without one)."""
        return len(self.escalation.ttls) if self.escalation else 1

    def level_of(self, level: int) -> int:
        """A level clamped to the ladder: a forged or stale action picks no step beyond it."""
        return min(max(level, 1), self.levels)

    def ttl_at(self, level: int) -> float:
        """How long an observation at ``level`` lasts."""
        if self.escalation is None:
            return self.ttl
        return self.escalation.ttls[self.level_of(level) - 1]

    @model_validator(mode="after")
    def _capture_level_reachable(self) -> Action:
        if self.capture is not None and self.capture.min_level > self.levels:
            raise ValueError(
                f"capture.minLevel {self.capture.min_level} is above the ladder's last step "
                f"({self.levels}): add escalation.ttls steps or lower minLevel"
            )
        return self

    @model_validator(mode="after")
    def _something_to_write(self) -> Action:
        if not self.annotate and self.backend != ACNS:
            raise ValueError(
                f"annotate: at least one annotation is needed (only backend: {ACNS} writes none)"
            )
        if self.backend == ACNS and self.scope == "namespace":
            raise ValueError(
                f"backend: {ACNS} filters pods by name; scope: namespace annotates a Namespace "
                "object for Retina: use scope workload or pod"
            )
        return self

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: tuple[MetricName, ...]) -> tuple[MetricName, ...]:
        if not value:
            raise ValueError(f"at least one metric is needed, of {', '.join(METRICS)}")
        if len(set(value)) != len(value):
            raise ValueError("each metric at most once")
        return value

    def observed_through(self, default: str = "retina-annotation") -> Backend:
        """The backend this topology's observations use: its own, else the deployment's."""
        return self.backend or (ACNS if default == ACNS else "retina-annotation")

    def pod_annotations(self, default: str = "retina-annotation") -> dict[str, str]:
        """What an observation writes on a pod besides the bookkeeping: nothing under ACNS.

        Retina's Hubble control plane ignores ``retina.sh`` annotations, so they would only
        claim an observation that does not happen.
        """
        return {} if self.observed_through(default) == ACNS else dict(self.annotate)

    def filter_metrics(self, default: str = "retina-annotation") -> tuple[MetricName, ...]:
        """The Hubble metrics its observations get through ACNS's filters; () under Retina's."""
        return self.metrics if self.observed_through(default) == ACNS else ()

    @field_validator("annotate")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not conventions.is_annotation_key(key):
                raise ValueError(f"{key!r} is not a valid Kubernetes annotation key")
            if key.startswith(conventions.PREFIX + "/"):
                raise ValueError(f"{key!r}: keys under {conventions.PREFIX}/ are streamproc's own")
        return value


class Source(_Strict):
    """Where detections come from."""

    topic: str = "falco"


class Spec(_Strict):
    """The topology's behaviour."""

    source: Source = Source()
    match: Match = Match()
    window: Window = Window()
    action: Action = Action()
    dry_run: bool = Field(default=False, alias="dryRun")


class Metadata(_Strict):
    """Only the name: it appears in metrics, annotations and Kafka keys."""

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not conventions.is_dns1123_label(value):
            raise ValueError(f"{value!r} must be a DNS-1123 label (lower case, digits, '-')")
        return value


class Topology(_Strict):
    """One validated topology file."""

    api_version: Literal["streamproc/v1"] = Field(alias="apiVersion")
    kind: Literal["Topology"]
    metadata: Metadata
    spec: Spec = Spec()

    @property
    def name(self) -> str:
        """The topology's name."""
        return self.metadata.name


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Line (1-based) of the deepest YAML node on ``loc`` that exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if found is None:
                key = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = found
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def load_file(path: Path) -> Topology:
    """Parse and validate one file; raise TopologyError naming file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(path, None, "", f"cannot read: {exc}") from None
    return load_text(text, path)


def load_text(text: str, path: Path) -> Topology:
    """Parse and validate one topology's text; ``path`` is what errors name."""
    if len(text) > MAX_TOPOLOGY_CHARS:
        raise TopologyError(path, None, "", f"larger than {MAX_TOPOLOGY_CHARS} characters")
    try:
        events = yaml.parse(text, Loader=yaml.SafeLoader)
        if sum(isinstance(event, yaml.AliasEvent) for event in events) > MAX_ALIASES:
            raise TopologyError(path, None, "", f"more than {MAX_ALIASES} YAML aliases")
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        docs = list(yaml.safe_load_all(text))
    except RecursionError:
        raise TopologyError(path, None, "", "nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise TopologyError(
            path, line, "", f"invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    docs = [d for d in docs if d is not None]
    if len(docs) != 1:
        raise TopologyError(path, None, "", f"expected exactly one topology, found {len(docs)}")
    doc: Any = docs[0]
    node = next(n for n in nodes if n is not None)
    if not isinstance(doc, dict):
        raise TopologyError(path, 1, "", "a topology must be a YAML mapping")
    try:
        return Topology.model_validate(doc)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(
            p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        field = ".".join(str(p) for p in loc)
        reason = error["msg"]
        if error["type"] == "extra_forbidden" and loc:
            reason += _did_you_mean(str(loc[-1]))
        raise TopologyError(path, _line_of(node, loc), field, reason) from None


def _known_fields() -> set[str]:
    """Every field name a topology may use, spelled as in YAML."""
    models: list[type[BaseModel]] = [Topology, Metadata, Spec, Source, Match, Namespaces]
    models += [Window, Action, Capture, CaptureOutput, S3Upload]
    return {info.alias or name for model in models for name, info in model.model_fields.items()}


def _did_you_mean(unknown: str) -> str:
    close = difflib.get_close_matches(unknown, sorted(_known_fields()), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_path(path: Path | str) -> tuple[list[Topology], list[TopologyError]]:
    """Every topology in a file or folder that loads, and an error for each one that does not.

    ``streamproc check`` reports them all at once; names must be unique across the folder.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            return [], [TopologyError(root, None, "", "no *.yaml topology files in this folder")]
    elif root.is_file():
        files = [root]
    else:
        return [], [TopologyError(root, None, "", "no such file or folder")]
    loaded: dict[str, tuple[Path, Topology]] = {}
    errors: list[TopologyError] = []
    for file in files:
        try:
            topology = load_file(file)
        except TopologyError as exc:
            errors.append(exc)
            continue
        if topology.name in loaded:
            first = loaded[topology.name][0]
            errors.append(
                TopologyError(file, None, "metadata.name", f"{topology.name!r} is also in {first}")
            )
            continue
        loaded[topology.name] = (file, topology)
    return [t for _, t in loaded.values()], errors


def load_path(path: Path | str) -> list[Topology]:
    """Load a file, or every ``*.yaml``/``*.yml`` in a folder; the first error is raised."""
    loaded, errors = check_path(path)
    if errors:
        raise errors[0]
    return loaded


def resolve_path(given: Path | None) -> Path:
    """The topologies a command uses: the given path, else ./topologies, else the shipped one.

    Every command falls back alike, so ``streamproc run`` outside a checkout works as
    ``check`` and ``lab`` do (each logs which path it loaded).
    """
    if given is not None:
        return given
    local = Path("topologies")
    return local if local.is_dir() else default_path()


def default_path() -> Path:
    """The shipped topologies: ``topologies/`` in a checkout, or the copy inside the wheel."""
    package = Path(__file__).resolve().parents[1]  # streamproc/, where the wheel puts them
    packaged = package / "_topologies"
    return packaged if packaged.is_dir() else package.parent / "topologies"


def reading(topology: Topology, topic: str) -> Topology:
    """The same topology reading another source topic (``--input-topic``)."""
    source = topology.spec.source.model_copy(update={"topic": topic})
    return topology.model_copy(update={"spec": topology.spec.model_copy(update={"source": source})})


def resolve_backend(topology: Topology, default: str) -> Topology:
    """The same topology with its backend settled: its own, else the deployment's default.

    The annotate stage resolves its topologies once, so the annotator, the follower and the
    filter reconciler agree on how each topology observes. The settled action is validated
    again (``model_copy`` validates nothing): a topology that is valid on its own may not be
    under the deployment's default (``scope: namespace`` under ``acns-metric-filters``), and
    is refused as any invalid topology is, naming it and the setting.
    """
    action = topology.spec.action
    if action.backend is not None:
        return topology
    backend = action.observed_through(default)
    try:
        settled = Action.model_validate({**action.model_dump(), "backend": backend})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise TopologyError(
            f"topology {topology.name}",
            None,
            "spec.action",
            f"under the deployment's --observation-backend {backend}: {reason}",
        ) from None
    return topology.model_copy(
        update={"spec": topology.spec.model_copy(update={"action": settled})}
    )


def scaled(topology: Topology, speed: float) -> Topology:
    """The same topology with windows and TTL divided by ``speed`` (the lab's time-lapse)."""
    if speed == 1:
        return topology
    spec = topology.spec
    window = spec.window.model_copy(update={"size": max(1.0, round(spec.window.size / speed))})
    escalation = spec.action.escalation
    if escalation is not None:
        escalation = escalation.model_copy(
            update={
                "ttls": tuple(max(1.0, ttl / speed) for ttl in escalation.ttls),
                "forget_after": max(1.0, escalation.forget_after / speed),
            }
        )
    action = spec.action.model_copy(
        update={"ttl": max(1.0, spec.action.ttl / speed), "escalation": escalation}
    )
    new_spec = spec.model_copy(update={"window": window, "action": action})
    return topology.model_copy(update={"spec": new_spec})
