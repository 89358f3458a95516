"""A TLS and SASL front for the embedded broker, so the real clients negotiate both for real.

This tansu build has no usable TLS listener (``--cert`` and ``--key`` conflict) and its SCRAM
users cannot be created on memory storage, so the tests put this gate between the clients and
tansu: it terminates TLS with a certificate from a throwaway CA (trustme), answers Kafka's
SaslHandshake and SaslAuthenticate itself (PLAIN by hand, SCRAM through scramp's server side),
refuses any other request before authentication as a broker does, then relays bytes both ways.
Wire formats are aiokafka's own protocol structs; tansu advertises the gate's address in its
metadata, so every connection a client opens goes through the gate.

With ``api_versions`` the gate also answers like an Apache Kafka 4.0 broker (KIP-896 removed the
protocol versions older than Kafka 2.1): it rewrites tansu's ApiVersions answer to the ranges a
4.0 broker lists, intersected with tansu's own (tansu serves 3.9's ranges from version 0, so the
intersection is 4.0's floor and tansu's ceiling, and tansu never sees a version it lacks), and it
closes the connection on any other request below 4.0's floor, above its ceiling or of an API 4.0
does not serve, as the broker's socket server does when it cannot parse a request header.
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

#: The ApiVersions answer of an Apache Kafka 4.0.0 broker, api key -> (min, max), as recorded
#: from a real broker by dpkp/kafka-python (``kafka/protocol/broker_version_data.py``,
#: ``BROKER_API_VERSIONS[(4, 0)]``, commit 9ff3587b). Its floors agree with the KIP-896 notes in
#: Apache Kafka's message definitions (``clients/src/main/resources/common/message/*.json``,
#: e.g. FetchRequest.json "Versions 0-3 were removed in Apache Kafka 4.0", CreateTopicsRequest.json
#: "Versions 0-1 were removed"); JoinGroup 0-1 came back after 4.0.0 (KAFKA-19444), so 4.0.0 is
#: the strictest 4.x.
KAFKA_4_0: dict[int, tuple[int, int]] = {
    0: (0, 12), 1: (4, 17), 2: (1, 10), 3: (0, 13), 8: (2, 9), 9: (1, 9), 10: (0, 6),
    11: (2, 9), 12: (0, 4), 13: (0, 5), 14: (0, 5), 15: (0, 6), 16: (0, 5), 17: (0, 1),
    18: (0, 4), 19: (2, 7), 20: (1, 6), 21: (0, 2), 22: (0, 5), 23: (2, 4), 24: (0, 5),
    25: (0, 4), 26: (0, 5), 27: (1, 1), 28: (0, 5), 29: (1, 3), 30: (1, 3), 31: (1, 3),
    32: (1, 4), 33: (0, 2), 34: (1, 2), 35: (1, 4), 36: (0, 2), 37: (0, 3), 38: (1, 3),
    39: (1, 2), 40: (1, 2), 41: (1, 3), 42: (0, 2), 43: (0, 2), 44: (0, 1), 45: (0, 0),
    46: (0, 0), 47: (0, 0), 48: (0, 1), 49: (0, 1), 50: (0, 0), 51: (0, 0), 55: (0, 2),
    57: (0, 2), 60: (0, 2), 61: (0, 0), 64: (0, 0), 65: (0, 0), 66: (0, 1), 68: (0, 1),
    69: (0, 1), 74: (0, 0), 75: (0, 0), 80: (0, 0), 81: (0, 0),
}  # fmt: skip
#: Listed but refused: ProduceRequest.json (4.0) "Versions 0-2 were removed in Apache Kafka 4.0
#: ... these versions have to be included in the api versions response (see KAFKA-18659), but
#: are rejected otherwise" (librdkafka only compresses if the Produce row starts at 0).
KAFKA_4_0_SERVED_FROM = {0: 3}
#: Kafka's API names for the refusals a test reads.
API_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit",
    9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup",
    14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups", 17: "SaslHandshake",
    18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics", 22: "InitProducerId",
    32: "DescribeConfigs", 36: "SaslAuthenticate", 60: "DescribeCluster",
}  # fmt: skip


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
    #: answer ApiVersions with these ranges (intersected with the broker's) and close the
    #: connection on any request outside them, as Kafka 4.0 does; None relays every version.
    api_versions: dict[int, tuple[int, int]] | None = None
    #: (api key, version) of every request relayed after authentication, for the tests to read.
    requests: set[tuple[int, int]] = field(default_factory=set)
    _open: set[asyncio.StreamWriter] = field(default_factory=set, init=False, repr=False)

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
            # connections still open (a client that outlived the test) end here, not in a
            # closed loop's garbage collection
            for writer in list(self._open):
                writer.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=5)

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
        self._open |= {writer, up_writer}
        try:
            if self.users and not await self._authenticate(reader, writer, up_reader, up_writer):
                return
            if self.api_versions is None:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            else:
                pending: dict[int, int] = {}  # correlation id -> version of ApiVersions asked
                await asyncio.gather(
                    self._requests(reader, writer, up_writer, pending),
                    self._responses(up_reader, writer, pending),
                )
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._open -= {writer, up_writer}
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
                writer.write(_framed(self._versions_answer(await _read_frame(up_reader), version)))
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

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
        pending: dict[int, int],
    ) -> None:
        """Relay requests one frame at a time; close both ends on one Kafka 4.0 refuses."""
        assert self.api_versions is not None
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                frame = await _read_frame(reader)
                api_key, version, correlation = struct.unpack(">hhi", frame[:8])
                if api_key == API_VERSIONS:  # any version: too new gets UNSUPPORTED_VERSION
                    pending[correlation] = version
                else:
                    low, high = self.api_versions.get(api_key, (0, -1))
                    low = max(low, KAFKA_4_0_SERVED_FROM.get(api_key, low))
                    if not low <= version <= high:
                        name = API_NAMES.get(api_key, f"api key {api_key}")
                        self.refused.append(f"{name} v{version} (served: v{low}-v{high})")
                        break
                    self.requests.add((api_key, version))
                up_writer.write(_framed(frame))
                await up_writer.drain()
        for w in (writer, up_writer):
            w.close()

    async def _responses(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: dict[int, int]
    ) -> None:
        """Relay answers one frame at a time, rewriting those to ApiVersions."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                frame = await _read_frame(up_reader)
                correlation = struct.unpack(">i", frame[:4])[0]
                if correlation in pending:
                    frame = self._versions_answer(frame, pending.pop(correlation))
                writer.write(_framed(frame))
                await writer.drain()
        writer.close()

    def _versions_answer(self, frame: bytes, version: int) -> bytes:
        """The broker's ApiVersions answer with each range cut to ``api_versions``."""
        if self.api_versions is None:
            return frame
        return _intersect_api_versions(frame, version, self.api_versions)

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


def _intersect_api_versions(
    frame: bytes, version: int, allowed: dict[int, tuple[int, int]]
) -> bytes:
    """Rewrite an ApiVersions answer (header v0, then the body of ``version``; v3+ compact).

    An error answer (UNSUPPORTED_VERSION, to a version newer than the broker's) is in the v0
    layout whatever was asked, and lists the ranges too (KIP-511): rewritten the same way.
    """
    head, body = frame[:4], io.BytesIO(frame[4:])
    error = struct.unpack(">h", body.read(2))[0]
    flexible = version >= 3 and not error
    count = _read_uvarint(body) - 1 if flexible else struct.unpack(">i", body.read(4))[0]
    rows = []
    for _ in range(count):
        key, low, high = struct.unpack(">hhh", body.read(6))
        if flexible:
            _skip_tagged_fields(body)
        if key in allowed:
            low, high = max(low, allowed[key][0]), min(high, allowed[key][1])
            if low <= high:
                rows.append(struct.pack(">hhh", key, low, high) + (b"\0" if flexible else b""))
    size = _uvarint(len(rows) + 1) if flexible else struct.pack(">i", len(rows))
    return head + struct.pack(">h", error) + size + b"".join(rows) + body.read()


def _read_uvarint(stream: io.BytesIO) -> int:
    value, shift = 0, 0
    while True:
        byte = stream.read(1)[0]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip_tagged_fields(stream: io.BytesIO) -> None:
    for _ in range(_read_uvarint(stream)):
        _read_uvarint(stream)  # tag
        stream.read(_read_uvarint(stream))


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
