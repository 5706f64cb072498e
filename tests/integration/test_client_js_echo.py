"""The demo's echo backend and clients/js: it serves the client, and names itself on request.

- ``GET /wsproxy-client.js`` answers clients/js byte for byte (the package's
  ``wsproxy/static/`` copy, a link in the source tree), as JavaScript; ``HEAD`` the
  same head without the body.
- A socket opened with ``?announce`` gets ``{"backend": NAME}`` as its first message,
  then the echo; without it the echo is only the echo (the first message back is the
  first message sent), and the page's 101 is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import anyio
import pytest
from websockets.asyncio.client import connect

from wsproxy.echo import start_echo_server

pytestmark = pytest.mark.anyio

CLIENT_JS: Final = Path(__file__).resolve().parents[2] / "clients" / "js" / "wsproxy-client.js"
#: Bound on waits for what normally takes milliseconds.
WAIT: Final = 10.0


@asynccontextmanager
async def echo_server(name: str) -> AsyncIterator[int]:
    server = await start_echo_server(name=name)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def http(port: int, request: bytes) -> bytes:
    """One request on its own connection; the whole answer (Content-Length framed)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        answer = b""
        with anyio.fail_after(WAIT):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive()
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            while len(body) < length and not request.startswith(b"HEAD"):
                body += await stream.receive()
        return head + b"\r\n\r\n" + body


async def test_the_echo_backend_serves_clients_js() -> None:
    expected = CLIENT_JS.read_bytes()
    async with echo_server("e1") as port:
        answer = await http(port, b"GET /wsproxy-client.js HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Type: text/javascript; charset=utf-8" in head
        assert body == expected
        assert b"export class WsproxyClient" in body
        head_only = await http(port, b"HEAD /wsproxy-client.js HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head_only.endswith(b"\r\n\r\n")
        assert f"Content-Length: {len(expected)}".encode() in head_only
        missing = await http(port, b"GET /other.js HTTP/1.1\r\nHost: x\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404 ")
        page = await http(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'import { WsproxyClient } from "/wsproxy-client.js";' in page
        assert b'<code id="page-backend">e1</code>' in page


async def test_a_socket_that_asks_gets_the_backends_name_first() -> None:
    async with echo_server("echo-7") as port:
        with anyio.fail_after(WAIT):
            async with connect(f"ws://127.0.0.1:{port}/?announce=1") as ws:
                assert json.loads(await ws.recv()) == {"backend": "echo-7"}
                await ws.send("hello")
                assert await ws.recv() == "hello"
            async with connect(f"ws://127.0.0.1:{port}/x?a=1&announce") as ws:
                assert json.loads(await ws.recv()) == {"backend": "echo-7"}


async def test_without_asking_the_echo_is_only_the_echo() -> None:
    async with echo_server("echo-7") as port:
        with anyio.fail_after(WAIT):
            for target in ("/", "/?announced=1", "/announce"):
                async with connect(f"ws://127.0.0.1:{port}{target}") as ws:
                    await ws.send(b"\x00\x01")
                    assert await ws.recv() == b"\x00\x01"
                    await ws.send("text")
                    assert await ws.recv() == "text"
