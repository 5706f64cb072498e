"""The front door: the listener's protocols, and WebSocket or plain HTTP, both ways.

Every accepted client starts as a WebSocket ``Connection`` (a ``ClientProtocol``):
the connection limits, the handshake timer, the metrics and a shutdown count it from
its first byte, whatever it turns out to want. Its first request is parsed once, by
the Session's Upgrade (wsproxy.core.upgrade), and that parse decides:

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

The listener's protocol is the client's Connection itself (``ClientProtocol``): its
``data_received`` is the first call of every client read until the session is OPEN;
then a compiled relay protocol stands in front of it (wsproxy.io.direct) and hands
it only the reads that are not whole data messages.
"""

from __future__ import annotations

import asyncio
import socket
from functools import partial
from typing import TYPE_CHECKING

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
        kind = ProxiedClientProtocol if self.proxy_protocol else ClientProtocol
        transport.set_protocol(kind(self, transport, deadline=deadline, settings=settings))

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
        conn = ClientProtocol(self, transport, settings=settings)
        if peer_ip != conn.peer_ip:  # from a PROXY header
            conn.set_peer(peer_ip)
        transport.set_protocol(conn)
        conn.receive_parsed(parsed)


class ClientProtocol(Connection):
    """The listener's protocol: the client's Connection itself (one object, one call
    fewer a callback than a protocol that passes each on)."""

    # Connection's own __init__: ClientProtocol(door, transport=None, deadline=None,
    # settings=None); *transport* given when the client comes from elsewhere (TLS, a
    # hand-back), else the listener's connection_made() gives it.
    __slots__ = ()


class HandedOverProtocol(ClientProtocol):
    """A client handed over by a sibling worker (FrontDoor.handed_over): its
    Connection reads *first*, what the sibling read, before anything else."""

    __slots__ = ("_first", "_handed_peer_ip")

    def __init__(self, door: FrontDoor, peer_ip: str, first: bytes) -> None:
        self._handed_peer_ip = peer_ip
        self._first = first
        super().__init__(door)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._handed_peer_ip != self.peer_ip:  # it came with a PROXY header
            self.set_peer(self._handed_peer_ip)
        first, self._first = self._first, b""
        self.receive(CLIENT, first)


class ProxiedClientProtocol(ClientProtocol):
    """For ``listen.proxy_protocol``: a PROXY v1/v2 header comes before the request.

    Its client address replaces the socket's peer (a load balancer's) for the limits,
    the logs and X-Forwarded-For. A connection without a valid header is dropped.
    """

    __slots__ = ("_parser",)

    def __init__(
        self, door: FrontDoor, transport: asyncio.Transport | None = None, *,
        deadline: float | None = None, settings: ConnectionSettings | None = None,
    ) -> None:
        self._parser: ProxyHeaderParser | None = ProxyHeaderParser()
        super().__init__(door, transport, deadline, settings)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            self.receive(CLIENT, data)
            return
        try:
            parsed = self._parser.feed(data)
        except ProxyProtocolError as exc:
            self._parser = None
            self.refuse("proxy_protocol", str(exc))
            return
        if parsed is None:
            return
        header, rest = parsed
        self._parser = None
        if header.client_ip is not None:
            self.set_peer(header.client_ip)
        if rest:
            self.receive(CLIENT, rest)
