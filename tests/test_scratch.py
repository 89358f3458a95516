"""The windows stage's scratch folders do not pile up in the temp directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from streamproc import running


def test_a_starting_stage_removes_the_scratch_folders_of_dead_processes() -> None:
    """A SIGKILLed stage leaves its folder; the next start removes it, not a live one's."""
    gone_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_pid.wait()
    root = Path(tempfile.gettempdir())
    stale = root / f"{running.SCRATCH_PREFIX}{gone_pid.pid}-leftover"
    live = root / f"{running.SCRATCH_PREFIX}{os.getppid()}-still-running"
    stale.mkdir()
    live.mkdir()
    try:
        scratch = running._scratch_dir()
        try:
            assert not stale.exists()
            assert live.exists()
            assert Path(scratch.name).name.startswith(f"{running.SCRATCH_PREFIX}{os.getpid()}-")
        finally:
            scratch.cleanup()
        assert not Path(scratch.name).exists()
    finally:
        for folder in (stale, live):
            if folder.exists():
                folder.rmdir()
