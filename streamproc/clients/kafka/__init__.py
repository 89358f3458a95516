"""Kafka plumbing for the aiokafka-based stages; the only importer of aiokafka in streamproc.

The Faust stage talks to Kafka through Faust; everything else comes here, so connection options
(TLS and SASL included) are set in one place. Offsets are always committed by hand, after the
work a record caused is durable: at-least-once end to end. One job per module:

- ``connecting``: TLS/SASL options, producer and consumer factories, the group's assignor;
- ``explaining``: what failed talking to Kafka, in one line for a person;
- ``admin``: topics, waiting for the brokers, reporting outages;
- ``reconnecting``: work (a stage's clients starting) tried again when Kafka went away meanwhile;
- ``reading``: whole topics and time ranges for reports and ``simulate``, joining no group;
- ``committing``: the background committer, lag per fetch;
- ``dead_letters``: refused records and skipped batches, with the headers that say why;
- ``recovery``: the undecodable-batch policy (``Reader``);
- ``survey``: the doctor's read-only look at topics and groups;
- ``aliases``: the names callers type against instead of aiokafka's (``Consumer``, ``Record``...);
- ``upstream_fixes``: a fix to aiokafka applied on import, until aiokafka ships it.

Callers import the package (``from streamproc.clients import kafka``) and use ``kafka.X``.
"""

from __future__ import annotations

from streamproc.clients.kafka.admin import (
    TopicSpec,
    ensure_topics,
    partition_counts,
    wait_for_broker,
    watch_broker,
)
from streamproc.clients.kafka.aliases import Consumer, KafkaError, Partition, Producer, Record
from streamproc.clients.kafka.committing import Committer, batch_lag, report_batch
from streamproc.clients.kafka.connecting import (
    Client,
    CountingAssignor,
    connection_options,
    consumer,
    partition_of,
    producer,
    publish,
    ssl_context,
    started,
    stop_clients,
)
from streamproc.clients.kafka.dead_letters import (
    BadBatch,
    dead_letter_batches,
    dead_letter_headers,
    dead_letter_record,
)
from streamproc.clients.kafka.explaining import connect_errors, describe, explain, refused
from streamproc.clients.kafka.reading import UnknownTopic, read_range, read_topic
from streamproc.clients.kafka.reconnecting import (
    start_when_reachable,
    started_when_reachable,
    went_away,
    when_reachable,
)
from streamproc.clients.kafka.recovery import Reader
from streamproc.clients.kafka.survey import (
    SAMPLE_PER_PARTITION,
    Survey,
    TopicSurvey,
    end_offsets,
    survey,
)
from streamproc.clients.kafka.upstream_fixes import apply as _apply_upstream_fixes

_apply_upstream_fixes()

__all__ = [
    "SAMPLE_PER_PARTITION",
    "BadBatch",
    "Client",
    "Committer",
    "Consumer",
    "CountingAssignor",
    "KafkaError",
    "Partition",
    "Producer",
    "Reader",
    "Record",
    "Survey",
    "TopicSpec",
    "TopicSurvey",
    "UnknownTopic",
    "batch_lag",
    "connect_errors",
    "connection_options",
    "consumer",
    "dead_letter_batches",
    "dead_letter_headers",
    "dead_letter_record",
    "describe",
    "end_offsets",
    "ensure_topics",
    "explain",
    "partition_counts",
    "partition_of",
    "producer",
    "publish",
    "read_range",
    "read_topic",
    "refused",
    "report_batch",
    "ssl_context",
    "start_when_reachable",
    "started",
    "started_when_reachable",
    "stop_clients",
    "survey",
    "wait_for_broker",
    "watch_broker",
    "went_away",
    "when_reachable",
]
