"""Each stage creates (and so needs Kafka ACLs for) only the topics it reads or writes."""

from __future__ import annotations

from streamproc.model import topologies
from streamproc.running import STAGES, stage_topics
from streamproc.settings import Settings


def test_each_stage_touches_only_its_own_topics() -> None:
    settings = Settings()
    loaded = topologies.load_path(topologies.default_path())
    assert stage_topics(settings, loaded, ["ingest"]) == [
        "falco",
        "streamproc.tallies",
        "streamproc.dlq",
    ]
    assert stage_topics(settings, loaded, ["windows"]) == [
        "streamproc.tallies",
        "streamproc.actions",
        "streamproc.dlq",
    ]
    assert stage_topics(settings, loaded, ["annotate"]) == [
        "streamproc.actions",
        "streamproc.audit",
        "streamproc.dlq",
    ]
    assert len(stage_topics(settings, loaded, STAGES)) == 5
