"""A stand-in for Falcosidekick's HTTP input that judges requests as the real one does.

Rules from falcosecurity/falcosidekick 2.34.1 (commit 03364bc2):
- ``handlers.go`` ``mainHandler`` (served on ``/``, which Go's ServeMux also matches for every
  path no other route takes): 400 "Please send with post http method" for any method but POST;
  400 "Please send a valid request body" if the body does not decode as a ``FalcoPayload`` or
  fails ``Check``; otherwise the detection goes to the outputs and the answer is 200, empty.
  The Content-Type is not looked at (Falco sends ``application/json``; the tests check that).
- ``newFalcoPayload``: one JSON value is decoded (Go's ``json.Decoder``: trailing bytes are not
  read, a field of the wrong JSON type is an error); ``customfields`` are merged into
  ``output_fields`` (before ``Check``); an empty ``source`` becomes "syscalls"; a fresh
  ``uuid`` is set.
- ``types/types.go`` ``FalcoPayload.Check``: a known priority (``types/priority.go``:
  case-insensitive, "info" is Informational, anything else is no priority), a non-empty rule, a
  non-zero RFC 3339 time, and non-empty ``output_fields``.
- ``outputs/kafka.go``: the Kafka output publishes ``json.Marshal(payload)`` with no key
  (with ``publish_to``, the stand-in does too: struct fields in declaration order, map keys
  sorted, ``<``, ``>`` and ``&`` escaped as Go's encoder does by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer

PRIORITIES = {
    "emergency": "Emergency",
    "alert": "Alert",
    "critical": "Critical",
    "error": "Error",
    "warning": "Warning",
    "notice": "Notice",
    "informational": "Informational",
    "info": "Informational",
    "debug": "Debug",
}
#: FalcoPayload's fields and the JSON type Go's decoder accepts for each (null is always fine).
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "uuid": str,
    "output": str,
    "priority": str,
    "rule": str,
    "time": str,
    "output_fields": dict,
    "source": str,
    "tags": list,
    "hostname": str,
}
BAD_METHOD = "Please send with post http method"
BAD_BODY = "Please send a valid request body"


@dataclass(frozen=True)
class Received:
    """One request as it arrived, and what Falcosidekick would publish for it (None: 400)."""

    method: str
    path: str
    content_type: str
    body: bytes
    status: int
    published: dict[str, Any] | None


@dataclass
class FalcosidekickStandIn:
    """Serves on loopback in its own thread; ``received`` lists every request in order."""

    customfields: dict[str, str] = field(default_factory=dict)
    #: answer this status (a struggling Falcosidekick) to the first N requests.
    fail_first: int = 0
    fail_status: int = 503
    received: list[Received] = field(default_factory=list)
    port: int = 0
    #: a Kafka bootstrap address: publish what is accepted there, as the Kafka output does
    publish_to: str | None = None
    topic: str = "falco"
    #: KAFKA_COMPRESSION of the compose lab
    compression: str = "lz4"
    _producer: AIOKafkaProducer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def published(self) -> list[dict[str, Any]]:
        return [r.published for r in self.received if r.published is not None]

    @contextlib.contextmanager
    def serving(self) -> Iterator[FalcosidekickStandIn]:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop = asyncio.Event()

        async def main() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            if self.publish_to:
                self._producer = AIOKafkaProducer(
                    bootstrap_servers=self.publish_to,
                    compression_type=self.compression,
                    acks="all",
                )
                await self._producer.start()
            ready.set()
            await stop.wait()
            await runner.cleanup()
            if self._producer is not None:
                await self._producer.stop()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Falcosidekick stand-in did not start")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, text, published = 200, "", None
        if len(self.received) < self.fail_first:
            status, text = self.fail_status, "outputs not ready"
        elif request.method != "POST":
            status, text = 400, BAD_METHOD
        else:
            published = self.judge(body)
            if published is None:
                status, text = 400, BAD_BODY
            elif self._producer is not None:
                await self._producer.send_and_wait(self.topic, go_json(published), key=None)
        self.received.append(
            Received(
                request.method,
                request.path,
                request.headers.get("Content-Type", ""),
                body,
                status,
                published,
            )
        )
        # Go's http.Error: the text and a newline, as text/plain
        return web.Response(status=status, text=text + "\n" if text else "")

    def judge(self, body: bytes) -> dict[str, Any] | None:
        """What Falcosidekick would publish for ``body``, or None where it answers 400."""
        try:
            payload, _ = json.JSONDecoder().raw_decode(body.decode().lstrip())
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(payload, dict):
            return None
        for name, kind in FIELD_TYPES.items():
            if payload.get(name) is not None and not isinstance(payload[name], kind):
                return None
        if payload.get("tags") and not all(isinstance(t, str) for t in payload["tags"]):
            return None
        try:
            when = dt.datetime.fromisoformat(payload["time"]) if payload.get("time") else None
        except ValueError:
            return None
        priority = PRIORITIES.get(str(payload.get("priority") or "").lower())
        fields = {**(payload.get("output_fields") or {}), **self.customfields}  # before Check
        if priority is None or not payload.get("rule") or when is None or not fields:
            return None
        return {
            **payload,
            "priority": priority,
            "output_fields": fields,
            "source": payload.get("source") or "syscalls",
            "uuid": str(uuid.uuid4()),
        }


def go_json(payload: dict[str, Any]) -> bytes:
    """``json.Marshal`` of a FalcoPayload: declared field order, omitempty, sorted map keys."""
    order = ("uuid", "output", "priority", "rule", "time", "output_fields", "source", "tags")
    omitempty = {"uuid", "tags", "hostname"}
    doc = {k: payload.get(k) for k in (*order, "hostname") if k not in omitempty or payload.get(k)}
    doc["output"] = doc.get("output") or ""
    doc["rule"] = doc.get("rule") or ""
    doc["output_fields"] = dict(sorted((doc.get("output_fields") or {}).items()))
    if "tags" in doc:
        doc["tags"] = sorted(doc["tags"])  # newFalcoPayload sorts them
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)  # outside strings JSON has none of these
    return text.encode()
