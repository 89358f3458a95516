"""The seal on marks: it binds every trusted mark to one object, and only the keys make it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamproc.cluster import marking
from streamproc.model import conventions, marks, patches, seals
from tests.conftest import topology

NOW = 1_800_000_000.0
OLD_KEY = "o" * 32
NEW_KEY = "n" * 64
SEALER = seals.Sealer((OLD_KEY.encode(),))
SUBJECT: seals.Identity = ("shop", "frontend-1", "uid-frontend-1")
POLICY = marks.Policy.of([topology(ttl=600)], sealer=SEALER)
MARKS = {
    conventions.EXPIRES_AT: conventions.format_time(NOW + 600),
    conventions.TOPOLOGY: "retina-observe",
    conventions.RULE: "Read sensitive file untrusted",
    conventions.ACTION_ID: "retina-observe/shop/Deployment/frontend/1799999990000",
    conventions.OWNED_KEYS: "retina.sh",
    conventions.LEVEL: "1/2",
    conventions.OBSERVED_SINCE: conventions.format_time(NOW),
    conventions.METRIC_FILTERS: "dns,flow",
}
LABELLED = {conventions.OBSERVED_LABEL: "true"}


def sealed(annotations: dict[str, str], sealer: seals.Sealer = SEALER) -> dict[str, str]:
    """The annotations with the seal streamproc writes on them for ``SUBJECT``."""
    return {**annotations, conventions.SEAL: sealer.seal(SUBJECT, annotations)}


def decode(
    annotations: dict[str, str],
    subject: seals.Identity = SUBJECT,
    policy: marks.Policy = POLICY,
) -> marks.Read:
    return marks.decode(
        annotations, LABELLED, namespace="shop", now=NOW, policy=policy, subject=subject
    )


def test_a_seal_is_unpadded_base64url_of_a_sha256_mac_and_verifies() -> None:
    """43 characters of the URL-safe alphabet; the same marks on the same object verify."""
    seal = SEALER.seal(SUBJECT, MARKS)
    assert len(seal) == 43
    assert set(seal) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert SEALER.verifies(SUBJECT, MARKS, seal)
    assert seals.canonical(SUBJECT, MARKS).startswith(b'["v1",')


#: every mark the decoder trusts, spelled here and not read from ``seals.SEALED``: dropping one
#: from the seal must fail a test, not remove one
TRUSTED = (
    conventions.EXPIRES_AT,
    conventions.TOPOLOGY,
    conventions.RULE,
    conventions.ACTION_ID,
    conventions.OWNED_KEYS,
    conventions.LEVEL,
    conventions.OBSERVED_SINCE,
    conventions.METRIC_FILTERS,
)


def test_the_seal_covers_every_trusted_mark_and_never_shows_a_key() -> None:
    """``SEALED`` is exactly the trusted marks; a sealer's repr holds no key."""
    assert set(seals.SEALED) == set(TRUSTED)
    assert OLD_KEY not in repr(SEALER)
    assert OLD_KEY not in repr(marks.Policy(sealer=SEALER))


@pytest.mark.parametrize("key", TRUSTED)
def test_changing_any_sealed_mark_breaks_the_seal(key: str) -> None:
    """Each trusted mark is sealed: changed, or removed, the seal no longer verifies."""
    seal = SEALER.seal(SUBJECT, MARKS)
    assert not SEALER.verifies(SUBJECT, {**MARKS, key: MARKS[key] + "x"}, seal)
    assert not SEALER.verifies(SUBJECT, {k: v for k, v in MARKS.items() if k != key}, seal)


def test_an_absent_mark_is_not_an_empty_one() -> None:
    """No ``level`` and ``level: ""`` seal differently (absent is not a value)."""
    without = {k: v for k, v in MARKS.items() if k != conventions.LEVEL}
    assert SEALER.seal(SUBJECT, without) != SEALER.seal(SUBJECT, {**without, conventions.LEVEL: ""})


@pytest.mark.parametrize(
    "other",
    [
        ("shop", "frontend-2", "uid-frontend-1"),
        ("shop", "frontend-1", "uid-recreated"),
        ("shop-2", "frontend-1", "uid-frontend-1"),
        ("", "shop", "uid-frontend-1"),
    ],
    ids=["name", "uid", "namespace", "namespace-object"],
)
def test_the_seal_of_one_object_does_not_verify_on_another(other: seals.Identity) -> None:
    """A copy onto another pod, or onto a pod recreated under the same name, fails."""
    assert not SEALER.verifies(other, MARKS, SEALER.seal(SUBJECT, MARKS))


def test_the_first_key_signs_and_every_key_verifies() -> None:
    """Rotation: the new key (first line) signs; marks the old one sealed still verify."""
    rotated = seals.parse(f"{NEW_KEY}\n\n{OLD_KEY}\n", source="keys")
    assert rotated.keys == (NEW_KEY.encode(), OLD_KEY.encode())
    assert rotated.seal(SUBJECT, MARKS) != SEALER.seal(SUBJECT, MARKS)
    assert rotated.verifies(SUBJECT, MARKS, SEALER.seal(SUBJECT, MARKS))
    assert rotated.verifies(SUBJECT, MARKS, rotated.seal(SUBJECT, MARKS))
    assert not SEALER.verifies(SUBJECT, MARKS, rotated.seal(SUBJECT, MARKS))


def test_the_decoder_passes_sealed_marks_and_refuses_missing_or_wrong_seals() -> None:
    """With a key: sealed passes; no seal is ``unsealed``; a copy or an edit is ``bad-seal``."""
    assert isinstance(decode(sealed(MARKS)), marks.Marks)
    missing = decode(MARKS)
    assert isinstance(missing, marks.Refusal)
    assert missing.reason == "unsealed"
    assert missing.labelled
    assert missing.owned == {"retina.sh"}  # what the expirer may still clean up
    copied = decode(sealed(MARKS), subject=("shop", "frontend-2", "uid-frontend-2"))
    assert isinstance(copied, marks.Refusal)
    assert copied.reason == "bad-seal"
    later = conventions.format_time(NOW + 590)
    edited = decode({**sealed(MARKS), conventions.EXPIRES_AT: later})
    assert isinstance(edited, marks.Refusal)
    assert edited.reason == "bad-seal"
    assert {"unsealed", "bad-seal"} <= set(marks.REASONS)


def test_without_a_key_a_seal_is_neither_asked_for_nor_checked() -> None:
    """No key: unsealed marks pass, and so do sealed ones (a release by hand reads them)."""
    plain = marks.Policy.of([topology(ttl=600)])
    assert isinstance(decode(MARKS, policy=plain), marks.Marks)
    assert isinstance(decode(sealed(MARKS), policy=plain), marks.Marks)


def opened(
    pod: dict[str, Any], *, until: float, window_ms: int, sealer: seals.Sealer | None = None
) -> patches.Patch | None:
    """``observe`` of frontend's observation by retina-observe, window ``window_ms``."""
    return patches.observe(
        pod,
        annotations={"retina.sh": "observe"},
        until=until,
        topology="retina-observe",
        rule="r",
        action_id=f"retina-observe/shop/Deployment/frontend/{window_ms}",
        previous=None,
        now=NOW,
        sealer=sealer,
    )


def test_a_patch_seals_the_marks_as_they_will_be_and_the_decoder_reads_them() -> None:
    """``observe`` seals merged marks (an unchanged earlier one included); they decode."""
    earlier = {conventions.METRIC_FILTERS: "flow"}
    pod: dict[str, Any] = {
        "metadata": {
            "namespace": "shop",
            "name": "frontend-1",
            "uid": "uid-frontend-1",
            "annotations": earlier,
        }
    }
    patch = opened(pod, until=NOW + 600, window_ms=1799999990000, sealer=SEALER)
    assert patch is not None
    after = {**earlier, **{k: v for k, v in patch.annotations.items() if v is not None}}
    assert isinstance(decode(after), marks.Marks)
    unsealed = opened(pod, until=NOW + 600, window_ms=1799999990000)
    assert unsealed is not None
    assert conventions.SEAL not in unsealed.annotations
    assert {k: v for k, v in patch.annotations.items() if k != conventions.SEAL} == (
        unsealed.annotations
    )


def test_a_write_without_a_key_takes_away_a_seal_it_would_leave_stale() -> None:
    """A replica without the key extends marks: the old seal, no longer true, is removed (it
    would read ``bad-seal`` where a key is known)."""
    pod = {
        "metadata": {
            "namespace": "shop",
            "name": "frontend-1",
            "uid": "uid-frontend-1",
            "annotations": sealed(MARKS),
            "labels": LABELLED,
        }
    }
    patch = opened(pod, until=NOW + 3600, window_ms=1799999999000)
    assert patch is not None
    assert patch.annotations[conventions.SEAL] is None


def test_the_release_removes_the_seal_with_the_rest() -> None:
    """The seal is bookkeeping: ending an observation takes it away."""
    pod = {"metadata": {"annotations": sealed(MARKS), "labels": LABELLED}}
    assert conventions.SEAL in patches.release(pod).annotations


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "holds no mark key"),
        ("\n  \n", "holds no mark key"),
        (f"{NEW_KEY}\nshort\n", ":2: a mark key must be at least 32 bytes"),
        ("\n".join([NEW_KEY] * 17), "at most 16"),
    ],
    ids=["empty", "blank", "short-line", "too-many"],
)
def test_a_bad_key_file_is_one_plain_line_naming_it_and_the_fix(
    tmp_path: Path, text: str, says: str
) -> None:
    """Empty, short or too many keys: ``BadKeys`` with the file's name and no line break."""
    path = tmp_path / "mark-key"
    path.write_text(text)
    with pytest.raises(seals.BadKeys) as caught:
        marking.sealer(path)
    line = str(caught.value)
    assert str(path) in line
    assert says in line
    assert "\n" not in line


def test_a_missing_key_file_is_one_plain_line_and_none_means_unsealed(tmp_path: Path) -> None:
    """An absent file names itself and the Secret; no ``--mark-key-file`` gives no sealer."""
    with pytest.raises(seals.BadKeys, match=r"cannot read the mark key file .*streamproc-mark-key"):
        marking.sealer(tmp_path / "absent")
    assert marking.sealer(None) is None
    (tmp_path / "key").write_text(f"{NEW_KEY}\n")
    assert marking.sealer(tmp_path / "key") == seals.Sealer((NEW_KEY.encode(),))
