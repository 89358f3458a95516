"""Proxies from the environment: honoured once at connect, not looked up on every request.

kubernetes_asyncio opens its HTTP session with ``trust_env=True``, which makes aiohttp read
``~/.netrc`` and the proxy variables in a worker thread for every request; streamproc reads
HTTP(S)_PROXY / NO_PROXY once instead. These tests put a real forwarding proxy on loopback
between the client and the emulated API server and watch what goes through it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from streamproc.clients import kube

if TYPE_CHECKING:
    import pytest


class ForwardProxy:
    """A plain HTTP forward proxy: notes each connection's first request, then pipes bytes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (request line, Proxy-Authorization)
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *headers = head.decode().split("\r\n")
        auth = next(
            (h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-auth")),
            None,
        )
        self.requests.append((request_line, auth))
        method, target, version = request_line.split(" ")
        url = urlsplit(target)  # absolute-form: http://host:port/path?query
        upstream_reader, upstream_writer = await asyncio.open_connection(url.hostname, url.port)
        origin_form = f"{url.path}?{url.query}" if url.query else url.path
        kept = [h for h in headers if h and not h.lower().startswith("proxy-")]
        upstream_writer.write(
            "\r\n".join([f"{method} {origin_form} {version}", *kept, "", ""]).encode()
        )
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ForwardProxy]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


async def pods_with_environment(
    kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, **variables: str
) -> list[kube.Json]:
    """List pods through a connection made with exactly these proxy variables set."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)  # the lower-case one wins in urllib
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    api = await kube.Kube.connect(str(kubeconfig), timeout_s=2.0, attempts=1)
    try:
        return await api.list_pods("shop")
    finally:
        await api.close()


async def test_the_api_server_is_reached_through_http_proxy_with_its_credentials(
    kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY with user:password in it: every request goes through the proxy and carries
    the credentials as Proxy-Authorization, as it would with aiohttp's own lookup."""
    async with ForwardProxy().running() as proxy:
        proxy_url = f"http://ops:s%3Acret@127.0.0.1:{proxy.port}"
        pods = await pods_with_environment(kubeconfig, monkeypatch, HTTP_PROXY=proxy_url)
    assert pods
    assert proxy.requests
    line, auth = proxy.requests[0]
    assert line.startswith("GET http://127.0.0.1:")
    assert "/api/v1/namespaces/shop/pods" in line
    assert auth == "Basic " + base64.b64encode(b"ops:s:cret").decode()


async def test_no_proxy_sends_the_api_server_directly(
    kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY naming the API server's host wins over HTTP_PROXY."""
    async with ForwardProxy().running() as proxy:
        pods = await pods_with_environment(
            kubeconfig,
            monkeypatch,
            HTTP_PROXY=f"http://127.0.0.1:{proxy.port}",
            NO_PROXY="127.0.0.1",
        )
    assert pods
    assert proxy.requests == []


async def test_a_netrc_entry_for_the_api_server_is_not_consulted(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's own session (trust_env) would read ~/.netrc per request and, finding the
    API server there next to the token's Authorization header, fail every request; the
    session streamproc swaps in reads neither. This fails if the swap stops taking effect
    (kubernetes_asyncio is pinned to the versions it was tested with)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    pods = await pods_with_environment(kubeconfig, monkeypatch)
    assert pods
