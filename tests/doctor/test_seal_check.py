"""Doctor's seal check: sealed with N keys, not sealed, or a key file the annotator refuses."""

from __future__ import annotations

from pathlib import Path

from streamproc.doctor import sealing
from streamproc.settings import Settings


def test_without_a_key_file_marks_are_not_sealed_a_warning_naming_the_fix() -> None:
    """No --mark-key-file: ⚠, the risk in the detail and the setting in the fix."""
    found = sealing.seal_check(Settings())
    assert found.status == "warn"
    assert "copy streamproc's marks onto its own pods" in found.detail
    assert "--mark-key-file" in found.fix
    assert "docs/reliability.md" in found.fix


def test_a_readable_key_file_seals_and_counts_its_keys(tmp_path: Path) -> None:
    """Two keys (a rotation under way): ✔ with the file and the count."""
    keys = tmp_path / "key"
    keys.write_text(f"{'a' * 64}\n{'b' * 64}\n")
    found = sealing.seal_check(Settings(mark_key_file=keys))
    assert found.status == "ok"
    assert found.detail == f"marks are sealed: {keys} readable, 2 keys"


def test_a_missing_or_short_key_file_fails_as_the_annotator_would(tmp_path: Path) -> None:
    """The annotator would not start: ✘, with the file named."""
    missing = sealing.seal_check(Settings(mark_key_file=tmp_path / "absent"))
    assert missing.status == "fail"
    assert str(tmp_path / "absent") in missing.detail
    short = tmp_path / "short"
    short.write_text("secret\n")
    found = sealing.seal_check(Settings(mark_key_file=short))
    assert found.status == "fail"
    assert "openssl rand -hex 32" in found.detail
