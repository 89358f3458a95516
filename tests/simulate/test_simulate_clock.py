"""A payload's absurd ``time`` cannot move ``simulate``'s clock away from its neighbours.

Falcosidekick accepts any valid RFC 3339 ``time``: epoch 0, the year 2999. Live windows on the
Kafka record time and never notices; simulate, windowing files on the payload's time, must not
either.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from random import Random

import orjson
from click.testing import CliRunner

from streamproc.cli import main
from streamproc.lab import samples
from streamproc.lab.cluster import SampleWorkload, sample_cluster
from streamproc.model import topologies
from streamproc.settings import Settings
from streamproc.simulating import inputs, session
from streamproc.stages.ingest import OUT_OF_STEP_MS, in_step

TOPOLOGY = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: ladder
spec:
  match:
    priority: ">=Warning"
  window:
    size: 1m
    threshold: 3
  action:
    ttl: 5m
    escalation:
      ttls: [5m, 15m, 1h]
      forgetAfter: 2h
"""
T0 = 1_900_000_020.0
ABSURD = ("1970-01-01T00:00:00Z", "2999-12-31T23:59:59.999999999Z", "1970-01-01T00:00:01Z")


def user_workloads() -> list[SampleWorkload]:
    return [w for w in sample_cluster().workloads if w.namespace != "kube-system"]


#: the workload the absurd payloads name, and no good one: its detections cannot change theirs
ODD = user_workloads()[-1]


def good_payloads(count: int) -> list[bytes]:
    """Bursts of detections in random sample workloads, in time order over about six hours."""
    rng = random.Random(7)
    workloads = user_workloads()[:-1]
    found: list[bytes] = []
    at = T0
    while len(found) < count:
        workload = rng.choice(workloads)
        for _ in range(rng.randint(1, 6)):
            pod = rng.choice(workload.pods)
            rule = rng.choice(samples.RULES[:2])
            found.append(orjson.dumps(samples.detection(workload, pod, rule, at, rng)))
            at += rng.random() * 2
        at += rng.random() * 20
    return found[:count]


def with_absurd_times(good: list[bytes], every: int) -> tuple[list[bytes], int]:
    """The good payloads with a copy of one carrying an absurd ``time`` after every ``every``."""
    rng = random.Random(3)
    mixed: list[bytes] = []
    absurd = 0
    for number, line in enumerate(good, start=1):
        mixed.append(line)
        if number % every == 0:
            pod = rng.choice(ODD.pods)
            payload = samples.detection(ODD, pod, samples.RULES[0], T0, rng)
            payload["time"] = ABSURD[absurd % len(ABSURD)]
            mixed.append(orjson.dumps(payload))
            absurd += 1
    return mixed, absurd


def simulate(tmp_path: Path, name: str, payloads: list[bytes]) -> dict[str, object]:
    source = tmp_path / f"{name}.jsonl"
    source.write_bytes(b"\n".join(payloads) + b"\n")
    topology = tmp_path / "ladder.yaml"
    topology.write_text(TOPOLOGY)
    result = CliRunner().invoke(
        main,
        ["simulate", "-o", "json", "--topology", str(topology), str(source)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def decisions(doc: dict[str, object]) -> list[tuple[object, ...]]:
    """The decisions on the good payloads' workloads, with what the annotator made of them."""
    actions = doc["actions"]
    assert isinstance(actions, list)
    return sorted(
        (a["namespace"], a["kind"], a["name"], a["window_start"], a["level"], a["outcome"])
        for a in actions
        if a["name"] != ODD.name
    )


def test_decisions_on_good_payloads_do_not_change_when_absurd_times_are_interleaved(
    tmp_path: Path,
) -> None:
    """One absurd time every 60 lines: the same decisions as the good payloads alone, counted."""
    good = good_payloads(20_000)  # more than one batch: a moved clock reaches the next ones
    mixed, absurd = with_absurd_times(good, 60)
    alone = simulate(tmp_path, "good", good)
    together = simulate(tmp_path, "mixed", mixed)
    assert len(decisions(alone)) > 50  # enough decisions for a moved clock to show
    assert {d[4] for d in decisions(alone)} >= {1, 2}  # the ladder, which a clock moves
    assert decisions(together) == decisions(alone)
    assert together["time_range"] == alone["time_range"]
    assert alone["times_out_of_step"] == 0
    assert together["times_out_of_step"] == absurd
    assert together["times_out_of_step_examples"] == [
        f"{tmp_path / 'mixed.jsonl'}:{61 * n}" for n in (1, 2, 3)
    ]


def test_the_table_counts_the_times_out_of_step(tmp_path: Path) -> None:
    """A person reading the table sees how many times were replaced, and where."""
    mixed, absurd = with_absurd_times(good_payloads(600), 60)
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"\n".join(mixed) + b"\n")
    topology = tmp_path / "ladder.yaml"
    topology.write_text(TOPOLOGY)
    result = CliRunner().invoke(
        main, ["simulate", "--topology", str(topology), str(source)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"payload times out of step with their neighbours: {absurd} (e.g. {source}:61" in text


def times(*minutes: float) -> list[tuple[int, None, int]]:
    return [(n, None, int(T0 * 1000 + m * 60_000)) for n, m in enumerate(minutes)]


def test_a_lone_time_takes_the_running_clock_and_a_jump_of_two_is_kept() -> None:
    """Minute 0, 1, 10^6, 2 → the outlier gets minute 1; a pair at a later day stays."""
    later = 24 * 60.0
    parsed = times(0, 1, 1e6, 2, 3, later, later + 1, later + 2)
    out: list[object] = []
    fixed = in_step(parsed, out)  # type: ignore[arg-type]
    assert out == [2]
    assert [t for _, _, t in fixed] == [t for _, _, t in times(0, 1, 1, 2, 3)] + [
        t for _, _, t in times(later, later + 1, later + 2)
    ]
    assert later * 60_000 > OUT_OF_STEP_MS


def test_an_outlier_at_a_batch_edge_takes_the_clock_of_the_payload_after_it() -> None:
    """The first payload of a batch has no clock before it: its neighbours' time is used."""
    parsed = times(-1e6, 0, 1, 2)
    out: list[object] = []
    fixed = in_step(parsed, out)  # type: ignore[arg-type]
    assert out == [0]
    assert fixed[0][2] == parsed[1][2]


def test_times_that_agree_nowhere_are_left_alone() -> None:
    """Days apart one by one (a sparse file) leave no clock to trust: nothing is replaced."""
    parsed = times(0, 2000, 4000, 6000)
    out: list[object] = []
    assert in_step(parsed, out) == parsed  # type: ignore[arg-type]
    assert out == []


def simulated_in_batches(tmp_path: Path, payloads: list[bytes], size: int) -> dict[str, object]:
    source = tmp_path / "batched.jsonl"
    source.write_bytes(b"\n".join(payloads) + b"\n")
    topology = tmp_path / "ladder.yaml"
    topology.write_text(TOPOLOGY)
    request = session.Request(
        settings=Settings(simulate_workers=1),
        topology_sets=[topologies.load_path(topology)],
        names=["t"],
        files=[source],
        batch_lines=size,
    )
    return session.as_json(asyncio.run(session.simulate(request)))


def at(seconds: float, *, time: str | None = None) -> bytes:
    workload = user_workloads()[0]
    payload = samples.detection(workload, workload.pods[0], samples.RULES[0], seconds, Random(1))
    if time is not None:
        payload["time"] = time
    return orjson.dumps(payload)


def test_a_jump_at_a_batch_edge_is_kept_and_an_outlier_there_is_not(tmp_path: Path) -> None:
    """Batches of 4: a new day on a batch's last line is a jump its context shows, kept."""
    days = [at(T0 + day * 86_400 + n) for day in range(3) for n in range(4)][1:]
    kept = simulated_in_batches(tmp_path, days, 4)
    assert kept["times_out_of_step"] == 0
    absurd = [*days[:2], at(T0, time=ABSURD[1]), *days[2:]]  # the 3rd line of a batch of 4
    found = simulated_in_batches(tmp_path, absurd, 4)
    assert found["times_out_of_step"] == 1
    assert found["time_range"] == kept["time_range"]


def test_every_batch_comes_with_the_lines_around_it_for_every_share(tmp_path: Path) -> None:
    """The context of a batch is the same whether one process or a worker reads it."""
    source = tmp_path / "lines.jsonl"
    source.write_bytes(b"\n".join(b"line %d" % n for n in range(1, 11)) + b"\n")
    alone = list(inputs.batches([source], "t", 3))
    assert [b.before for b in alone] == [
        [],
        [b"line 2", b"line 3"],
        [b"line 5", b"line 6"],
        [
            b"line 8",
            b"line 9",
        ],
    ]
    assert [b.after for b in alone] == [
        [b"line 4", b"line 5"],
        [b"line 7", b"line 8"],
        [b"line 10"],
        [],
    ]
    shared = [
        *inputs.batches([source], "t", 3, share=(0, 2)),
        *inputs.batches([source], "t", 3, share=(1, 2)),
    ]
    assert sorted(shared, key=lambda b: b.lines[0].offset) == alone
