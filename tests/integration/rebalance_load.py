"""Load for the rebalancing tests and bench/rebalance.py: named echo backends, clients
with sequenced echo traffic that reconnect when closed, and the admin API over TCP.

- ``named_echo(name, host, port)``: a `websockets` server that echoes every message,
  and answers ``"who?"`` with ``"name:<its name>"``, so that a client knows which
  backend it is on after each (re)connect.
- ``SeqClient``: one client. It sends ``"<id> <seq>"`` every *period* (random phase)
  and checks that the echoes come back in order, each exactly once; a reader task
  receives, so that a close is timed when it arrives, not when the client next sends.
  Closed by the proxy, it notes the moment, code, reason and the backend it was on,
  waits the ``retry-after-ms`` of the reason (the reconnect hint), reconnects, asks
  ``who?`` and first resends the messages whose echo had not come back (an echo that
  reaches the proxy after its close frame cannot be delivered, RFC 6455 §5.5.1).
- ``admin_json(address, method, path)``: one admin API request on a connection of its own.

Every wait is bounded; traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake

HINT = re.compile(r"retry-after-ms=(\d+)$")
#: A client that cannot (re)connect gives up after this many tries in a row.
MAX_TRIES = 20
#: How long a client waits at the end for its last echoes.
LAST_ECHOES = 20.0


@dataclass
class EchoServer:
    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"


@asynccontextmanager
async def named_echo(name: str, host: str = "127.0.0.1", port: int = 0
                     ) -> AsyncIterator[EchoServer]:
    """An echo backend that answers ``who?`` with ``name:<name>``."""

    async def handle(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(f"name:{name}" if message == "who?" else message)
        except ConnectionClosed:
            pass

    async with ws_serve(handle, host, port, ping_interval=None, max_queue=None,
                        compression=None, backlog=4096) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        yield EchoServer(name, host, bound)


@dataclass
class Close:
    """A close the client got: when (time.monotonic), what, and on which backend."""

    at: float
    code: int | None
    reason: str
    backend: str | None


@dataclass
class SeqClient:
    id: int
    url: str
    #: The backend it is on now (from ``who?``); None while disconnected.
    backend: str | None = None
    #: Every backend it has been on, in order.
    backends: list[str] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)
    #: Sequence numbers sent (each counted once, resends not counted).
    sent: int = 0
    acked: int = 0
    #: Echoes that were not the one expected (wrong text, out of order, duplicated).
    mismatches: list[str] = field(default_factory=list)
    #: The address to connect from (None: the system's choice); bench/rebalance.py gives
    #: each client process its own 127.0.0.x, so that 9,000 clients and their reconnects
    #: do not run one source address out of ports towards the proxy's one port.
    local_host: str | None = None
    failed_connects: int = 0
    #: Why each failed connect failed.
    errors: list[str] = field(default_factory=list)
    #: Moments it (re)connected (time.monotonic), the first included.
    opens: list[float] = field(default_factory=list)
    _pending: list[str] = field(default_factory=list)
    _connected: anyio.Event = field(default_factory=anyio.Event)

    async def connected(self) -> None:
        await self._connected.wait()

    def _on_message(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode()
        if text == "who?":  # a plain echo backend (wsproxy echo-backend): no name
            self._connected.set()
            return
        if text.startswith("name:"):
            self.backend = text[5:]
            self.backends.append(self.backend)
            self._connected.set()
            return
        if self._pending and self._pending[0] == text:
            self._pending.pop(0)
            self.acked += 1
        else:
            self.mismatches.append(text)

    async def run(self, stop: anyio.Event, period: float, rng: random.Random) -> None:
        """Until *stop*: send, reconnect when closed; then wait for the last echoes."""
        tries = 0
        while True:
            try:
                extra = {"local_addr": (self.local_host, 0)} if self.local_host else {}
                ws = await connect(self.url, open_timeout=30, ping_interval=None,
                                   close_timeout=10, max_queue=None, compression=None,
                                   **extra)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.failed_connects += 1
                self.errors.append(f"{type(exc).__name__}: {exc}")
                tries += 1
                if tries >= MAX_TRIES or stop.is_set():
                    return
                await anyio.sleep(0.2 * tries)
                continue
            tries = 0
            self.opens.append(time.monotonic())
            if await self._session(ws, stop, period, rng):
                return
            close = ws.protocol.close_rcvd
            hint = HINT.search(close.reason) if close is not None else None
            if hint:
                await anyio.sleep(int(hint.group(1)) / 1000)

    async def _session(self, ws: ClientConnection, stop: anyio.Event, period: float,
                       rng: random.Random) -> bool:
        """One connection; True when the client is done (stopped, all echoes back)."""
        closed = anyio.Event()

        async def reader() -> None:
            try:
                async for message in ws:
                    self._on_message(message)
            except ConnectionClosed:
                pass
            finally:
                close = ws.protocol.close_rcvd
                self.closes.append(Close(time.monotonic(), close.code if close else None,
                                         close.reason if close else "", self.backend))
                self.backend = None
                closed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            try:
                await ws.send("who?")
                for message in list(self._pending):
                    await ws.send(message)
                delay = rng.uniform(0, period)  # a random phase: no lockstep
                while not stop.is_set():
                    with anyio.move_on_after(delay):
                        await closed.wait()
                    if closed.is_set():
                        break
                    message = f"{self.id} {self.sent}"
                    self._pending.append(message)
                    self.sent += 1
                    await ws.send(message)
                    delay = period
                if not closed.is_set():
                    with anyio.move_on_after(LAST_ECHOES):
                        while self._pending and not closed.is_set():
                            with anyio.move_on_after(0.05):
                                await closed.wait()
                if not closed.is_set():  # else closed by the proxy meanwhile: reconnect
                    await ws.close()
                    await closed.wait()
                    self.closes.pop()  # our own close, not the proxy's
                    return True
            except ConnectionClosed:
                pass
            with anyio.fail_after(30):
                await closed.wait()
        return False


async def admin_json(address: str, method: str, path: str,
                     body: dict[str, Any] | None = None) -> Any:
    """One admin API request (``host:port``); the JSON answer (any status)."""
    host, _, port = address.rpartition(":")
    payload = b"" if body is None and method == "GET" else json.dumps(body or {}).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    with anyio.fail_after(30):
        async with await anyio.connect_tcp(host.strip("[]"), int(port)) as stream:
            await stream.send(head.encode() + payload)
            chunks = []
            try:
                while True:
                    chunks.append(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    raw = b"".join(chunks)
    _, _, content = raw.partition(b"\r\n\r\n")
    return json.loads(content)


def max_in_window(times: list[float], window: float) -> int:
    """The most of *times* in any half-open window of *window* seconds."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(ordered):
        while j < len(ordered) and ordered[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best
