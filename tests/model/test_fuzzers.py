"""Short atheris runs of the fuzzers in fuzz/, so they cannot rot; long runs are on demand."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("atheris", reason="atheris is in the test extra; .ci/run installs it")


@pytest.mark.parametrize(
    ("fuzzer", "corpus", "runs"),
    [
        ("fuzz_events.py", "events", 20_000),
        ("fuzz_topologies.py", "topologies", 300),
        ("fuzz_records.py", "records", 20_000),
        ("fuzz_marks.py", "marks", 20_000),
    ],
)
def test_the_fuzzer_runs_clean(tmp_path: Path, fuzzer: str, corpus: str, runs: int) -> None:
    """libFuzzer exits 0 after its runs; an escaping exception would exit 1 with the input."""
    scratch = tmp_path / "corpus"
    shutil.copytree(ROOT / "fuzz" / "corpus" / corpus, scratch)
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / fuzzer), f"-runs={runs}", "-seed=1", str(scratch)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # libFuzzer may count one run more than asked (the run that hits the limit is finished)
    done = re.search(r"^Done (\d+) runs", result.stderr, re.MULTILINE)
    assert done, result.stderr[-3000:]
    assert int(done.group(1)) >= runs
