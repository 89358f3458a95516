"""The stop mechanism itself, on a program that misbehaves on purpose.

A real stage stops cleanly; these programs do not (they ignore the stop request, or leave a
non-daemon thread behind, as Faust's consumer thread does), so the bound comes from
``streamproc.stopping`` alone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for

STUCK = """
import asyncio, sys
from streamproc import stopping

async def main(stop):
    await stop.wait()
    print("stop requested, ignoring it", flush=True)
    await asyncio.create_task(asyncio.Event().wait(), name="stuck-stage")

print("running", flush=True)
stopping.run(main, grace_s=float(sys.argv[1]), name="stuck")
"""

LINGERING_THREAD = """
import asyncio, threading
from streamproc import stopping

threading.Thread(target=threading.Event().wait, name="like-faust", daemon=False).start()

async def main(stop):
    return None

stopping.run(main, grace_s=5)
print("main returned", flush=True)
stopping.finish(0, grace_s=0.2)
"""


def start(tmp_path: Path, source: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "program.py"
    script.write_text(source)
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return process, log


def wait_line(process: subprocess.Popen[bytes], log: Path, text: str) -> None:
    wait_for(lambda: text in log.read_text(), timeout=30, what=repr(text))
    assert process.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_process_that_does_not_stop_is_ended_after_the_grace_naming_what_still_ran(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """The watchdog exits with 128+signal and says which task was abandoned."""
    process, log = start(tmp_path, STUCK, "1")
    wait_line(process, log, "running")
    process.send_signal(sig)
    wait_line(process, log, "stop requested, ignoring it")
    assert process.wait(30) == 128 + sig
    output = log.read_text()
    assert f"stuck: {sig.name} received, stopping (at most 1s" in output
    assert "did not stop within 1s (still running: " in output
    assert "stuck-stage" in output
    assert "Traceback" not in output


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    """With a long grace, the second Ctrl-C ends the process without waiting for it."""
    process, log = start(tmp_path, STUCK, "600")
    wait_line(process, log, "running")
    process.send_signal(signal.SIGINT)
    wait_line(process, log, "stop requested, ignoring it")
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 130
    assert "second SIGINT: stopping now" in log.read_text()


def test_a_lingering_non_daemon_thread_cannot_keep_the_process_alive(tmp_path: Path) -> None:
    """The interpreter would wait for it forever at exit; ``finish`` exits with the code."""
    process, log = start(tmp_path, LINGERING_THREAD)
    assert process.wait(30) == 0
    assert "main returned" in log.read_text()


INTERRUPTED_WHILE_IMPORTING = """
import sys

class CtrlC:
    '''Ctrl-C exactly while the command line's modules are being imported.'''

    def find_spec(self, name, path=None, target=None):
        if name == "streamproc.cli":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
from streamproc.__main__ import run
run()
"""


def test_ctrl_c_while_the_command_line_is_still_importing_is_a_plain_exit() -> None:
    """Before the command's own Ctrl-C handling exists: one line, exit 130, no traceback."""
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_WHILE_IMPORTING],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 130
    assert done.stderr == "streamproc: interrupted\n"
