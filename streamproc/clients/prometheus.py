"""Asking a Prometheus: the HTTP API's instant query and build info, on aiohttp, bounded in time.

Managed Prometheus (Azure Monitor's, behind a token that rotates) and a plain in-cluster one alike:
a bearer token read from ``--prometheus-token-file`` when it changes (its mtime), a CA bundle from
``--prometheus-ca-file``, and no proxy from the environment (``trust_env=False``: a proxy meant
for the internet never sees an in-cluster URL by surprise). Every request is bounded by
``timeout_s``. Failures are one exception type per cause (``cluster.evidencing`` counts each as its
``outcomes.EvidenceMissing``); answers are parsed as JSON here and checked by the caller
(``model.evidence.vector``): they are untrusted input.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson

#: the most of an answer read (a bounded query's answer is a few kB)
MAX_ANSWER = 4 * 1024 * 1024


class PrometheusError(Exception):
    """Prometheus could not be asked, or did not answer with JSON."""


class Unreachable(PrometheusError):
    """No connection (refused, DNS, TLS)."""


class Timeout(PrometheusError):
    """No answer within the timeout."""


class HttpError(PrometheusError):
    """An HTTP error status (bad query, unauthorised, server error)."""


class BadAnswer(PrometheusError):
    """An answer that is not JSON (or too large)."""


async def _read(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused past :data:`MAX_ANSWER` (an answer is untrusted input)."""
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise BadAnswer(f"answer larger than {MAX_ANSWER} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Prometheus:
    """One Prometheus HTTP API, with its credentials; ``close`` it when done."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        token_file: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._token_file = token_file
        self._token: tuple[float, str] | None = None
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls: ssl.SSLContext | bool = True
            if self._ca_file is not None:
                tls = ssl.create_default_context(cafile=str(self._ca_file))
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                trust_env=False,
                connector=aiohttp.TCPConnector(ssl=tls, limit=8),
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        """The bearer token as the file holds it now (re-read when it changed: it rotates)."""
        if self._token_file is None:
            return {}
        try:
            mtime = self._token_file.stat().st_mtime
            if self._token is None or self._token[0] != mtime:
                token = self._token_file.read_text().strip()
                if not token.isprintable():  # a header cannot carry it (aiohttp: ValueError)
                    raise Unreachable(
                        f"the token file {self._token_file} holds a line break or another "
                        "control character inside the token: write the token alone"
                    )
                self._token = (mtime, token)
        except OSError as exc:
            raise Unreachable(f"cannot read the token file {self._token_file}: {exc}") from None
        return {"Authorization": f"Bearer {self._token[1]}"}

    async def get(
        self, path: str, params: dict[str, str] | None = None, *, form: dict[str, str] | None = None
    ) -> Any:
        """GET ``path`` of the API (POST with ``form``) and return its JSON.

        A :class:`PrometheusError` otherwise.
        """
        try:
            session = self._session_now()
        except (OSError, ssl.SSLError) as exc:
            raise Unreachable(f"cannot use the CA file {self._ca_file}: {exc}") from None
        try:
            async with session.request(
                "POST" if form is not None else "GET",
                f"{self.url}{path}",
                params=params,
                data=form,
                headers=self._headers(),
            ) as response:
                if response.status >= 400:
                    raise HttpError(f"HTTP {response.status} from {self.url}{path}")
                body = await _read(response)
        except TimeoutError:
            raise Timeout(f"no answer from {self.url} within {self._timeout.total}s") from None
        except aiohttp.ClientError as exc:
            raise Unreachable(f"{self.url}: {exc}") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadAnswer(f"answer from {self.url}{path} is not JSON") from None

    async def query(self, expr: str, at: float) -> Any:
        """An instant query evaluated at ``at`` (epoch seconds): the answer's JSON.

        POSTed as a form (the HTTP API takes both): a workload's many pods make a long regex
        that a GET URL could exceed a proxy's or server's limit with.
        """
        return await self.get("/api/v1/query", form={"query": expr, "time": f"{at:.3f}"})

    async def close(self) -> None:
        """Close the connections (bounded: a server that hangs does not hold this up)."""
        if self._session is not None:
            session, self._session = self._session, None
            await asyncio.wait_for(session.close(), timeout=2.0)
