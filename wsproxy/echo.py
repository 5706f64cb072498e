"""A built-in echo WebSocket server, for demos, tests and benchmarks.

It echoes every message frame by frame (fragmentation kept), answers pings, and
completes the close handshake. It is wsproto on an asyncio Protocol: simple rather
than fast (bench/ has a compiled echo server for measurements).
"""

from __future__ import annotations

import asyncio
from typing import cast

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError


class EchoProtocol(asyncio.Protocol):
    """One echo connection."""

    def __init__(self) -> None:
        self._ws = WSConnection(ConnectionType.SERVER)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event)
        except RemoteProtocolError:
            self._transport.close()

    def eof_received(self) -> bool:
        return False

    def _handle(self, event: object) -> None:
        assert self._transport is not None
        out: bytes = b""
        if isinstance(event, Request):
            chosen = event.subprotocols[0] if event.subprotocols else None
            out = self._ws.send(AcceptConnection(subprotocol=chosen))
        elif isinstance(event, TextMessage | BytesMessage):
            out = self._ws.send(event)
        elif isinstance(event, Ping):
            out = self._ws.send(event.response())
        elif isinstance(event, CloseConnection):
            out = self._ws.send(event.response())
            self._transport.write(out)
            self._transport.close()
            return
        if out:
            self._transport.write(out)


async def start_echo_server(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start an echo server; its bound port is in ``server.sockets[0].getsockname()``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(EchoProtocol, host, port, reuse_address=True)
