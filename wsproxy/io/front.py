"""The front door: the listener's protocols, and WebSocket or plain HTTP, both ways.

Every accepted client starts as a WebSocket ``Connection`` behind a
``ClientProtocol``: the connection limits, the handshake timer, the metrics and a
shutdown count it from its first byte, whatever it turns out to want. Its first
request is parsed once, by the Session's Upgrade (wsproxy.core.upgrade), and that
parse decides:

    an upgrade (or a probe, or an error)  the Connection goes on with it
    a request without Upgrade            ``to_http()``: an HttpRelay takes the socket
      (``plain_http: proxy``)              over, with the parser that read the request
    an upgrade on that keep-alive        ``to_websocket()``: a fresh Connection takes
      connection, later                    the socket back, with the relay's parse

The request travels with the h11 parser that read it (core.http.ParsedRequest), so
neither driver reads it again, and so do the connection's settings (io.ports
.ConnectionSettings, taken when the client was accepted), so that a client keeps one
config file whichever driver serves it; the drivers reach this door through one-method ports
(io.connection.HttpDoor, io.http_relay.WebSocketDoor) and never each other.

The hot path runs through here: ``ClientProtocol.data_received`` is the first call
of every client read, and does nothing but pass the bytes on.
"""

from __future__ import annotations

import asyncio
import socket
from functools import partial
from typing import TYPE_CHECKING, cast

from wsproxy.core.http import ParsedRequest
from wsproxy.core.proxy_protocol import ProxyHeaderParser, ProxyProtocolError
from wsproxy.core.states import Side
from wsproxy.io.connection import Connection
from wsproxy.io.http_relay import HttpRelay

if TYPE_CHECKING:
    from wsproxy.io.ports import ConnectionOwner, ConnectionSettings

CLIENT = Side.CLIENT
UPSTREAM = Side.UPSTREAM


class FrontDoor:
    """Where the listener's clients come in, and where they change drivers.

    One per listener; it implements both drivers' ports (HttpDoor, WebSocketDoor).
    *proxy_protocol* is the listener's ``listen.proxy_protocol``, as it was started.
    """

    __slots__ = ("ctx", "proxy_protocol")

    def __init__(self, ctx: ConnectionOwner[Connection], *, proxy_protocol: bool) -> None:
        self.ctx = ctx
        self.proxy_protocol = proxy_protocol

    def tls_established(
        self, transport: asyncio.Transport, deadline: float, settings: ConnectionSettings
    ) -> None:
        """A TLS client is through its handshake: a Connection takes it (io.tls_accept),
        under the *settings* in force when it was accepted; its request must be in by
        *deadline*."""
        conn = Connection(self.ctx, transport, door=self, deadline=deadline, settings=settings)
        transport.set_protocol(
            ProxiedClientProtocol(self, conn) if self.proxy_protocol
            else ClientProtocol(self, conn)
        )

    def to_http(
        self, transport: asyncio.Transport, parsed: ParsedRequest, *, conn_id: str, peer_ip: str,
        settings: ConnectionSettings,
    ) -> None:
        """The first request has no Upgrade: an HttpRelay serves the connection."""
        HttpRelay(self.ctx, transport, conn_id=conn_id, peer_ip=peer_ip, first=parsed,
                  door=self, settings=settings)

    def handed_over(self, sock: socket.socket, peer_ip: str, first: bytes) -> None:
        """A client whose resume a sibling worker read, for a session held here
        (io.handoff): served as if accepted here, from the bytes the sibling read."""

        async def adopt() -> None:
            try:
                await self.ctx.loop.connect_accepted_socket(
                    partial(HandedOverProtocol, self, peer_ip, first), sock
                )
            except OSError:  # gone on the way
                sock.close()

        self.ctx.spawn(adopt)

    def to_websocket(
        self, transport: asyncio.Transport, parsed: ParsedRequest, *, peer_ip: str,
        settings: ConnectionSettings,
    ) -> None:
        """A keep-alive connection's request asks for an upgrade: a fresh Connection,
        under the settings the client was accepted with."""
        conn = Connection(self.ctx, transport, door=self, settings=settings)
        if peer_ip != conn.peer_ip:  # from a PROXY header
            conn.set_peer(peer_ip)
        transport.set_protocol(ClientProtocol(self, conn))
        conn.receive_parsed(parsed)


class ClientProtocol(asyncio.Protocol):
    """The listener's protocol: one per accepted client connection."""

    __slots__ = ("_conn", "_door")

    def __init__(self, door: FrontDoor, conn: Connection | None = None) -> None:
        self._door = door
        #: Given when the Connection was made before this protocol (TLS, a hand-back).
        self._conn: Connection | None = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        if self._conn is None:
            door = self._door
            self._conn = Connection(door.ctx, cast(asyncio.Transport, transport), door=door)

    def data_received(self, data: bytes) -> None:
        assert self._conn is not None
        self._conn.receive(CLIENT, data)

    def eof_received(self) -> bool:
        assert self._conn is not None
        self._conn.receive_eof(CLIENT)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._conn is not None
        self._conn.transport_lost(CLIENT)

    def pause_writing(self) -> None:
        assert self._conn is not None
        self._conn.pause_reading(UPSTREAM)

    def resume_writing(self) -> None:
        assert self._conn is not None
        self._conn.resume_reading(UPSTREAM)


class HandedOverProtocol(ClientProtocol):
    """A client handed over by a sibling worker (FrontDoor.handed_over): its
    Connection reads *first*, what the sibling read, before anything else."""

    __slots__ = ("_first", "_peer_ip")

    def __init__(self, door: FrontDoor, peer_ip: str, first: bytes) -> None:
        super().__init__(door)
        self._peer_ip = peer_ip
        self._first = first

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self._conn is not None
        if self._peer_ip != self._conn.peer_ip:  # it came with a PROXY header
            self._conn.set_peer(self._peer_ip)
        first, self._first = self._first, b""
        self._conn.receive(CLIENT, first)


class ProxiedClientProtocol(ClientProtocol):
    """For ``listen.proxy_protocol``: a PROXY v1/v2 header comes before the request.

    Its client address replaces the socket's peer (a load balancer's) for the limits,
    the logs and X-Forwarded-For. A connection without a valid header is dropped.
    """

    __slots__ = ("_parser",)

    def __init__(self, door: FrontDoor, conn: Connection | None = None) -> None:
        super().__init__(door, conn)
        self._parser: ProxyHeaderParser | None = ProxyHeaderParser()

    def data_received(self, data: bytes) -> None:
        assert self._conn is not None
        if self._parser is None:
            self._conn.receive(CLIENT, data)
            return
        try:
            parsed = self._parser.feed(data)
        except ProxyProtocolError as exc:
            self._parser = None
            self._conn.refuse("proxy_protocol", str(exc))
            return
        if parsed is None:
            return
        header, rest = parsed
        self._parser = None
        if header.client_ip is not None:
            self._conn.set_peer(header.client_ip)
        if rest:
            self._conn.receive(CLIENT, rest)
