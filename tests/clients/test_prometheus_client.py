"""The Prometheus client over real HTTP on loopback: whole answers within a bound, the bearer token
as the file holds it now, TLS with a CA file, and no proxy from the environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from streamproc.clients import prometheus
from streamproc.lab.broker import free_port

EMPTY = b'{"status":"success","data":{"resultType":"vector","result":[]}}'


@contextlib.asynccontextmanager
async def serving(handler: web.Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", handler)  # GET or POST
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await asyncio.wait_for(runner.cleanup(), 5)


async def streamed(request: web.Request) -> web.StreamResponse:
    """A valid answer of ~1 MiB sent in pieces, or ~5 MiB when asked for ``huge``."""
    asked = (await request.post()).get("query") or request.query.get("query")
    size = 5 * 1024 * 1024 if asked == "huge" else 1024 * 1024
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"status":"success","pad":"')
    for _ in range(size // 65536):
        await response.write(b"x" * 65536)
        await asyncio.sleep(0)  # each piece its own chunk on the wire
    await response.write(b'","data":{"resultType":"vector","result":[]}}')
    await response.write_eof()
    return response


async def test_an_answer_in_many_chunks_is_read_whole_and_a_huge_one_is_refused() -> None:
    """1 MiB in pieces parses; past MAX_ANSWER is a bad answer, not memory without end."""
    async with serving(streamed) as url:
        client = prometheus.Prometheus(url, timeout_s=10)
        try:
            answer = await client.query("up", 0)
            assert answer["data"]["resultType"] == "vector"
            with pytest.raises(prometheus.BadAnswer):
                await client.query("huge", 0)
        finally:
            await client.close()


async def test_the_bearer_token_is_the_one_the_file_holds_now(tmp_path: Path) -> None:
    """Managed Prometheus rotates its token: a changed file is read again."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=EMPTY, content_type="application/json")

    token = tmp_path / "token"
    token.write_text("first\n")
    async with serving(handler) as url:
        client = prometheus.Prometheus(url, timeout_s=5, token_file=token)
        try:
            await client.query("up", 0)
            token.write_text("second\n")
            stat = token.stat()
            os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
            await client.query("up", 0)
        finally:
            await client.close()
    assert seen == ["Bearer first", "Bearer second"]


async def test_tls_is_verified_against_the_ca_file(tmp_path: Path) -> None:
    """With the CA file the answer comes; without it the certificate is refused: unreachable."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=EMPTY, content_type="application/json")

    async with serving(handler, server_tls) as url:
        trusted = prometheus.Prometheus(url, timeout_s=5, ca_file=ca_file)
        stranger = prometheus.Prometheus(url, timeout_s=5)
        try:
            assert (await trusted.query("up", 0))["status"] == "success"
            with pytest.raises(prometheus.Unreachable):
                await stranger.query("up", 0)
        finally:
            await trusted.close()
            await stranger.close()


async def test_a_proxy_in_the_environment_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY meant for the internet never sees the in-cluster URL."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=EMPTY, content_type="application/json")

    async with serving(handler) as url:
        client = prometheus.Prometheus(url, timeout_s=5)
        try:
            assert (await client.query("up", 0))["status"] == "success"
        finally:
            await client.close()


async def test_a_query_is_posted_as_a_form_so_a_long_regex_never_meets_a_url_limit() -> None:
    """Hundreds of pod names in one regex go in the body, not the URL."""
    seen: list[tuple[str, str, int]] = []

    async def recording(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append((request.method, str(form.get("query", "")), len(str(request.url))))
        return web.Response(body=EMPTY, content_type="application/json")

    long_expr = 'count(x{podname=~"' + "|".join(f"web-{n:05d}" for n in range(2000)) + '"})'
    async with serving(recording) as url:
        client = prometheus.Prometheus(url, timeout_s=5)
        try:
            await client.query(long_expr, 1_800_000_000.0)
        finally:
            await client.close()
    ((method, query, url_length),) = seen
    assert (method, query) == ("POST", long_expr)
    assert url_length < 200
