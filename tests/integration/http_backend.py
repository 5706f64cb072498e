"""A real HTTP/1.1 app server for the plain-HTTP tests (issue 10), and the clients' tools.

The server is h11 on anyio, one task per accepted connection, with keep-alive
(``start_next_cycle``). It records every request (method, target, headers, body length,
whether the body ended) and every accepted TCP connection, so that a test can prove
pooling, and that a refused request reached no backend. An ``Upgrade: websocket``
request is answered 101 and echoed with wsproto: one backend serves both kinds, as the
app servers behind a sidecar do.

Routes (the query string configures each):

- ``GET /hello…``: ``hello <target>`` with a Content-Length.
- ``POST /echo?framing=chunked|length``: the request body streamed back as it comes
  (the default framing mirrors the request's).
- ``POST /sink?chunk=N&pause_ms=M``: reads the body N bytes at a time (a slow reader
  when M > 0) and answers its length and sha256 as JSON.
- ``GET /bytes?n=N&framing=chunked|length&chunk=C``: N bytes of ``PATTERN``, streamed.
- ``GET /gate/NAME``: waits until the test releases ``backend.gate(NAME)``; a connection
  that ends meanwhile (EOF, reset) sets the gate's ``gone`` and ends the request there.
- ``POST /upload-gate/NAME``: reads a first piece of the body, then waits for the gate.
- ``GET /trickle/NAME``: sends its head and a first line, then waits for the gate.
- ``GET /events?n=N&gap_ms=M``: server-sent events: its head at once, then N events M ms
  apart (the stream's own pace), then the end.
- ``GET /hop``: answers with hop-by-hop headers (and one end-to-end header, X-Kept).
- ``GET /status/NNN``: answers status NNN.

Readiness comes from the bound listener itself (port 0); nothing here sleeps except the
``pause_ms`` of a deliberately slow reader and the ``gap_ms`` of an event stream.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import h11
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

#: 64 KiB of bytes 0..255 repeated: the body of ``/bytes`` is this, repeated and cut.
PATTERN = bytes(range(256)) * 256
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A bound on every wait of these helpers; each normally takes milliseconds.
WAIT = 5.0
_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
           h11.RemoteProtocolError, OSError)


def pattern_sha256(n: int) -> str:
    """The sha256 of the first *n* bytes of the ``/bytes`` body."""
    digest = hashlib.sha256()
    for _ in range(n // len(PATTERN)):
        digest.update(PATTERN)
    digest.update(PATTERN[: n % len(PATTERN)])
    return digest.hexdigest()


def peak_rss(pid: int) -> int:
    """The peak resident set size (VmHWM) of process *pid*, in bytes (from /proc)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1)) * 1024


# The server -----------------------------------------------------------------------------


@dataclass
class SeenRequest:
    """One request as the backend received it."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]  # names lower-cased, in arrival order
    body_length: int = 0
    #: The whole body arrived (h11's EndOfMessage).
    complete: bool = False

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return ", ".join(values) if values else None


@dataclass
class Gate:
    """A request of ``/gate/NAME`` has arrived; its answer waits for ``release``."""

    arrived: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    #: The request's connection ended while it waited (``/gate/NAME`` only).
    gone: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class HttpBackend:
    name: str
    port: int
    requests: list[SeenRequest] = field(default_factory=list)
    #: The client address of every accepted TCP connection.
    connections: list[tuple[str, int]] = field(default_factory=list)
    #: How the connections that ended badly ended (resets, incomplete bodies).
    errors: list[str] = field(default_factory=list)
    websockets: int = 0
    gates: dict[str, Gate] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The URL for the proxy's config (ws:// means HTTP for plain requests)."""
        return f"ws://127.0.0.1:{self.port}"

    def gate(self, name: str) -> Gate:
        return self.gates.setdefault(name, Gate())

    async def serve_connection(self, stream: SocketStream) -> None:
        self.connections.append(stream.extra(SocketAttribute.remote_address))
        async with stream:
            peer = Peer(stream, h11.SERVER)
            try:
                while await self._one_request(peer):
                    pass
            except _BROKEN as exc:
                self.errors.append(repr(exc))

    async def _one_request(self, peer: Peer) -> bool:
        """Serve one request; whether the connection can carry another."""
        event = await peer.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return False
        assert isinstance(event, h11.Request), event
        seen = SeenRequest(
            method=event.method.decode(), target=event.target.decode("latin-1"),
            http_version=event.http_version.decode(),
            headers=[(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers],
        )
        self.requests.append(seen)
        peer.no_body = seen.method == "HEAD"  # its answer has a length but no body
        if (seen.get("upgrade") or "").lower() == "websocket":
            await self._websocket(peer, seen)
            return False
        await _route(self, peer, seen)
        while peer.conn.their_state is h11.SEND_BODY:  # the rest of a body not read
            await read_body_chunk(peer, seen)
        if h11.MUST_CLOSE in (peer.conn.our_state, peer.conn.their_state):
            return False
        peer.conn.start_next_cycle()
        return True

    async def _websocket(self, peer: Peer, seen: SeenRequest) -> None:
        """Answer the upgrade by hand, then echo messages with wsproto until the close."""
        key = (seen.get("sec-websocket-key") or "").encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        await peer.send(h11.InformationalResponse(status_code=101, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept),
        ]))
        self.websockets += 1
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(peer.conn.trailing_data[0])
        while True:
            for ev in ws.events():
                if isinstance(ev, TextMessage | BytesMessage):
                    out = ws.send(type(ev)(data=ev.data, message_finished=ev.message_finished))
                elif isinstance(ev, Ping):
                    out = ws.send(ev.response())
                elif isinstance(ev, CloseConnection):
                    await peer.stream.send(ws.send(ev.response()))
                    return
                else:
                    continue
                await peer.stream.send(out)
            try:
                ws.receive_data(await peer.stream.receive())
            except anyio.EndOfStream:
                return


@asynccontextmanager
async def http_backend(name: str = "b1") -> AsyncIterator[HttpBackend]:
    """An HTTP backend on 127.0.0.1 port 0, listening when this yields."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    info = HttpBackend(name, listener.extra(SocketAttribute.local_port))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, info.serve_connection)
        try:
            yield info
        finally:
            tg.cancel_scope.cancel()


class Peer:
    """One h11 connection (either role) on an anyio byte stream."""

    def __init__(self, stream: ByteStream, role: type[h11.CLIENT] | type[h11.SERVER]) -> None:
        self.stream = stream
        self.conn = h11.Connection(role)
        #: Answering a HEAD request: the Data events sent are dropped.
        self.no_body = False

    async def next_event(self, max_bytes: int = 65536) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(max_bytes)
            except anyio.EndOfStream:
                data = b""
            self.conn.receive_data(data)

    async def send(self, *events: object) -> None:
        if self.no_body:
            events = tuple(e for e in events if not isinstance(e, h11.Data))
        data = b"".join(self.conn.send(e) or b"" for e in events)  # type: ignore[arg-type]
        if data:
            await self.stream.send(data)


async def read_body_chunk(peer: Peer, seen: SeenRequest, max_bytes: int = 65536) -> bytes | None:
    """The next piece of the request body, or None at its end (100 Continue sent first)."""
    if peer.conn.they_are_waiting_for_100_continue:
        await peer.send(h11.InformationalResponse(status_code=100, headers=[]))
    if peer.conn.their_state is not h11.SEND_BODY:
        return None
    event = await peer.next_event(max_bytes)
    if isinstance(event, h11.Data):
        seen.body_length += len(event.data)
        return bytes(event.data)
    assert isinstance(event, h11.EndOfMessage), event
    seen.complete = True
    return None


async def read_body(peer: Peer, seen: SeenRequest) -> bytes:
    chunks = []
    while (chunk := await read_body_chunk(peer, seen)) is not None:
        chunks.append(chunk)
    return b"".join(chunks)


def _text(status: int, text: str, *extra: tuple[str, str]) -> list[object]:
    body = text.encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra]
    return [h11.Response(status_code=status, headers=headers), h11.Data(data=body),
            h11.EndOfMessage()]


async def _route(backend: HttpBackend, peer: Peer, seen: SeenRequest) -> None:
    parts = urlsplit(seen.target)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    by = ("X-Backend", backend.name)
    if path.startswith("/hello") or path.startswith("/prefix/hello"):
        await read_body(peer, seen)
        await peer.send(*_text(200, f"hello {seen.target}\n", by))
    elif path == "/echo":
        await _echo(peer, seen, query.get("framing"))
    elif path == "/sink":
        digest = hashlib.sha256()
        chunk, pause = int(query.get("chunk", "65536")), int(query.get("pause_ms", "0")) / 1000
        while (data := await read_body_chunk(peer, seen, chunk)) is not None:
            digest.update(data)
            if pause:
                await anyio.sleep(pause)  # a slow reader, not a synchronisation
        answer = json.dumps({"length": seen.body_length, "sha256": digest.hexdigest()})
        await peer.send(*_text(200, answer, by))
    elif path == "/bytes":
        await read_body(peer, seen)
        await _bytes(peer, int(query["n"]), query.get("framing", "length"),
                     int(query.get("chunk", "65536")))
    elif path.startswith("/gate/"):
        await read_body(peer, seen)
        gate = backend.gate(path.removeprefix("/gate/"))
        gate.arrived.set()
        await _wait_watching(peer, gate)
        await peer.send(*_text(200, f"released {path}\n", by))
    elif path.startswith("/upload-gate/"):
        gate = backend.gate(path.removeprefix("/upload-gate/"))
        await read_body_chunk(peer, seen)  # a first piece of the body...
        gate.arrived.set()
        await gate.release.wait()  # ... has arrived before the client sent the rest
        await read_body(peer, seen)
        await peer.send(*_text(200, f"{seen.body_length}\n", by))
    elif path.startswith("/trickle/"):
        await read_body(peer, seen)
        gate = backend.gate(path.removeprefix("/trickle/"))
        await peer.send(h11.Response(status_code=200, headers=[by]), h11.Data(data=b"first\n"))
        gate.arrived.set()
        await gate.release.wait()
        await peer.send(h11.Data(data=b"second\n"), h11.EndOfMessage())
    elif path == "/events":
        await read_body(peer, seen)
        await peer.send(h11.Response(status_code=200, headers=[
            by, ("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]))
        gap = int(query.get("gap_ms", "0")) / 1000
        for i in range(int(query.get("n", "3"))):
            if i:
                await anyio.sleep(gap)  # the stream's pace, not a synchronisation
            await peer.send(h11.Data(data=f"data: event {i}\n\n".encode()))
        await peer.send(h11.EndOfMessage())
    elif path == "/hop":
        await read_body(peer, seen)
        await peer.send(*_text(
            200, "hop\n", ("Connection", "X-Custom"), ("X-Custom", "hidden"),
            ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic"), ("X-Kept", "yes"),
        ))
    elif path.startswith("/status/"):
        await read_body(peer, seen)
        await peer.send(*_text(int(path.removeprefix("/status/")), f"status {path}\n", by))
    else:
        await read_body(peer, seen)
        await peer.send(*_text(404, "not found\n", by))


async def _wait_watching(peer: Peer, gate: Gate) -> None:
    """Wait for *gate*'s release while reading the connection, as a server that notices
    a client gone does: an EOF or a reset sets ``gate.gone`` and raises EndOfStream."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            try:
                while True:
                    peer.conn.receive_data(await peer.stream.receive())
            except _BROKEN:
                gate.gone.set()
                tg.cancel_scope.cancel()

        tg.start_soon(watch)
        await gate.release.wait()
        tg.cancel_scope.cancel()
    if gate.gone.is_set():
        raise anyio.EndOfStream


async def _echo(peer: Peer, seen: SeenRequest, framing: str | None) -> None:
    length = seen.get("content-length")
    if framing is None:
        framing = "length" if length is not None else "chunked"
    if framing == "length" and length is None:  # a length we do not know yet: buffer
        body = await read_body(peer, seen)
        await peer.send(h11.Response(status_code=200, headers=[
            ("Content-Length", str(len(body)))]), h11.Data(data=body), h11.EndOfMessage())
        return
    if peer.conn.they_are_waiting_for_100_continue:
        await peer.send(h11.InformationalResponse(status_code=100, headers=[]))
    headers = [("Content-Length", length)] if framing == "length" and length else []
    await peer.send(h11.Response(status_code=200, headers=headers))
    while (chunk := await read_body_chunk(peer, seen)) is not None:
        await peer.send(h11.Data(data=chunk))
    await peer.send(h11.EndOfMessage())


async def _bytes(peer: Peer, n: int, framing: str, chunk: int) -> None:
    assert 0 < chunk <= len(PATTERN)
    headers = [("Content-Type", "application/octet-stream")]
    if framing == "length":
        headers.append(("Content-Length", str(n)))
    await peer.send(h11.Response(status_code=200, headers=headers))
    doubled = PATTERN * 2
    for offset in range(0, n, chunk):
        start = offset % len(PATTERN)
        await peer.send(h11.Data(data=doubled[start : start + min(chunk, n - offset)]))
    await peer.send(h11.EndOfMessage())


# The clients' side ----------------------------------------------------------------------


@dataclass
class Reply:
    """One response as a client received it."""

    status: int
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes = b""
    http_version: str = "1.1"
    #: The 1xx responses that came before it.
    informational: list[int] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of header *name*, lower-cased."""
        return {t.strip().lower() for v in self.all(name) for t in v.split(",") if t.strip()}


def _head(event: h11.Response) -> Reply:
    return Reply(event.status_code,
                 [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers],
                 http_version=event.http_version.decode())


class HttpClient(Peer):
    """The client side of one HTTP/1.1 connection, request by request, bodies streamed."""

    def __init__(self, stream: ByteStream, host: str = "app.example") -> None:
        super().__init__(stream, h11.CLIENT)
        self.host = host

    async def send_head(self, method: str, target: str,
                        headers: Sequence[tuple[str, str]] = ()) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        assert self.conn.our_state is h11.IDLE, (
            f"this connection cannot carry another request: {self.conn.states}")
        names = {k.lower() for k, _ in headers}
        host = [] if "host" in names else [("Host", self.host)]
        await self.send(h11.Request(method=method, target=target, headers=[*host, *headers]))

    async def response_head(self) -> Reply:
        """The final response's head (the 1xx before it are kept in ``informational``)."""
        informational = []
        with anyio.fail_after(WAIT):
            while True:
                event = await self.next_event()
                if isinstance(event, h11.InformationalResponse):
                    informational.append(event.status_code)
                    continue
                assert isinstance(event, h11.Response), event
                reply = _head(event)
                reply.informational = informational
                return reply

    async def body_chunk(self, max_bytes: int = 65536) -> bytes | None:
        """The next piece of the response body, or None at its end."""
        event = await self.next_event(max_bytes)
        if isinstance(event, h11.Data):
            return bytes(event.data)
        assert isinstance(event, h11.EndOfMessage), event
        return None

    async def read_body(self) -> bytes:
        chunks = []
        with anyio.fail_after(WAIT):
            while (chunk := await self.body_chunk()) is not None:
                chunks.append(chunk)
        return b"".join(chunks)

    async def request(self, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                      body: bytes | Sequence[bytes] | None = None) -> Reply:
        """One whole exchange. A list body goes chunked; bytes with a Content-Length."""
        headers = list(headers)
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
            body = [body] if body else []
        elif body is not None:
            headers.append(("Transfer-Encoding", "chunked"))
        await self.send_head(method, target, headers)
        await self.send(*(h11.Data(data=c) for c in body or ()), h11.EndOfMessage())
        reply = await self.response_head()
        reply.body = await self.read_body()
        return reply

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection now (EOF or a reset, bounded wait)."""
        return await at_eof(self.stream)


@asynccontextmanager
async def http_client(port: int, host: str = "app.example") -> AsyncIterator[HttpClient]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        yield HttpClient(stream, host)


async def at_eof(stream: ByteStream, within: float = WAIT) -> bool:
    """True once *stream* ends (EOF or reset); False if bytes arrive instead."""
    with anyio.fail_after(within):
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


async def read_until_eof(stream: ByteStream, within: float = WAIT) -> bytes:
    chunks = []
    with anyio.fail_after(within):
        while True:
            try:
                chunks.append(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return b"".join(chunks)


def parse_responses(data: bytes, methods: Sequence[str], *, closed: bool = True) -> list[Reply]:
    """The responses in *data*, answers to requests of *methods* sent in one go.

    h11's client side parses them: each request is "sent" to it (its bytes thrown away)
    so that it knows what to expect, then the received bytes are fed. *closed*: the
    server closed the connection after *data* (a close-delimited body may end there).
    """
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    if closed:
        conn.receive_data(b"")
    replies = []
    for method in methods:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        elif conn.our_state is not h11.IDLE:
            break  # the connection cannot carry another exchange
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        reply: Reply | None = None
        while True:
            event = conn.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                reply = _head(event)
            elif isinstance(event, h11.Data):
                assert reply is not None
                reply.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert reply is not None
                replies.append(reply)
                break
            else:  # NEED_DATA, ConnectionClosed, PAUSED: no more whole responses
                return replies
    return replies
