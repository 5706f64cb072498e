"""The client recipes of clients/README.md, each run as it stands against a running wsproxy.

Each recipe is a fenced block in clients/README.md after a ``<!-- recipe: NAME -->`` line;
the tests extract it from there (so the README's code is the tested code) and run it:

- the JavaScript ones (graphql-ws, socket.io-client, phoenix, @microsoft/signalr) as a
  module, in Node (``recipe_clients.mjs``) and in headless Chromium (``recipe_browser.mjs``,
  the libraries' browser builds), watched through the library's own events
  (``recipe_watch.mjs``), against two ``recipe_servers.mjs`` backends of the same protocol
  (graphql-ws and socket.io are their real servers; Phoenix and SignalR stand-ins that
  speak enough of the protocol for the real client);
- the python-websockets one imported as a module, against two ``websockets`` backends.

The wsproxy runs in-process (peers.py) with its reconnect hint fixed at ``HINT_MS`` (the
drain's random hint, made one value, so that "not at once" is something to check). Each
test: the client opens on one backend; that backend is drained (``POST
/backends/NAME/drain`` with a short spread); the client gets 1012 with
``retry-after-ms=HINT_MS`` and must open on the other backend, no sooner than the hint
after its close. Then its connection is revoked (``DELETE /connections/ID``: 1008) and the
library must give up (its own terminal signal), and no new upgrade may reach a backend in
the ``QUIET`` seconds after (longer than any of these libraries' default first delay but
graphql-ws's, which does not retry a 1008 at all).

The npm modules come from ``$WSPROXY_NODE_DIR`` (``.ci/run`` installs them pinned and
sets ``WSPROXY_REQUIRE_NODE=1``): without them the Node tests skip, saying what is
missing; with ``WSPROXY_REQUIRE_NODE`` set they fail. The Chromium ones also need what
tests/integration/browser.py says (and fail without it under ``WSPROXY_REQUIRE_BROWSER``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import re
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

import wsproxy.control.drain
from tests.integration import browser
from tests.integration.peers import backend, make_config, running_proxy
from tests.integration.proxy_process import Running, started
from tests.integration.test_admin import admin
from tests.integration.test_frameworks_node import NODE_DIR, node_env, skip_unless_available
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

HERE: Final = Path(__file__).parent
README: Final = HERE.parent.parent / "clients" / "README.md"
#: The reconnect hint every close of the proxy carries in these tests (in [0, 1000]).
HINT_MS: Final = 800
#: Seconds during which a client told to stay closed must not come back.
QUIET: Final = 2.5
#: Bound on each wait for the client (connect, close, reconnect).
WAIT: Final = 20.0
#: Bound on the wait for the first open, which includes starting node (and Chromium).
START: Final = 60.0
RECIPE: Final = re.compile(r"<!-- recipe: (\S+) -->\n```(\w+)\n(.*?)```", re.DOTALL)
#: The npm modules each JavaScript recipe and its backend need.
MODULES: Final = {
    "graphql-ws": ("graphql-ws", "graphql", "ws"),
    "socket.io": ("socket.io", "socket.io-client"),
    "phoenix": ("phoenix", "ws"),
    "signalr": ("@microsoft/signalr", "ws"),
}


def recipes() -> dict[str, tuple[str, str]]:
    """Every recipe block of clients/README.md: name -> (language, code)."""
    return {m[1]: (m[2], m[3]) for m in RECIPE.finditer(README.read_text(encoding="utf-8"))}


def test_every_recipe_is_here() -> None:
    """The README holds one block for each library, in the language its test runs."""
    assert {n: lang for n, (lang, _) in recipes().items()} == {
        "graphql-ws": "js", "socket.io": "js", "phoenix": "js", "signalr": "js",
        "python-websockets": "python"}


class FixedHint(random.Random):
    """The drains' random source with its hint fixed: ``randint`` is only the hint's."""

    def randint(self, a: int, b: int) -> int:
        assert a <= HINT_MS <= b
        return HINT_MS


@pytest.fixture(autouse=True)
def fixed_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsproxy.control.drain, "random", FixedHint())


def revealed_hint(reason: str) -> int:
    match = re.search(r"retry-after-ms=(\d+)", reason)
    assert match is not None, reason
    return int(match[1])


async def only_connection(ctx: ProxyContext, backend_name: str) -> str:
    """The id of the one open connection to *backend_name*."""
    answer = await admin(ctx, "GET", "/connections")
    ids = [c["id"] for c in answer.json()["connections"] if c["backend"] == backend_name]
    assert len(ids) == 1, answer.json()
    return str(ids[0])


# JavaScript recipes …

@pytest.mark.parametrize("where", ["node", "chromium"])
@pytest.mark.parametrize("kind", ["graphql-ws", "socket.io", "phoenix", "signalr"])
async def test_js_recipe_reconnects_after_the_hint_and_stops_on_1008(
        kind: str, where: str, tmp_path: Path) -> None:
    skip_unless_available(MODULES[kind], kind)
    if where == "chromium":
        browser.skip_unless_available()
    _, code = recipes()[kind]
    # The block as a module beside a node_modules of its own, so that its bare imports
    # ("graphql-ws", "ws", ...) resolve as in an application.
    module = tmp_path / "recipe.mjs"
    module.write_text(code, encoding="utf-8")
    (tmp_path / "node_modules").symlink_to(NODE_DIR / "node_modules")

    async with AsyncExitStack() as stack:
        servers: dict[str, Running] = {}
        for name in ("a", "b"):
            servers[name] = await stack.enter_async_context(started(
                str(HERE / "recipe_servers.mjs"), kind, name, command=("node",),
                env=node_env()))
        ports = {n: (await s.wait_for_event("listening"))["port"] for n, s in servers.items()}
        config = make_config([{"name": n, "url": f"ws://127.0.0.1:{p}"}
                              for n, p in ports.items()])
        ctx = await stack.enter_async_context(running_proxy(config))
        host, port = ctx.addresses[0]
        scheme = "http" if kind in ("socket.io", "signalr") else "ws"
        driver = "recipe_clients.mjs" if where == "node" else "recipe_browser.mjs"
        client = await stack.enter_async_context(started(
            str(HERE / driver), kind, str(module), f"{scheme}://{host}:{port}",
            command=("node",), env={**node_env(), "WSPROXY_CHROMIUM": browser.CHROMIUM,
                                    "WSPROXY_PLAYWRIGHT_DIR": str(browser.PLAYWRIGHT_DIR)}))

        first = await client.wait_for_event("open", START)
        on = first["backend"]
        other = "b" if on == "a" else "a"
        answer = await admin(ctx, "POST", f"/backends/{on}/drain", json_body={"spread": "0.2s"})
        assert answer.status == 200, answer
        await client.wait_for(lambda: len(client.events("open")) >= 2, "the reconnect", WAIT)
        close = client.events("close")[0]
        again = client.events("open")[1]
        assert close["code"] == 1012, close
        hint = revealed_hint(close["reason"])
        assert hint == HINT_MS
        assert again["backend"] == other, client.records
        # Not before the hint (nor at once, as these libraries do by default), and after a
        # wait of the hint's length, not of a back-off that happened to be as long.
        assert again["t"] - close["t"] >= hint, (close, again)
        # (Since the first open: Phoenix's onClose, where the recipe sets its timer, runs
        # before the one that reports the close.)
        timers = [e["ms"] for e in client.events("timer") if first["t"] <= e["t"] <= again["t"]]
        assert hint in timers, timers
        assert client.events("terminal") == []

        # Revoked: 1008, and the client stays away.
        conn_id = await only_connection(ctx, other)
        assert (await admin(ctx, "DELETE", f"/connections/{conn_id}")).status == 200
        await client.wait_for_event("terminal", WAIT)
        assert [c["code"] for c in client.events("close")] == [1012, 1008], client.records
        upgrades = {n: s.count("connect") for n, s in servers.items()}
        await anyio.sleep(QUIET)  # a span with nothing in it: no event to wait for
        assert len(client.events("open")) == 2, client.records
        assert {n: s.count("connect") for n, s in servers.items()} == upgrades
        assert (await admin(ctx, "GET", "/connections")).json()["connections"] == []
        assert client.events("page_error") == []


# The python-websockets recipe …

def python_recipe(tmp_path: Path) -> Any:
    """The README's python-websockets block, imported as a module."""
    _, code = recipes()["python-websockets"]
    path = tmp_path / "recipe_websockets.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("recipe_websockets", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop("recipe_websockets", None)
    spec.loader.exec_module(module)
    return module


def naming_echo(name: str) -> Callable[[ServerConnection], Awaitable[None]]:
    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the proxy's 1012: the test's own doing
            async for message in ws:
                await ws.send(name if message == "who" else message)

    return handler


async def test_python_websockets_recipe_reconnects_after_the_hint_and_stops_on_1008(
        tmp_path: Path) -> None:
    recipe = python_recipe(tmp_path)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(seconds)

    recipe.asyncio = SimpleNamespace(sleep=sleep)  # the recipe's only use of asyncio
    events: list[dict[str, Any]] = []
    changed = anyio.Event()

    def record(**event: Any) -> None:
        nonlocal changed
        events.append({**event, "t": anyio.current_time()})
        changed.set()
        changed = anyio.Event()

    async def until(predicate: Callable[[], bool], what: str) -> None:
        with anyio.fail_after(WAIT):
            while not predicate():
                await changed.wait()

    async def handle(ws: ClientConnection) -> None:
        """The application: who am I talking to, then echoes until the close."""
        await ws.send("who")
        record(event="open", backend=await ws.recv())
        try:
            async for _ in ws:
                pass
        finally:
            record(event="close", code=ws.close_code, reason=ws.close_reason)

    outcome: list[BaseException] = []

    async def client(url: str) -> None:
        try:
            await recipe.run(url, handle)
        except ConnectionClosed as exc:
            outcome.append(exc)
            record(event="terminal")

    async with (backend("a", naming_echo("a")) as a, backend("b", naming_echo("b")) as b,
                running_proxy(make_config([a, b])) as ctx, anyio.create_task_group() as tg):
        host, port = ctx.addresses[0]
        tg.start_soon(client, f"ws://{host}:{port}")
        await until(lambda: any(e["event"] == "open" for e in events), "open")
        on = events[0]["backend"]
        other = "b" if on == "a" else "a"
        answer = await admin(ctx, "POST", f"/backends/{on}/drain", json_body={"spread": "0.2s"})
        assert answer.status == 200, answer
        await until(lambda: sum(e["event"] == "open" for e in events) >= 2, "the reconnect")
        opens = [e for e in events if e["event"] == "open"]
        close = next(e for e in events if e["event"] == "close")
        assert close["code"] == 1012, events
        assert revealed_hint(close["reason"]) == HINT_MS
        assert opens[1]["backend"] == other, events
        assert (opens[1]["t"] - close["t"]) * 1000 >= HINT_MS, events
        assert HINT_MS / 1000 in slept, slept  # the hint's wait, not a back-off as long

        conn_id = await only_connection(ctx, other)
        assert (await admin(ctx, "DELETE", f"/connections/{conn_id}")).status == 200
        await until(lambda: bool(outcome), "the recipe's end")
        closed = outcome[0]
        assert isinstance(closed, ConnectionClosed)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008
        upgrades = len(a.connections) + len(b.connections)
        await anyio.sleep(QUIET)  # a span with nothing in it: no event to wait for
        assert sum(e["event"] == "open" for e in events) == 2, events
        assert len(a.connections) + len(b.connections) == upgrades
