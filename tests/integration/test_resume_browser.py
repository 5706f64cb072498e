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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.integration import browser
from tests.integration.peers import backend, make_config, running_proxy
from tests.integration.tcp_cuts import TcpRelay
from tests.integration.test_resume import wait_mid_message
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

SCRIPT: Final = Path(__file__).with_name("resume_browser.mjs")
CUT_SCRIPT: Final = Path(__file__).with_name("resume_cut_browser.mjs")
MODULES: Final = Path(__file__).resolve().parents[2] / "clients" / "js"
COUNT: Final = 2000


@dataclass
class Stage:
    """The proxy (resume on) in front of a backend, the relay the page goes through,
    and what the backend saw (``staged``)."""

    #: Each message the backend received, what it answers (the test's).
    on_message: Callable[[ServerConnection, str], Awaitable[None]]
    #: Run beside the backend's reading of each connection (cancelled at its end).
    beside: Callable[[ServerConnection], Awaitable[None]] | None = None
    relay: TcpRelay | None = None
    ctx: ProxyContext | None = None
    #: The scripts' --page, --module-dir and --ws.
    args: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    connections: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        task = asyncio.create_task(self.beside(ws)) if self.beside is not None else None
        try:
            async for message in ws:
                assert isinstance(message, str)
                self.received.append(message)
                await self.on_message(ws, message)
        except ConnectionClosed:
            pass
        self.closes.append(ws.close_code)
        if task is not None:
            task.cancel()


@asynccontextmanager
async def staged(stage: Stage) -> AsyncIterator[Stage]:
    async with (
        backend(handler=stage.handler) as b,
        running_proxy(make_config([b], resume={"enabled": True})) as ctx,
    ):
        host, port = ctx.addresses[0]
        stage.relay, stage.ctx = TcpRelay(port), ctx
        relay_port = await stage.relay.start()
        stage.args = [f"--page=http://{host}:{port}/healthz", f"--module-dir={MODULES}",
                      f"--ws=ws://127.0.0.1:{relay_port}/"]
        try:
            yield stage
        finally:
            await stage.relay.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("api", ["session", "client"])
async def test_the_js_client_resumes_in_a_browser_exactly_once_in_order_both_ways(api: str):
    browser.skip_unless_available()

    async def stream(ws: ServerConnection) -> None:
        for i in range(1, COUNT + 1):
            await ws.send(f"down-{i}")
            if i % 10 == 0:
                await asyncio.sleep(0.01)

    async def on_message(ws: ServerConnection, message: str) -> None:
        if len(stage.received) in (300, 1200):
            assert stage.relay is not None
            stage.relay.cut()
        if len(stage.received) == COUNT:
            stage.done.set()

    async with staged(Stage(on_message, beside=stream)) as stage:
        result = await browser.run_script(
            SCRIPT, [*stage.args, f"--api={api}", f"--count={COUNT}"])
        with anyio.fail_after(30):
            await stage.done.wait()
        assert result["page_errors"] == []
        assert result["got"] == [f"down-{i}" for i in range(1, COUNT + 1)]
        assert stage.received == [f"up-{i}" for i in range(1, COUNT + 1)]
        assert stage.connections == 1
        assert stage.closes in ([], [1000])  # only the page's own close, at the end
        kinds = [e["type"] for e in result["events"]]
        assert kinds == ["session", "resumed", "resumed", "close"], result["events"]


@pytest.mark.timeout(120)
async def test_the_js_client_sends_again_a_message_cut_in_its_middle():
    """The TCP connection under the page dies 8 kB into a 20 kB message: the backend
    gets the message once and whole after the resume, on its one connection."""
    browser.skip_unless_available()
    big = "big-" + "x" * 20_000

    async def on_message(ws: ServerConnection, message: str) -> None:
        if message == "one":
            relay, ctx = stage.relay, stage.ctx
            assert relay is not None
            assert ctx is not None
            relay.passing = 8_000  # the frame's header and the start of its payload
            await ws.send("send-big")
            await wait_mid_message(ctx)
            relay.cut()
            relay.passing = None
        elif message == big:
            await ws.send("send-after")
        elif message == "after":
            await ws.send("done")
            stage.done.set()

    async with staged(Stage(on_message)) as stage:
        result = await browser.run_script(CUT_SCRIPT, [*stage.args, f"--big={len(big) - 4}"])
        with anyio.fail_after(30):
            await stage.done.wait()
        assert result["page_errors"] == []
        assert stage.received == ["one", big, "after"]
        assert stage.connections == 1
        assert stage.closes in ([], [1000])  # only the page's own close, at the end
        kinds = [e["type"] for e in result["events"]]
        assert kinds == ["session", "resumed", "close"], result["events"]
