"""``streamproc simulate`` on files: the report, --compare, --plot, and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streamproc.cli import main
from streamproc.lab import replay, samples
from streamproc.lab.broker import EmbeddedBroker
from streamproc.lab.cluster import sample_cluster
from streamproc.model import topologies
from streamproc.settings import Settings
from streamproc.simulating import parallel, session
from tests.conftest import wait_for

TOPOLOGY = """\
apiVersion: streamproc/v1
kind: Topology
metadata:
  name: {name}
spec:
  match:
    priority: ">=Warning"
  window:
    size: 1m
    threshold: {threshold}
  action:
    ttl: 15m
    maxObservations: {cap}
{extra}"""
LADDER = """\
    escalation:
      ttls: [15m, 1h, 6h]
    capture:
      priority: ">=Warning"
      minLevel: 2
"""
T0 = 1_900_000_020.0
DAY_S = 86_400


def topology(
    tmp_path: Path, name: str, threshold: int = 1, cap: int = 100, extra: str = ""
) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TOPOLOGY.format(name=name, threshold=threshold, cap=cap, extra=extra))
    return path


def lines(days: tuple[float, ...] = (0,), per_pod: int = 1) -> list[bytes]:
    """Detections of every sample workload on each day: one per pod, ``per_pod`` times.

    In time order, as a topic's records are: simulate takes a payload whose time is far from
    all its neighbours' for an absurd one (``ingesting.in_step``).
    """
    rng = random.Random(1)
    found = []
    for workload in sample_cluster().workloads:
        for day in days:
            for pod in workload.pods:
                for n in range(per_pod):
                    at = T0 + day * DAY_S + n
                    payload = samples.detection(workload, pod, samples.RULES[0], at, rng)
                    found.append((at, orjson.dumps(payload)))
    return [line for _, line in sorted(found, key=lambda item: item[0])]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)
    return result.exit_code, result.output


def report(*args: str) -> dict[str, object]:
    code, output = run("-o", "json", *args)
    assert code == 0, output
    return json.loads(output)  # type: ignore[no-any-return]


@pytest.fixture
def falco(tmp_path: Path) -> Path:
    path = tmp_path / "falco.jsonl.gz"
    body = b"\n".join([*lines(), *(raw for raw, _ in samples.MALFORMED)]) + b"\n"
    path.write_bytes(gzip.compress(body))
    return path


def test_a_topology_compared_with_itself_differs_nowhere(tmp_path: Path, falco: Path) -> None:
    path = topology(tmp_path, "observe")
    found = report("--topology", str(path), "--compare", str(path), str(falco))
    assert found["only_a"] == found["only_b"] == []
    a, b = found["a"], found["b"]
    assert a["topologies"] == b["topologies"]  # type: ignore[index]
    assert a["topologies"]["observe"]["observations_opened"] > 0  # type: ignore[index]


def test_compare_lists_the_workloads_only_one_set_observes(tmp_path: Path) -> None:
    falco = tmp_path / "falco.jsonl"
    falco.write_bytes(b"\n".join(lines(per_pod=3)))
    strict = tmp_path / "strict"
    strict.mkdir()
    topology(strict, "observe", threshold=4)  # only workloads with 2+ pods reach 4 in a window
    found = report(
        "--topology", str(topology(tmp_path, "observe")), "--compare", str(strict), str(falco)
    )
    assert found["only_b"] == []
    single_pod = {
        f"{w.namespace}/{w.kind}/{w.name}" for w in sample_cluster().workloads if len(w.pods) == 1
    }
    # without a snapshot a DaemonSet's pods read as bare pods (the name's shape), each alone
    daemons = {
        f"{w.namespace}/Pod/{pod}"
        for w in sample_cluster().workloads
        if w.kind == "DaemonSet"
        for pod in w.pods
    }
    assert set(found["only_a"]) == single_pod | daemons  # type: ignore[arg-type]


def test_malformed_lines_are_counted_by_reason_with_their_place(
    tmp_path: Path, falco: Path
) -> None:
    found = report("--topology", str(topology(tmp_path, "observe")), str(falco))
    expected: dict[str, int] = {}
    for _, reason in samples.MALFORMED:
        expected[reason] = expected.get(reason, 0) + 1
    assert found["dead_letters"] == expected
    first = found["dead_letter_examples"]["invalid-json"][0]  # type: ignore[index]
    assert first.startswith(f"{falco}:")
    assert found["identities"]["name-shape"] > 0  # type: ignore[index]


def test_the_table_says_where_windows_came_from_and_what_was_opened(
    tmp_path: Path, falco: Path
) -> None:
    code, output = run("--topology", str(topology(tmp_path, "observe")), str(falco))
    assert code == 0, output
    assert "windows from payload time" in output
    assert "observations opened" in output
    assert "estimated API writes" in output


def test_a_repeat_offender_climbs_the_ladder_and_is_captured_from_min_level(
    tmp_path: Path,
) -> None:
    falco = tmp_path / "falco.jsonl"
    falco.write_bytes(b"\n".join(lines(days=(0, 1, 2))))
    found = report("--topology", str(topology(tmp_path, "ladder", extra=LADDER)), str(falco))
    stats = found["topologies"]["ladder"]  # type: ignore[index]
    workloads = stats["workloads"]
    assert stats["levels"] == {"1": workloads, "2": workloads, "3": workloads}
    assert stats["captures"] == 2 * workloads  # levels 2 and 3 only
    # every observation ran out: one expiry per pod per day
    assert stats["api_writes"]["expiries"] == stats["api_writes"]["applies"]


def test_refusals_by_cap_and_excluded_namespace_are_counted(tmp_path: Path) -> None:
    rng = random.Random(2)
    cluster = sample_cluster()
    falco = tmp_path / "falco.jsonl"
    body = lines()
    system = next(w for w in cluster.workloads if w.namespace == "kube-system")
    body.append(orjson.dumps(samples.detection(system, system.pods[0], samples.RULES[0], T0, rng)))
    falco.write_bytes(b"\n".join(body))
    found = report("--topology", str(topology(tmp_path, "capped", cap=2)), str(falco))
    stats = found["topologies"]["capped"]  # type: ignore[index]
    assert stats["workloads"] == 2
    assert stats["refused"]["cap"] > 0
    assert stats["refused"]["excluded_namespace"] >= 1


def test_plot_draws_a_png(tmp_path: Path, falco: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "timeline.png"
    code, output = run(
        "--topology", str(topology(tmp_path, "observe")), "--plot", str(out), str(falco)
    )
    assert code == 0, output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_truncated_gzip_is_one_plain_line(tmp_path: Path, falco: Path) -> None:
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(falco.read_bytes()[:-20])
    code, output = run("--topology", str(topology(tmp_path, "observe")), str(broken))
    assert code == 1
    assert output.strip().splitlines() == [output.strip()]
    assert str(broken) in output
    assert "Traceback" not in output


def test_a_missing_broker_is_one_plain_line(tmp_path: Path) -> None:
    code, output = run(
        "--topology",
        str(topology(tmp_path, "observe")),
        "--topic",
        "falco",
        "--bootstrap-servers",
        "127.0.0.1:1",
    )
    assert code == 1
    assert "cannot reach Kafka" in output
    assert "Traceback" not in output


def test_a_missing_topic_is_one_plain_line_that_does_not_offer_to_create_it(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    code, output = run(
        "--topology",
        str(topology(tmp_path, "observe")),
        "--topic",
        "no-such-topic",
        "--bootstrap-servers",
        broker.bootstrap,
    )
    assert code == 1
    assert output.strip().splitlines() == [output.strip()]
    assert "'no-such-topic' does not exist" in output
    assert "never creates one" in output


def test_files_and_topic_together_are_refused(tmp_path: Path, falco: Path) -> None:
    code, output = run("--topology", str(topology(tmp_path, "observe")), "--topic", "x", str(falco))
    assert code == 2
    assert "not both" in output


# -- worker processes ----------------------------------------------------------------------------


def _simulated(paths: list[Path], topology_path: Path, workers: int) -> dict[str, object]:
    request = session.Request(
        settings=Settings(simulate_workers=workers),
        topology_sets=[topologies.load_path(topology_path)],
        names=["t"],
        files=paths,
        batch_lines=7,  # many batches from a small file: every worker gets several
    )
    return session.as_json(asyncio.run(session.simulate(request)))


def test_workers_report_exactly_what_one_process_reports(tmp_path: Path, falco: Path) -> None:
    plain = tmp_path / "more.jsonl"
    plain.write_bytes(b"\n".join(lines(days=(1, 2, 3), per_pod=2)) + b"\n\n")
    ladder = topology(tmp_path, "observe", extra=LADDER)
    alone = _simulated([falco, plain], ladder, workers=1)
    assert alone["topologies"]["observe"]["observations_opened"] > 0  # type: ignore[index]
    assert alone["dead_letters"]
    for workers in (2, 3):
        assert _simulated([falco, plain], ladder, workers=workers) == alone


def _fail(job: object, index: int, count: int, put: Callable[[object], None]) -> None:
    """A worker target: share 0 works, share 1 fails with a message or dies without one."""
    if index == 0:
        put("first")
        put("third")
    elif job == "raise":
        raise ValueError("the input ends in the middle of a line")
    else:
        os._exit(3)


@pytest.mark.parametrize(
    ("job", "message"),
    [("raise", "the input ends in the middle of a line"), ("die", "exit code 3")],
)
def test_a_failing_worker_is_one_plain_line_after_the_results_before_it(
    job: str, message: str
) -> None:
    got: list[object] = []

    async def consume() -> None:
        async for item in parallel.in_order(_fail, job, 2):
            got.append(item)  # noqa: PERF401 - kept as they come, up to the failure

    with pytest.raises(parallel.WorkerError, match=message):
        asyncio.run(consume())
    assert got == ["first"]


def test_a_worker_failing_on_a_truncated_gzip_is_one_plain_line(
    tmp_path: Path, falco: Path
) -> None:
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(falco.read_bytes()[:-20])
    code, output = run("--workers", "2", "--topology", str(topology(tmp_path, "o")), str(broken))
    assert code == 1
    assert output.strip().splitlines() == [output.strip()]
    assert str(broken) in output
    assert "Traceback" not in output


def _workers_of(pid: int) -> list[int]:
    """Worker processes (multiprocessing's spawn) among ``pid``'s children."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status  # ended, not yet reaped by init


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_simulation_and_its_workers_while_they_wait(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Workers blocked on input nobody writes (a FIFO): Ctrl-C (to the whole process group,
    as a terminal sends it) or SIGTERM (to the command) ends them all, with one plain line."""
    fifo = tmp_path / "falco.jsonl"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "streamproc", "simulate", "--workers", "2"]
    process = subprocess.Popen(
        [*command, "--topology", str(topology(tmp_path, "o")), str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        workers = wait_for(
            lambda: len(found := _workers_of(process.pid)) == 2 and found,
            timeout=60,
            what="two worker processes",
        )
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signum, stderr
    text = stderr.decode()
    assert "Traceback" not in text
    assert "streamproc: interrupted" in text
    wait_for(lambda: all(_gone(pid) for pid in workers), timeout=10, what="workers to end")


def _table_workloads(report: session.Report) -> set[str]:
    """The workloads the table counts as observed, as the plot labels its rows."""
    return {
        f"{name}: {ns}/{kind}/{workload}"
        for name, stats in report.stats.items()
        for ns, kind, workload, _ in stats.workloads
    }


def test_the_plot_draws_what_the_table_says_for_both_sides_with_a_legend(
    tmp_path: Path,
) -> None:
    """Rows with a bar of set A are A's observed workloads, as with B; the legend names both."""
    from matplotlib import pyplot as plt

    from streamproc.simulating import plot

    falco = tmp_path / "falco.jsonl"
    falco.write_bytes(
        b"".join(
            replay.stamp(item.value, T0 + item.at) + b"\n"
            for item in replay.timeline(sample_cluster().workloads, 600, seed=11)
        )
    )
    shipped = topologies.resolve_path(None)
    strict = Path(__file__).resolve().parents[2] / "examples" / "strict"
    request = session.Request(
        settings=Settings(),
        topology_sets=[topologies.load_path(shipped), topologies.load_path(strict)],
        names=[str(shipped), str(strict)],
        files=[falco],
    )
    reports = asyncio.run(session.simulate(request))
    a, b = (_table_workloads(r) for r in reports)
    assert a != b  # the sides differ, so a plot of one side only would show
    # an action that was only an extension not yet due observes nothing: no row of its own
    assert reports[0].stats["retina-observe"].not_due > 0
    drawn = plot.figure(reports)
    try:
        axes = drawn.axes[0]
        labels = [t.get_text() for t in axes.get_yticklabels()]
        sides = {}
        for container in axes.containers:
            rows = {labels[round(bar.get_y() + bar.get_height() / 2)] for bar in container}
            sides[container.get_label()] = rows
        assert sides == {f"A: {shipped}": a, f"B: {strict}": b}
        legend = axes.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == [f"A: {shipped}", f"B: {strict}"]
    finally:
        plt.close(drawn)


def test_daemonset_pods_told_by_name_shape_alone_are_flagged_with_the_fix(tmp_path: Path) -> None:
    """Without --pods a DaemonSet's pods look like bare Pods: the report names them, says --pods."""
    falco = tmp_path / "falco.jsonl"
    daemonset = next(w for w in sample_cluster().workloads if w.kind == "DaemonSet")
    rng = random.Random(2)
    falco.write_bytes(
        b"\n".join(
            orjson.dumps(
                samples.detection(daemonset, pod, samples.RULES[0], T0, rng, owner_fields=False)
            )
            for pod in daemonset.pods
        )
    )
    shipped = str(topology(tmp_path, "observe"))
    found = report("--topology", shipped, str(falco))
    assert found["ambiguous_identities"] == sorted(
        f"{daemonset.namespace}/{pod}" for pod in daemonset.pods
    )
    code, output = run("--topology", shipped, str(falco))
    assert code == 0, output
    text = " ".join(output.split())
    assert f"ambiguous identities: {len(daemonset.pods)} pods" in text
    assert "give --pods" in text
    snapshot = Path(__file__).resolve().parents[2] / "examples" / "pods.json"
    exact = report("--topology", shipped, "--pods", str(snapshot), str(falco))
    assert exact["ambiguous_identities"] == []
    assert exact["topologies"]["observe"]["workloads"] == 1  # type: ignore[index]
