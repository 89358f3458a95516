"""Stage 1, ingest: raw detections in, compact per-workload tallies out.

A Faust agent costs far more per event than a plain aiokafka consumer with orjson (figures in
docs/measurements.md), so every raw detection stops here: it is parsed, validated (or dead-lettered
with its reason), matched against the topologies, tied to its workload, and counted into a tally
per topology x workload x window. One ``getmany`` batch is one unit of work: its tallies and dead
letters are produced and acknowledged by the broker before the batch's offsets are committed, so
a crash repeats a batch rather than losing one (at-least-once). The stage keeps no state between
batches and scales out by partition.

Windows are aligned on the Kafka record timestamp (the moment the detection was appended), not on
the ``time`` field inside the event: that is what the broker vouches for, and a hostile or
skewed producer clock inside a payload cannot stretch an observation. A record time that is
absent, too far ahead of the stage's own arrival clock, or too far behind it while the record is
provably fresh (a producer's clock, not a backlog) is replaced by the arrival time and counted
(:func:`streamproc.clocks.record_time`): no record time can stall the windows stage or cut an
observation short.

The package: ``loop`` (the Kafka loop and ``Ingestor.process``), ``routing`` (what each kind of
detection does, decided once per batch), ``timing`` (which time a detection is windowed at),
``gating`` (the tally gate and the commit points), ``batches`` (a batch in and out).
"""

from streamproc.stages.ingest.batches import STAGE, BatchResult, Incoming
from streamproc.stages.ingest.gating import CommitPoint, TallyGate, merge
from streamproc.stages.ingest.loop import Ingestor
from streamproc.stages.ingest.timing import OUT_OF_STEP_MS, PartitionEnds, in_step

__all__ = [
    "OUT_OF_STEP_MS",
    "STAGE",
    "BatchResult",
    "CommitPoint",
    "Incoming",
    "Ingestor",
    "PartitionEnds",
    "TallyGate",
    "in_step",
    "merge",
]
