"""Real peers for integration tests: the proxy in-process, `websockets` backends.

Everything listens on 127.0.0.1 port 0; readiness comes from the servers themselves
(anyio's task_status, websockets' bound sockets), never from a sleep.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from wsproxy.config import ProxyConfig, parse_config
from wsproxy.supervisor import ProxyContext, serve


@dataclass
class Backend:
    """A `websockets` server; ``requests`` keeps the headers of every handshake."""

    name: str
    url: str
    port: int
    requests: list[tuple[str, Headers]] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@asynccontextmanager
async def backend(
    name: str = "b1",
    handler: Callable[[ServerConnection], Any] = echo,
    *,
    ssl_context: ssl.SSLContext | None = None,
    **kwargs: Any,
) -> AsyncIterator[Backend]:
    """A backend that runs *handler* per connection (default: echo)."""
    info: Backend

    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        info.requests.append((ws.request.path, ws.request.headers))
        info.connections.append(ws)
        await handler(ws)

    kwargs.setdefault("subprotocols", None)
    async with ws_serve(handle, "127.0.0.1", 0, ssl=ssl_context, **kwargs) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        scheme = "wss" if ssl_context else "ws"
        info = Backend(name=name, url=f"{scheme}://127.0.0.1:{port}", port=port)
        yield info


def make_config(backends: list[Backend] | list[dict[str, str]], **overrides: Any) -> ProxyConfig:
    """A config for a proxy on 127.0.0.1:0 in front of *backends*."""
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "backends": [
            b if isinstance(b, dict) else {"name": b.name, "url": b.url} for b in backends
        ],
        "logging": {"level": "warning"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_config(raw)


@asynccontextmanager
async def running_proxy(config: ProxyConfig) -> AsyncIterator[ProxyContext]:
    """Run the proxy in this event loop; yields its context (controls, addresses)."""
    async with anyio.create_task_group() as tg:
        ctx: ProxyContext = await tg.start(serve, config)
        try:
            yield ctx
        finally:
            ctx.shutdown(spread=0)
            ctx.hurry()


@asynccontextmanager
async def proxy(config: ProxyConfig, *, scheme: str = "ws") -> AsyncIterator[str]:
    """Run the proxy in this event loop; yields its base URL."""
    async with running_proxy(config) as ctx:
        host, port = ctx.addresses[0]
        yield f"{scheme}://{host}:{port}"


async def raw_exchange(port: int, request: bytes, *, read_until_eof: bool = True) -> bytes:
    """Send raw bytes to 127.0.0.1:*port* and return what comes back until EOF."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        chunks = []
        with anyio.fail_after(5):
            while True:
                try:
                    chunks.append(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                if not read_until_eof and b"\r\n\r\n" in b"".join(chunks):
                    break
        return b"".join(chunks)


async def closed_by_proxy(ws: ClientConnection, within: float = 10.0) -> tuple[int, str]:
    """Wait (bounded) until the proxy closes *ws*, reading what still arrives; the code
    and reason of the close frame it sent."""
    closed: ConnectionClosed | None = None
    with anyio.fail_after(within):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            closed = exc
    assert closed is not None
    assert closed.rcvd is not None, closed
    return closed.rcvd.code, closed.rcvd.reason


def rss(pid: int) -> int:
    """The resident set size of process *pid*, in bytes (from /proc)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1)) * 1024


def upgrade_request(path: str = "/", *, extra: str = "", version: str = "13") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n"
        f"{extra}\r\n"
    ).encode()


@pytest.fixture(
    name="anyio_backend",
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)
def both_loops(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """A module that imports this as ``anyio_backend`` runs each test on both loops."""
    return request.param  # type: ignore[no-any-return]
