"""The lab's closing summary, from its facts: counts in the right number, open observations."""

from __future__ import annotations

from streamproc.lab import session, view

OPENED = "2026-12-01T10:00:00Z"
OPENED_AT = 1_796_119_200.0  # OPENED as a Unix time


def applied(name: str, expires_at: str) -> dict[str, object]:
    return {
        "result": "applied",
        "namespace": "shop",
        "kind": "Deployment",
        "name": name,
        "topology": "retina-observe",
        "rule": "Read sensitive file untrusted",
        "pods": [f"{name}-abcde"],
        "time": OPENED,
        "expires_at": expires_at,
    }


def test_an_observation_open_at_the_end_lasted_until_the_end_so_far() -> None:
    """Ended 12 s after it opened with 30 s to go: still open, 12 s so far, not its 30 s TTL."""
    ended = OPENED_AT + 12
    found = session.story(
        [applied("open", "2026-12-01T10:00:30Z"), applied("done", "2026-12-01T10:00:05Z")], ended
    )
    by_name = {o.name: o for o in found}
    assert by_name["open"].still_open
    assert by_name["open"].lasted_s == 12
    assert not by_name["done"].still_open
    assert by_name["done"].lasted_s == 5
    summary = session.Summary(observed=found, interrupted=True, speed=10, replay_total=9)
    lines = "\n".join(summary.lines())
    assert "observed shop/Deployment/open: 1 pod still open, 12s so far (2m at --speed 10)" in lines
    assert "observed shop/Deployment/done: 1 pod for 5s" in lines
    assert "1 observation still open went away with the emulated cluster" in lines


def test_counts_of_one_are_singular_and_others_plural() -> None:
    """'1 pod', '1 action', '1 dead letter is', '2 patches': never '1 pods'."""
    summary = session.Summary(
        actions=1,
        pods_annotated=1,
        patches=2,
        api_requests=1,
        dead_letters=1,
        dead_letter_reasons={"invalid-json": 1},
        replay_sent=1,
        replay_total=1,
    )
    lines = "\n".join(summary.lines())
    assert "1 dead letter is the replay's deliberately malformed lines" in lines
    assert "1 action (one per workload" in lines
    assert "put 1 pod under observation; 2 patches in all" in lines
    assert "with 1 API request." in lines
    assert "1 of 1 detection sent" in lines
    assert "1 pods" not in lines


def test_a_replay_cut_short_by_the_duration_says_so_and_suggests_a_longer_run() -> None:
    """Not interrupted, yet the replay did not finish: the summary and the next steps say so."""
    summary = session.Summary(replay_sent=300, replay_total=659)
    lines = "\n".join(summary.lines())
    assert "replay             300 of 659 detections sent (not finished)" in lines
    assert "300 of 659 detections were sent (the run's --duration ended first)" in lines
    options = session.LabOptions(duration_s=20, speed=30)
    steps = "\n".join(session.next_steps(options, summary))
    assert "streamproc lab --duration 60 --speed 30" in steps
    assert "streamproc simulate" in steps
    assert "streamproc doctor" in steps


def test_a_real_cluster_keeps_open_observations_until_their_expiry() -> None:
    """With --kubeconfig the marks stay on the pods: the summary says so and how to end them."""
    found = session.story([applied("open", "2026-12-01T10:00:30Z")], OPENED_AT + 1)
    summary = session.Summary(observed=found, interrupted=True, emulated_cluster=False)
    lines = "\n".join(summary.lines())
    assert "1 observation still open stay on their pods" not in lines
    assert "stays on its pods until its expires-at" in lines
    assert "streamproc release" in lines
    options = session.LabOptions(kubeconfig="/somewhere")
    assert "streamproc.lab.kubeemu" not in "\n".join(session.next_steps(options, summary))


def test_pods_still_ending_after_their_workloads_follow_ended_are_not_zero_workloads() -> None:
    """A workload's follow ends at expiry, its pods a moment later: the line says "ending"."""

    assert view._of_workloads(2, 0) == "ending"
    assert view._of_workloads(2, 1) == "1 workload"
    assert view._of_workloads(0, 0) == "0 workloads"
