"""A built-in echo WebSocket server, for demos, tests and benchmarks.

It echoes every message frame by frame (fragmentation kept), answers pings, and
completes the close handshake. It is wsproto on an asyncio Protocol: simple rather
than fast (bench/ has a compiled echo server for measurements).

A plain ``GET /`` (no Upgrade) gets a small page that opens a WebSocket to the
origin it was loaded from: behind ``wsproxy demo`` (``plain_http: proxy``) a browser
tries the whole path, page and socket, through the proxy. The page uses clients/js
(the reconnecting client), which ``GET /wsproxy-client.js`` serves from the package
(``wsproxy/static/``, a link to ``clients/js/`` in the source tree, a copy in the wheel).

A socket opened with ``announce`` in its query (``/?announce=1``) gets one text
message first, ``{"backend": "<name>"}``, so that a page learns which backend its
socket is on (not the page's, which came over another connection); without it the
echo is only the echo.
"""

from __future__ import annotations

import asyncio
import json
from importlib.resources import files
from typing import cast
from urllib.parse import parse_qs, urlsplit

import h11
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

    def __init__(self, name: str = "echo") -> None:
        self._name = name
        self._ws = WSConnection(ConnectionType.SERVER)
        self._transport: asyncio.Transport | None = None
        #: Reads requests until one asks for an upgrade; None once wsproto has taken over.
        self._http: h11.Connection | None = h11.Connection(h11.SERVER)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self._http is not None:
            data = self._plain_requests(self._http, data)
            if self._http is not None:
                return
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event)
        except RemoteProtocolError:
            self._transport.close()

    def eof_received(self) -> bool:
        return False

    def _plain_requests(self, http: h11.Connection, data: bytes) -> bytes:
        """Answer plain GETs with the demo page; return the bytes of an upgrade, if one came."""
        assert self._transport is not None
        buffered = bytes(http.trailing_data[0]) + data
        http.receive_data(data)
        try:
            while True:
                event = http.next_event()
                if isinstance(event, h11.Request):
                    if any(name == b"upgrade" for name, _ in event.headers):
                        self._http = None
                        return buffered  # wsproto reads the whole upgrade again
                    self._transport.write(self._page(http, event))
                elif isinstance(event, h11.EndOfMessage):
                    http.start_next_cycle()
                    buffered = bytes(http.trailing_data[0])
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return b""
                else:
                    self._transport.close()
                    return b""
        except (h11.RemoteProtocolError, h11.LocalProtocolError):
            self._transport.close()
            return b""

    def _page(self, http: h11.Connection, request: h11.Request) -> bytes:
        target = bytes(request.target)
        body, kind = b"not found\n", "text/plain; charset=utf-8"
        if request.method in (b"GET", b"HEAD"):
            if target in (b"/", b"/?"):
                body, kind = _PAGE.replace("{backend}", self._name).encode(), _HTML
            elif target == b"/wsproxy-client.js":
                body, kind = _CLIENT_JS, _JAVASCRIPT
        found = kind != "text/plain; charset=utf-8"
        headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store")]
        response = h11.Response(status_code=200 if found else 404, headers=headers,
                                reason=b"OK" if found else b"Not Found")
        out = http.send(response) or b""
        if request.method != b"HEAD":
            out += http.send(h11.Data(data=body)) or b""
        return out + (http.send(h11.EndOfMessage()) or b"")

    def _handle(self, event: object) -> None:
        assert self._transport is not None
        out: bytes = b""
        if isinstance(event, Request):
            chosen = event.subprotocols[0] if event.subprotocols else None
            out = self._ws.send(AcceptConnection(subprotocol=chosen))
            if _announces(event.target):
                hello = json.dumps({"backend": self._name})
                out += self._ws.send(TextMessage(data=hello))
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


async def start_echo_server(
    host: str = "127.0.0.1", port: int = 0, name: str = "echo"
) -> asyncio.Server:
    """Start an echo server; its bound port is in ``server.sockets[0].getsockname()``.

    *name* is shown on its page, so that a browser behind a proxy sees which one served.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: EchoProtocol(name), host, port, reuse_address=True)


def _announces(target: str) -> bool:
    """Whether the socket's target asks the backend to name itself (``?announce``)."""
    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
    return "announce" in query


_HTML = "text/html; charset=utf-8"
_JAVASCRIPT = "text/javascript; charset=utf-8"
_PAGE = files("wsproxy").joinpath("demo_page.html").read_text(encoding="utf-8")
#: clients/js, as the package holds it (a symlink in the source tree, a file in a wheel).
_CLIENT_JS = files("wsproxy").joinpath("static/wsproxy-client.js").read_bytes()
