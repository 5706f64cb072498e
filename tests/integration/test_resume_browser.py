"""clients/js's resumable sessions in headless Chromium, through a TCP relay the test cuts:
``ResumableSession`` and ``WsproxyClient`` with ``{resume: true}`` (the first is a thin
wrapper over the second).

The browser connects to a relay of this process's, which forwards to the proxy (in
process, ``resume.enabled``); the backend streams "down-1".."down-N" at about 1,000 a
second while the page sends "up-1".."up-N". When the backend has had 300 and 1,200
of the page's messages, the relay resets every connection it carries (SO_LINGER 0):
the page sees 1006, resumes through the relay, and in the end both sides have every
message once and in order, and the backend saw one connection and no close.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Final

import anyio
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.integration import browser
from tests.integration.peers import backend, make_config, running_proxy

pytestmark = pytest.mark.anyio

SCRIPT: Final = Path(__file__).with_name("resume_browser.mjs")
MODULES: Final = Path(__file__).resolve().parents[2] / "clients" / "js"
COUNT: Final = 2000


class Relay:
    """A TCP relay to *port* whose connections can all be reset at once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.pairs.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def cut(self) -> None:
        """Reset both sides of every connection: an RST each way, no close frame."""
        for pair in self.pairs:
            for writer in pair:
                if writer.transport.is_closing():
                    continue
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self.pairs.clear()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("api", ["session", "client"])
async def test_the_js_client_resumes_in_a_browser_exactly_once_in_order_both_ways(api: str):
    browser.skip_unless_available()
    received: list[str] = []
    closes: list[int | None] = []
    connections = 0
    relay: Relay
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1

        async def stream() -> None:
            for i in range(1, COUNT + 1):
                await ws.send(f"down-{i}")
                if i % 10 == 0:
                    await asyncio.sleep(0.01)

        sending = asyncio.create_task(stream())
        try:
            async for message in ws:
                assert isinstance(message, str)
                received.append(message)
                if len(received) in (300, 1200):
                    relay.cut()
                if len(received) == COUNT:
                    done.set()
        except ConnectionClosed:
            pass
        closes.append(ws.close_code)
        sending.cancel()

    async with (
        backend(handler=handler) as b,
        running_proxy(make_config([b], resume={"enabled": True})) as ctx,
    ):
        host, port = ctx.addresses[0]
        relay = Relay(port)
        relay_port = await relay.start()
        result = await browser.run_script(SCRIPT, [
            f"--page=http://{host}:{port}/healthz",
            f"--module-dir={MODULES}",
            f"--api={api}",
            f"--ws=ws://127.0.0.1:{relay_port}/",
            f"--count={COUNT}",
        ])
        with anyio.fail_after(30):
            await done.wait()
        assert result["page_errors"] == []
        assert result["got"] == [f"down-{i}" for i in range(1, COUNT + 1)]
        assert received == [f"up-{i}" for i in range(1, COUNT + 1)]
        assert connections == 1
        assert closes in ([], [1000])  # only the page's own close, at the end
        kinds = [e["type"] for e in result["events"]]
        assert kinds == ["session", "resumed", "resumed", "close"], result["events"]
        await relay.stop()
