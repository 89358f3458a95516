"""Serving the emulator on a loopback port in its own thread, and as its own process."""

from __future__ import annotations

import asyncio
import builtins
import email.utils
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from aiohttp import web

from streamproc.lab.kubeemu.handlers import Handlers


class KubeEmulator(Handlers):
    """State plus HTTP handlers; ``serve()`` runs it on a loopback port in a thread."""

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        #: how far the server's clock, as its ``Date`` headers tell it, is ahead of this host's
        self.clock_offset_s = 0.0
        self._serving: tuple[threading.Thread, asyncio.Event] | None = None

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[KubeEmulator]:
        """Run on ``host:port`` (0 = a free port) in a thread until the block ends."""
        self._start(host, port)
        try:
            yield self
        finally:
            self._stop()

    async def _date(self, _request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's ``Date``, by the server's clock (RFC 9110 IMF-fixdate)."""
        response.headers["Date"] = email.utils.formatdate(
            time.time() + self.clock_offset_s, usegmt=True
        )

    @contextmanager
    def unreachable(self) -> Iterator[None]:
        """An API server outage: connections refused for the block, then the same address again.

        State survives, as etcd's does when the API server itself goes away.
        """
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self._stop()
        try:
            yield
        finally:
            self._start(host, int(port))

    def _start(self, host: str, port: int) -> None:
        ready = threading.Event()
        stop = asyncio.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            app = web.Application(middlewares=[self._log], client_max_size=8 << 20)
            app.on_response_prepare.append(self._date)
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            # open watches never finish on their own: stopping waits this long for them and
            # then cancels them (an API server going away cuts its watches too). At 1 s, every
            # stop with a watch open (most tests' teardown) took 2 s.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            server = site._server  # noqa: SLF001 - aiohttp exposes the bound port nowhere else
            sockets = getattr(server, "sockets", None) or []
            bound = sockets[0].getsockname()[1] if sockets else port
            self.url = f"http://{host}:{bound}"
            self._loop = asyncio.get_running_loop()
            ready.set()
            await stop.wait()
            await runner.cleanup()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)
                ready.set()

        self.url = ""
        thread = threading.Thread(target=run, name="kube-emulator", daemon=True)
        thread.start()
        ready.wait(10)
        if errors or not self.url:
            raise RuntimeError(f"emulator failed to start: {errors}")
        self._serving = (thread, stop)

    def _stop(self) -> None:
        if self._serving is None:
            return
        (thread, stop), self._serving = self._serving, None
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        self._loop = None

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig pointing at this emulator (no auth), usable by kubectl too."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "streamproc-emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "streamproc", "user": {"token": "emulator"}}],
            "contexts": [
                {
                    "name": "streamproc-emulator",
                    "context": {"cluster": "streamproc-emulator", "user": "streamproc"},
                }
            ],
            "current-context": "streamproc-emulator",
        }
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path


def main(argv: builtins.list[str] | None = None) -> None:
    """Serve the emulator as its own process (benchmarks, or kubectl against a sample cluster).

    ``GET /_emulator/requests`` returns the request log as
    ``[arrived, method, path, query, status, answered]``.
    """
    import argparse  # noqa: PLC0415 - only the command line needs it
    import signal  # noqa: PLC0415

    from streamproc.lab import platforms  # noqa: PLC0415
    from streamproc.lab.cluster import ClusterBuilder, sample_cluster  # noqa: PLC0415

    parser = argparse.ArgumentParser(description="streamproc's emulated Kubernetes API server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="write a kubeconfig here")
    parser.add_argument(
        "--deployments",
        type=int,
        default=0,
        help="seed N Deployments (2 pods each) instead of the lab's sample cluster",
    )
    parser.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        help="seconds the server's clock (its Date headers) is ahead of this host's",
    )
    parser.add_argument(
        "--platform",
        choices=platforms.PLATFORMS,
        default=None,
        help="the sample cluster as that platform (nodes, AKS's components; docs/aks.md)",
    )
    args = parser.parse_args(argv)
    builder = sample_cluster() if not args.deployments else ClusterBuilder(seed=3)
    for i in range(args.deployments):
        builder.deployment(f"ns-{i % 25}", f"app-{i}", 2, "nginx:1.27")
    emulator = KubeEmulator()
    emulator.clock_offset_s = args.clock_offset
    if args.platform is not None and not args.deployments:
        platforms.build(args.platform).load(emulator)
    else:
        for obj in builder.objects:
            emulator.create(obj)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with emulator.serve(port=args.port):
        emulator.write_kubeconfig(args.kubeconfig)
        print(emulator.url, flush=True)  # noqa: T201 - the parent reads the address
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
