"""A TLS and SASL front for the embedded broker, so the real clients negotiate both for real.

This tansu build has no usable TLS listener (``--cert`` and ``--key`` conflict) and its SCRAM
users cannot be created on memory storage, so the tests put this gate between the clients and
tansu: it terminates TLS with a certificate from a throwaway CA (trustme), answers Kafka's
SaslHandshake and SaslAuthenticate itself (PLAIN by hand, SCRAM through scramp's server side),
refuses any other request before authentication as a broker does, then relays bytes both ways.
Wire formats are aiokafka's own protocol structs; tansu advertises the gate's address in its
metadata, so every connection a client opens goes through the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiokafka.protocol.admin import (
    SaslAuthenticateRequest_v1,
    SaslAuthenticateResponse_v0,
    SaslAuthenticateResponse_v1,
    SaslHandShakeRequest_v1,
    SaslHandShakeResponse_v1,
)
from scramp import ScramException, ScramMechanism

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM = 58, 33


@dataclass
class KafkaGate:
    """Listens on ``port``; relays to ``upstream_port`` after TLS and SASL, if configured."""

    port: int
    upstream_port: int
    tls: ssl.SSLContext | None = None
    #: mechanism -> {username: password}; empty means no SASL.
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    #: usernames that authenticated, in order (what the broker's audit log would show).
    authenticated: list[str] = field(default_factory=list)
    #: connections refused, with the reason.
    refused: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def serving(self) -> Iterator[KafkaGate]:
        """Serve on a thread with its own loop for the duration of a block."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop = asyncio.Event()

        async def main() -> None:
            server = await asyncio.start_server(self._client, self.host, self.port, ssl=self.tls)
            ready.set()
            async with server:
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the gate did not start")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        try:
            if not self.users or await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        mechanism: str | None = None
        scram = None
        user = ""
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            if api_key == API_VERSIONS:  # allowed before authentication, answered by the broker
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                writer.write(_framed(await _read_frame(up_reader)))
                await writer.drain()
                continue
            body = io.BytesIO(frame[8:])
            body.read(struct.unpack(">h", body.read(2))[0])  # client id
            if api_key == SASL_HANDSHAKE:
                mechanism = SaslHandShakeRequest_v1.decode(body).mechanism
                code = 0 if mechanism in self.users else UNSUPPORTED_SASL_MECHANISM
                reply = SaslHandShakeResponse_v1(code, sorted(self.users))
                await _respond(writer, correlation, reply.encode())
                if code:
                    self.refused.append(f"mechanism {mechanism}")
                    return False
                continue
            if api_key != SASL_AUTHENTICATE or mechanism is None:
                self.refused.append(f"request {api_key} before authentication")
                return False
            token = SaslAuthenticateRequest_v1.decode(body).sasl_auth_bytes
            response_type = (
                SaslAuthenticateResponse_v1 if version >= 1 else SaslAuthenticateResponse_v0
            )
            try:
                if mechanism == "PLAIN":
                    user, answer, done = self._plain(token), b"", True
                elif scram is None:
                    scram = ScramMechanism(mechanism).make_server(self._scram_auth(mechanism))
                    scram.set_client_first(token.decode())
                    user = token.decode().split(",")[2].removeprefix("n=")  # gs2 header, n=user
                    answer, done = scram.get_server_first().encode(), False
                else:
                    scram.set_client_final(token.decode())
                    answer, done = scram.get_server_final().encode(), True
            except (ScramException, ValueError, KeyError) as exc:
                self.refused.append(str(exc))
                fields = (SASL_AUTHENTICATION_FAILED, "authentication failed", b"")
                reply = response_type(*fields, 0) if version >= 1 else response_type(*fields)
                await _respond(writer, correlation, reply.encode())
                return False
            fields = (0, None, answer)
            reply = response_type(*fields, 0) if version >= 1 else response_type(*fields)
            await _respond(writer, correlation, reply.encode())
            if done:
                self.authenticated.append(user)
                return True

    def _plain(self, token: bytes) -> str:
        """RFC 4616: authzid NUL authcid NUL password; the user, or ScramException."""
        _, user, password = token.decode().split("\0")
        if self.users["PLAIN"].get(user) != password:
            raise ScramException(f"wrong password for {user}")
        return user

    def _scram_auth(self, mechanism: str) -> Callable[[str], tuple[bytes, bytes, bytes, int]]:
        """What a broker stores per SCRAM user: salt, stored key, server key, iterations."""
        m = ScramMechanism(mechanism)
        stored = {
            user: m.make_auth_info(password, iteration_count=4096)
            for user, password in self.users[mechanism].items()
        }
        return stored.__getitem__


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _framed(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


async def _respond(writer: asyncio.StreamWriter, correlation: int, body: bytes) -> None:
    writer.write(_framed(struct.pack(">i", correlation) + body))
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
