"""One batch as the ingest stage sees it: the records in, what they produced out."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from streamproc import clocks, reasons
from streamproc.model import fleets
from streamproc.model.events import Detection
from streamproc.model.tallies import Tally
from streamproc.model.workloads import WorkloadRef

STAGE = "ingest"
#: a tally's place: (topology, workload key, window start)
Slot = tuple[str, str, int]


class Incoming(Protocol):
    """What ingest reads of a record: an aiokafka ``ConsumerRecord``, or a line of a file."""

    @property
    def topic(self) -> str:
        """The topic (for a file: the one every topology reads)."""

    @property
    def partition(self) -> int:
        """The partition (for files: the file's index)."""

    @property
    def offset(self) -> int:
        """The offset (for a file: the line's number)."""

    @property
    def timestamp(self) -> int:
        """The Kafka record time, ms."""

    @property
    def key(self) -> bytes | None:
        """The record key."""

    @property
    def value(self) -> bytes | None:
        """The raw detection."""


class BatchResult:
    """What one batch produced, kept apart from I/O so it can be tested and measured alone."""

    __slots__ = (
        "consumed",
        "dead",
        "excluded",
        "excluded_detections",
        "fields",
        "host_events",
        "identities",
        "latest_ms",
        "matched",
        "out_of_step",
        "retimed",
        "rules",
        "tallies",
        "unmatched",
    )

    def __init__(self) -> None:
        self.tallies: dict[Slot, Tally] = {}
        self.dead: list[tuple[Incoming, reasons.DeadLetter, str]] = []
        self.consumed: Counter[tuple[int, str]] = Counter()
        self.matched: Counter[str] = Counter()
        #: counted detections by (topology, rule)
        self.rules: Counter[tuple[str, str]] = Counter()
        self.host_events = 0
        self.unmatched = 0
        #: detections a topology would have counted but for its excluded namespaces
        self.excluded: Counter[str] = Counter()
        self.excluded_detections = 0
        #: the latest detection time in the batch (record or payload time, as windowed)
        self.latest_ms = 0
        #: records windowed at their arrival instead of their own time, by why
        self.retimed: Counter[clocks.Retimed] = Counter()
        #: counted detections by pod and the workload found for it: (cluster, namespace, pod,
        #: workload) -> detections (``streamproc simulate`` reports how identities were found)
        self.identities: Counter[tuple[str, str, str, WorkloadRef]] = Counter()
        #: detections whose cluster field was not routed as written, by (the name it gave,
        #: ignored or refused): what the stage reports once per name
        self.fields: Counter[tuple[str, fleets.Placement]] = Counter()
        #: with payload time, the records whose ``time`` was out of step with their neighbours'
        #: and was replaced by the running clock (``in_step``)
        self.out_of_step: list[Incoming] = []


Parsed = tuple[Incoming, Detection, int]
