"""clients/python (``wsproxy_client``) against a running wsproxy: drains, revocation,
token expiry, admission refusals and close().

The drain runs against ``wsproxy run`` as a subprocess; the others run the proxy in
this event loop (peers.py). Every test runs on asyncio's loop and on uvloop. The
client's events are stamped with the loop's clock as they happen (``on_event`` is
called synchronously), so the waits are measured from the client's own close to its
own next connect: lower bounds only.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from tests.integration.peers import backend, make_config, running_proxy
from tests.integration.peers import both_loops as anyio_backend  # noqa: F401
from tests.integration.proxy_process import proxy_process
from wsproxy_client import (
    Backoff,
    ClientClosed,
    ClientState,
    Closed,
    Event,
    Opened,
    Reconnecting,
    Terminated,
    WsproxyClient,
)

pytestmark = pytest.mark.anyio

SECRET = "a-test-secret-of-at-least-32-bytes!!"
#: Bound on waits for what normally takes milliseconds.
WAIT = 10.0
#: What a lower bound on a wait allows for the clocks: uvloop's timers and time() are
#: whole milliseconds, and two float times subtracted round.
TICK = 0.002


def tagging_echo(name: str) -> Callable[[ServerConnection], Any]:
    """An echo backend that answers "who" with its name."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(name if message == "who" else message)

    return handler


def admin_post(admin: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        admin + path, method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


async def post(admin: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(admin_post, admin, path, body)


def token(subject: str, lifetime: int) -> str:
    """A JWT valid for at least *lifetime* seconds from now."""
    now = time.time()
    return jwt.encode({"sub": subject, "iat": int(now), "exp": math.ceil(now) + lifetime},
                      SECRET, "HS256")


def jwt_auth(**extra: Any) -> dict[str, Any]:
    return {"type": "jwt", "close_on_expiry": True,
            "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway": 0}, **extra}


@dataclass
class Log:
    """The client's events with the loop time each happened at."""

    events: list[tuple[float, Event]] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))

    def of(self, kind: type[Any]) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


async def next_event(events: AsyncIterator[Event], kind: type[Any]) -> Any:
    """The next event of *kind* (bounded), skipping others."""
    with anyio.fail_after(WAIT):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


async def drain_messages(client: WsproxyClient) -> None:
    """Iterate over the client's messages, expecting none."""
    async for message in client:
        raise AssertionError(f"unexpected message {message!r}")


async def echo(client: WsproxyClient, message: str) -> str:
    await client.send(message)
    with anyio.fail_after(WAIT):
        return str(await client.recv())


# A backend drain, through `wsproxy run` …


@asynccontextmanager
async def drained_setup(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Two tagging echo backends behind a ``wsproxy run``: its URL and admin URL."""
    async with (
        backend("b1", tagging_echo("b1")) as b1,
        backend("b2", tagging_echo("b2")) as b2,
    ):
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "backends": [{"name": "b1", "url": b1.url}, {"name": "b2", "url": b2.url}],
            "balance": "round_robin",
            "logging": {"level": "info"},
        }
        async with proxy_process(config, tmp_path) as proxy:
            listening = await proxy.wait_for_event("admin.listening")
            yield proxy.url, f"http://{listening['address']}"


async def test_a_backend_drain_reconnects_after_the_hint_and_delivers_the_queue(
        tmp_path: Path) -> None:
    log = Log()
    connects: list[float] = []
    gate = asyncio.Event()

    async def no_token() -> None:
        # The reconnect waits here until the test has sent into the gap.
        connects.append(asyncio.get_running_loop().time())
        if len(connects) > 1:
            await gate.wait()

    async with drained_setup(tmp_path) as (url, admin), WsproxyClient(
            url + "/", token=no_token, on_event=log) as client:
        events = client.events()
        await next_event(events, Opened)
        first = await echo(client, "who")
        answer = await post(admin, f"/backends/{first}/drain", {"spread": "0s"})
        assert answer["draining"] is True

        closed: Closed = await next_event(events, Closed)
        assert closed.code == 1012
        assert closed.reason.startswith("backend draining; ")
        hint_ms = int(closed.reason.rsplit("=", 1)[1])
        assert (closed.retry_in, closed.hinted, closed.terminal) == (hint_ms / 1000, True, False)
        reconnecting: Reconnecting = await next_event(events, Reconnecting)
        assert (reconnecting.attempt, reconnecting.hinted) == (1, True)
        assert reconnecting.delay == hint_ms / 1000

        # Sent while no connection is open: queued, in order.
        for i in range(3):
            await client.send(f"gap {i}")
        assert client.state is ClientState.CONNECTING
        assert client.queued == (3, 15)
        gate.set()

        opened: Opened = await next_event(events, Opened)
        assert opened.flushed == 3
        assert client.queued == (0, 0)
        with anyio.fail_after(WAIT):
            assert [await client.recv() for _ in range(3)] == ["gap 0", "gap 1", "gap 2"]
        assert await echo(client, "who") != first  # the other backend: it keeps echoing
        assert await echo(client, "after") == "after"

    [(closed_at, _)] = [(t, e) for t, e in log.of(Closed) if e.code == 1012]
    assert connects[1] - closed_at >= hint_ms / 1000 - TICK  # not before the hint
    assert isinstance(log.events[-1][1], Terminated)
    assert log.events[-1][1].requested


# Revocation, token expiry and the token's ways in (the proxy in this loop) …


async def test_a_1008_revocation_is_terminal() -> None:
    log = Log()
    asked = 0

    async def get_token() -> str:
        nonlocal asked
        asked += 1
        return token("mallory", 600)

    async with backend() as b, running_proxy(make_config([b], auth=jwt_auth())) as ctx:
        assert ctx.admin_address is not None
        admin = f"http://127.0.0.1:{ctx.admin_address[1]}"
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        async with WsproxyClient(url, token=get_token, on_event=log) as client:
            assert await echo(client, "hello") == "hello"
            answer = await post(admin, "/connections/close", {"subject": "mallory"})
            assert len(answer["closed"]) == 1
            with anyio.fail_after(WAIT), pytest.raises(ClientClosed) as ended:
                await drain_messages(client)
            assert (ended.value.code, ended.value.reason) == (1008, "connection revoked")
            assert not ended.value.requested
            assert client.state is ClientState.CLOSED
            assert client.terminated == Terminated(1008, "connection revoked", False)
            with pytest.raises(ClientClosed):
                await client.send("still there?")
    [(_, closed)] = log.of(Closed)
    assert (closed.code, closed.terminal, closed.retry_in) == (1008, True, None)
    assert not log.of(Reconnecting)
    assert asked == 1
    assert len(b.requests) == 1


async def test_an_expired_token_is_refreshed_through_the_hook() -> None:
    lifetimes = [3, 600]  # the first expires while connected; the refreshed one lasts
    log = Log()

    async def get_token() -> str:
        return token("ann", lifetimes.pop(0))

    async with backend() as b, running_proxy(make_config(
            [b], auth=jwt_auth(), heartbeat={"interval": "200ms", "timeout": "10s"})) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        async with WsproxyClient(url, token=get_token, on_event=log) as client:
            events = client.events()
            assert await echo(client, "before") == "before"
            with anyio.fail_after(3 + 1 + WAIT):
                closed: Closed = await next_event(events, Closed)
            assert (closed.code, closed.reason, closed.terminal) == (1008, "token expired", False)
            reconnecting: Reconnecting = await next_event(events, Reconnecting)
            assert reconnecting.token_refresh
            assert not reconnecting.hinted
            await next_event(events, Opened)
            assert await echo(client, "after") == "after"
    assert lifetimes == []  # asked twice
    assert [h["X-Auth-Subject"] for _, h in b.requests] == ["ann", "ann"]


@pytest.mark.parametrize("token_in", ["header", "query:access_token", "subprotocol"])
async def test_the_token_travels_as_asked(token_in: str) -> None:
    async def get_token() -> str:
        return token("zoe", 600)

    auth = jwt_auth(token_from=["header", "subprotocol", "query:access_token"])
    async with backend() as b, running_proxy(make_config([b], auth=auth)) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/room?x=1"
        async with WsproxyClient(url, token=get_token, token_in=token_in,
                                 subprotocols=["chat"] if token_in == "subprotocol" else ()
                                 ) as client:
            assert await echo(client, "hi") == "hi"
            assert client.subprotocol is None  # the backend chose none; never the token
    [(path, headers)] = b.requests
    assert headers["X-Auth-Subject"] == "zoe"
    assert path == "/room?x=1"  # the proxy strips the query token
    assert "Authorization" not in headers


# Admission refusals and close() …


async def test_a_503_from_admission_is_retried_after_retry_after() -> None:
    log = Log()
    async with backend() as b, running_proxy(make_config(
            [b], admission={"max_upgrade_rate": 0.5, "burst": 1})) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        async with connect(url) as first:  # takes the one token
            await first.send("x")
            assert await first.recv() == "x"
            # Back-off alone would retry within 0.5 s: only the header makes it wait longer.
            async with WsproxyClient(url, on_event=log,
                                     backoff=Backoff(base=0.5, max=0.5)) as client:
                events = client.events()
                closed: Closed = await next_event(events, Closed)
                assert (closed.code, closed.status, closed.before_open) == (1006, 503, True)
                # 2 s (a slow machine may take a second to get here: then 1 s)
                assert closed.retry_in in (1.0, 2.0)
                assert closed.hinted
                await next_event(events, Opened)
                assert await echo(client, "through") == "through"
    [(closed_at, refused)] = log.of(Closed)[:1]
    [(opened_at, _)] = log.of(Opened)
    assert opened_at - closed_at >= refused.retry_in - TICK


async def test_close_is_final() -> None:
    log = Log()
    asked = 0

    async def no_token() -> None:
        nonlocal asked
        asked += 1

    async with backend() as b, running_proxy(make_config([b])) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        client = WsproxyClient(url, token=no_token, on_event=log)
        async with client:
            assert await echo(client, "one") == "one"
            await client.send("unread")  # its echo is left unread
        assert client.state is ClientState.CLOSED
        assert client.terminated == Terminated(1000, "", True)
        await drain_messages(client)  # the iteration ends at once
        with pytest.raises(ClientClosed) as refused:
            await client.send("after")
        assert refused.value.requested
        await client.close()  # idempotent
        client.start()  # and it does not come back
        assert client.state is ClientState.CLOSED
        [server_side] = b.connections
        with anyio.fail_after(WAIT):
            await server_side.wait_closed()
        assert server_side.close_code == 1000
    assert asked == 1
    assert len(b.requests) == 1
    assert [type(e).__name__ for _, e in log.events] == [
        "Opened", "Closed", "Terminated", "Dropped"]


async def test_close_during_the_back_off_stops_the_reconnects() -> None:
    async with backend() as b:
        port = b.port
    url = f"ws://127.0.0.1:{port}/"  # nothing listens there now
    async with WsproxyClient(url, backoff=Backoff(base=60.0, max=60.0),
                             random=lambda: 0.999) as client:
        events = client.events()
        reconnecting: Reconnecting = await next_event(events, Reconnecting)
        assert reconnecting.delay > 50.0
        with anyio.fail_after(WAIT):
            await client.close()
        terminated: Terminated = await next_event(events, Terminated)
    assert terminated.requested
    assert client.state is ClientState.CLOSED


async def test_the_apps_hook_can_make_an_application_code_retryable() -> None:
    asked: list[tuple[int, str, int]] = []

    def should_reconnect(code: int, reason: str, attempt: int) -> bool | None:
        asked.append((code, reason, attempt))
        return True if 4000 <= code <= 4999 else None

    async with backend() as b, running_proxy(make_config([b], auth=jwt_auth())) as ctx:
        assert ctx.admin_address is not None
        admin = f"http://127.0.0.1:{ctx.admin_address[1]}"
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"

        async def get_token() -> str:
            return token("kim", 600)

        async with WsproxyClient(url, token=get_token,
                                 should_reconnect=should_reconnect) as client:
            events = client.events()
            assert await echo(client, "one") == "one"
            await post(admin, "/connections/close", {"subject": "kim", "code": 4001})
            closed: Closed = await next_event(events, Closed)
            assert (closed.code, closed.terminal) == (4001, False)
            await next_event(events, Opened)
            assert await echo(client, "two") == "two"
    assert asked == [(4001, "connection revoked", 1)]
    assert len(b.requests) == 2
