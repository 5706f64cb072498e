"""A slow reader slows its writer, and the proxy's memory stays bounded (SPEC.md,
"Relaying"): a fast sender on one side, a peer that never reads on the other.

The proxy runs as a subprocess so that its resident memory can be read from
``/proc/PID/status``. The peer that never reads speaks the upgrade by hand on a raw
socket and then leaves its socket alone: the bytes in flight can only pile up in the
kernel's socket buffers (not the proxy's RSS) or in the proxy itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketStream
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from tests.integration.peers import backend, rss, upgrade_request
from tests.integration.proxy_process import EXIT_TIMEOUT, Running, proxy_process

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(90),  # a few seconds each; 48-256 MiB moved, slower when loaded
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status"),
]

MIB = 1 << 20
#: The most a sender may push before it must have been stopped.
TOTAL = 256 * MIB
#: A 1 MiB send that does not complete within this time has been stalled.
STALL = 2.0
#: How much the proxy's resident memory may grow while the pipe is full.
MAX_RSS_GROWTH = 32 * MIB
#: Bound of the whole flood (256 MiB on loopback takes about a second).
FLOOD_TIMEOUT = 20.0
#: drain.timeout of the proxy: what is still open then is closed at once.
DRAIN_TIMEOUT = 0.5
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Flood:
    """What one sender managed before it was stalled."""

    sent: int = 0
    stalled: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)


@asynccontextmanager
async def slow_proxy(tmp_path: Path, backend_url: str) -> AsyncIterator[Running]:
    """``wsproxy run`` in front of *backend_url*, killed by PID if it outlives the block."""
    config = (
        "listen: {host: 127.0.0.1, port: 0}\n"
        "admin: {host: 127.0.0.1, port: 0}\n"
        f'backends: [{{name: slow, url: "{backend_url}"}}]\n'
        "limits: {max_message_size: 4MiB}\n"
        f"drain: {{spread: 0s, timeout: {DRAIN_TIMEOUT}s}}\n"
        "logging: {level: info, format: json}\n"
    )
    async with proxy_process(config, tmp_path) as proxy:
        yield proxy


async def read_head(stream: ByteStream) -> bytes:
    """Read up to the end of an HTTP head (and perhaps a little more)."""
    head = b""
    with anyio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive()
    return head


@dataclass
class DeafBackend:
    url: str
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def hang_up(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


@asynccontextmanager
async def deaf_backend() -> AsyncIterator[DeafBackend]:
    """A backend that answers the upgrade by hand and then never reads again.

    asyncio streams, because their reader stops reading the socket once its buffer
    is full (anyio's accepted sockets keep reading when data came before the first
    receive(), which would make this backend an unbounded reader).
    """

    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deaf.writers.append(writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)\r$", head)
        assert key is not None, head
        accept = base64.b64encode(hashlib.sha1(key.group(1) + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        # Returns without reading: the connection stays open until hang_up().

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    deaf = DeafBackend(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        yield deaf
    finally:
        deaf.hang_up()
        server.close()
        await server.wait_closed()


def flooding_backend(flood: Flood, stall: float) -> Callable[[ServerConnection], Any]:
    """A backend handler that sends 1 MiB messages until a send takes *stall* seconds."""
    message = os.urandom(MIB)

    async def send_until_stalled(ws: ServerConnection) -> None:
        try:
            while flood.sent < TOTAL:
                try:
                    async with asyncio.timeout(stall):
                        await ws.send(message)
                except TimeoutError:
                    flood.stalled = True
                    break
                flood.sent += MIB
        finally:
            flood.done.set()
        await ws.wait_closed()

    return send_until_stalled


async def deaf_client(port: int) -> SocketStream:
    """A client that does the upgrade and then never reads (anyio pauses its socket)."""
    client = await anyio.connect_tcp("127.0.0.1", port)
    await client.send(upgrade_request())
    assert (await read_head(client)).startswith(b"HTTP/1.1 101 ")
    return client


def assert_bounded(flood: Flood, before: int, after: int) -> None:
    growth = after - before
    detail = (f"sent {flood.sent / MIB:.0f} MiB, proxy RSS {before / MIB:.1f} -> "
              f"{after / MIB:.1f} MiB")
    assert flood.stalled, f"the sender was never stopped: {detail}"
    assert flood.sent < TOTAL, detail
    assert growth < MAX_RSS_GROWTH, detail


async def test_slow_backend_stalls_a_fast_client(tmp_path: Path) -> None:
    message = os.urandom(MIB)
    flood = Flood()
    async with (
        deaf_backend() as deaf,
        slow_proxy(tmp_path, deaf.url) as proxy,
        connect(f"ws://127.0.0.1:{proxy.port}/", compression=None) as ws,
    ):
        before = rss(proxy.pid)
        with anyio.fail_after(FLOOD_TIMEOUT):
            while flood.sent < TOTAL:
                with anyio.move_on_after(STALL):
                    await ws.send(message)
                    flood.sent += MIB
                    continue
                flood.stalled = True
                break
        after = rss(proxy.pid)
        ws.transport.abort()  # its close frame cannot get through either
        deaf.hang_up()
        await proxy.terminate()
    assert_bounded(flood, before, after)


async def test_slow_client_stalls_a_fast_backend(tmp_path: Path) -> None:
    flood = Flood()
    handler = flooding_backend(flood, STALL)
    async with (
        backend(handler=handler, compression=None, close_timeout=1) as b,
        slow_proxy(tmp_path, b.url) as proxy,
    ):
        async with await deaf_client(proxy.port):
            before = rss(proxy.pid)
            with anyio.fail_after(FLOOD_TIMEOUT):
                await flood.done.wait()
            after = rss(proxy.pid)
        await proxy.terminate()
    assert_bounded(flood, before, after)


async def test_sigterm_exits_after_drain_timeout_despite_a_client_that_does_not_read(
    tmp_path: Path,
) -> None:
    flood = Flood()
    handler = flooding_backend(flood, stall=0.5)  # only to fill the pipe
    async with (
        backend(handler=handler, compression=None, close_timeout=1) as b,
        slow_proxy(tmp_path, b.url) as proxy,
        await deaf_client(proxy.port),
    ):
        with anyio.fail_after(FLOOD_TIMEOUT):
            await flood.done.wait()
        # drain.timeout, then a generous bound for the exit on a loaded machine, still
        # far short of what would end it otherwise (the default 20 s heartbeat interval).
        proxy.signal(signal.SIGTERM)
        with anyio.move_on_after(DRAIN_TIMEOUT + EXIT_TIMEOUT):
            await proxy.process.wait()
        assert proxy.process.returncode == 0, "still running after drain.timeout"
