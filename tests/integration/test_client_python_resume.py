"""clients/python's ``WsproxyClient(resume=True)`` against running proxies: a drop without
a close frame resumes the session; a real close goes by the client's usual rules.

- A client whose TCP connection is reset (an RST, no close frame; as test_resume.py
  cuts) twice in the middle of a sequenced stream both ways: every message once and in
  order on both ends, one backend connection that never saw a close.
- A proxy drain (1001 with its ``retry-after-ms`` hint): the client, behind a TCP relay
  standing for a load balancer in front of two proxies, comes back no sooner than the
  hint, through the other proxy, with a fresh session (no resume over a draining proxy).
- A revocation (1008): the end, no resume, no reconnect.
- A proxy that does not speak the protocol: the end (1002), not a loop of reconnects.
- An app that does not read: the client reads INBOX_KEPT messages ahead and no more, so
  the rest wait in the backend (websockets' flow control), not in the client's memory.

Each test runs on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from websockets.asyncio.server import ServerConnection

from tests.integration.peers import backend, make_config, running_proxy
from tests.integration.peers import both_loops as anyio_backend  # noqa: F401
from tests.integration.tcp_cuts import TcpRelay, reset
from tests.integration.test_client_python import (
    Log,
    jwt_auth,
    next_event,
    post,
    token,
)
from tests.integration.test_resume import Recorder, both_ways
from wsproxy_client import (
    INBOX_KEPT,
    Backoff,
    ClientClosed,
    Closed,
    Event,
    Opened,
    Reconnecting,
    Resumed,
    ResumeFailed,
    SessionStarted,
    Terminated,
    WsproxyClient,
)

pytestmark = pytest.mark.anyio

WAIT = 15.0
#: What a lower bound on a wait allows for the clocks (see test_client_python.py).
TICK = 0.002


def cut(client: WsproxyClient) -> None:
    """Reset the client's TCP connection: an RST, no close frame."""
    ws = client.connection
    assert ws is not None
    reset(ws.transport)


def kinds(log: Log, *names: type[Any]) -> list[str]:
    return [type(e).__name__ for _, e in log.events if isinstance(e, names)]


async def test_a_dropped_connection_resumes_every_message_once_in_order_both_ways() -> None:
    n = 2000
    rec = Recorder()
    rec.want = n
    log = Log()
    async with (
        backend(handler=rec.handler) as b,
        running_proxy(make_config([b], resume={"enabled": True})) as ctx,
    ):
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/app?x=1"
        async with WsproxyClient(url, resume=True, on_event=log) as client:
            await client.wait_open()
            session = client.session
            assert session is not None
            assert session.id is not None
            assert b.requests[0][0] == "/app?x=1"  # the backend never sees the parameter
            await both_ways(rec, client.send, client.recv, n,
                            {500: lambda: cut(client), 1400: lambda: cut(client)})
            again = client.session
            assert again is not None
            assert (again.id, again.received, again.resuming) == (session.id, n, False)
        assert rec.connections == 1
        assert rec.closes in ([], [1000])  # only the app's own close, at the end
    assert kinds(log, SessionStarted, Resumed, ResumeFailed, Opened) == [
        "SessionStarted", "Opened", "Resumed", "Opened", "Resumed", "Opened"]
    drops = [e for _, e in log.of(Closed) if not e.terminal]
    assert [(e.code, e.was_clean, e.retry_in) for e in drops] == [(1006, False, 0.0)] * 2
    assert isinstance(log.events[-1][1], Terminated)


async def test_a_proxy_drain_reconnects_after_the_hint_with_a_fresh_session() -> None:
    log = Log()
    connects: list[float] = []

    async def no_token() -> None:  # asked before every connect: when each one starts
        connects.append(asyncio.get_running_loop().time())

    config_of = {"resume": {"enabled": True}}
    async with (
        backend() as b,
        running_proxy(make_config([b], **config_of)) as first,
        running_proxy(make_config([b], **config_of)) as second,
    ):
        balancer = TcpRelay(first.addresses[0][1])
        port = await balancer.start()
        async with WsproxyClient(f"ws://127.0.0.1:{port}/", resume=True, token=no_token,
                                 on_event=log) as client:
            events = client.events()
            started: SessionStarted = await next_event(events, SessionStarted)
            await client.send("one")
            with anyio.fail_after(WAIT):
                assert await client.recv() == "one"
            balancer.target = second.addresses[0][1]
            first.drain(spread=0)
            closed: Closed = await next_event(events, Closed)
            assert closed.code == 1001
            assert closed.reason.startswith("proxy draining; retry-after-ms=")
            hint_ms = int(closed.reason.rsplit("=", 1)[1])
            assert (closed.retry_in, closed.hinted) == (hint_ms / 1000, True)
            assert not closed.terminal
            fresh: SessionStarted = await next_event(events, SessionStarted)
            assert fresh.session_id != started.session_id
            await client.send("two")
            with anyio.fail_after(WAIT):
                assert await client.recv() == "two"
        await balancer.stop()
    assert len(connects) == 2
    [(closed_at, _)] = [(t, e) for t, e in log.of(Closed) if e.code == 1001]
    assert connects[1] - closed_at >= hint_ms / 1000 - TICK  # not before the hint
    assert kinds(log, Resumed, ResumeFailed, SessionStarted) == ["SessionStarted"] * 2
    assert [e.hinted for _, e in log.of(Reconnecting)] == [True]
    assert len(b.requests) == 2  # a new backend connection: a fresh session


async def test_a_revocation_is_the_end_without_a_resume() -> None:
    log = Log()
    asked = 0

    async def get_token() -> str:
        nonlocal asked
        asked += 1
        return token("mallory", 600)

    async with backend() as b, running_proxy(make_config(
            [b], auth=jwt_auth(), resume={"enabled": True})) as ctx:
        assert ctx.admin_address is not None
        admin = f"http://127.0.0.1:{ctx.admin_address[1]}"
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        async with WsproxyClient(url, token=get_token, resume=True, on_event=log,
                                 backoff=Backoff(base=0.01, max=0.01)) as client:
            await client.send("hello")
            with anyio.fail_after(WAIT):
                assert await client.recv() == "hello"
            answer = await post(admin, "/connections/close", {"subject": "mallory"})
            assert len(answer["closed"]) == 1
            with anyio.fail_after(WAIT), pytest.raises(ClientClosed) as ended:
                await client.recv()
            assert (ended.value.code, ended.value.reason) == (1008, "connection revoked")
            session = client.session
            assert session is not None
            assert session.id is None  # forgotten
    [(_, closed)] = log.of(Closed)
    assert (closed.code, closed.terminal) == (1008, True)
    assert kinds(log, Reconnecting, Resumed, ResumeFailed, SessionStarted) == ["SessionStarted"]
    assert asked == 1
    assert len(b.requests) == 1


async def test_a_proxy_without_resume_ends_the_client() -> None:
    async def greeter(ws: ServerConnection) -> None:
        await ws.send("hello")  # what a resumable session's proxy never sends first
        await ws.wait_closed()

    events: list[Event] = []
    async with backend(handler=greeter) as b, running_proxy(make_config([b])) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        async with WsproxyClient(url, resume=True, on_event=events.append) as client:
            with anyio.fail_after(WAIT), pytest.raises(ClientClosed) as ended:
                await client.wait_open()
            assert ended.value.code == 1002
            assert not ended.value.requested
    assert b.requests[0][0] == "/?wsproxy_resume=1"  # resume off: the backend's to see
    assert len(b.requests) == 1
    assert [type(e).__name__ for e in events] == ["Failed", "Closed", "Terminated"]


@pytest.mark.parametrize("token_in", ["header", "query:access_token", "subprotocol"])
async def test_a_resume_carries_a_fresh_token_as_any_connect_does(token_in: str) -> None:
    """The token hook is asked before every attempt; the session is the subject's.
    (As a subprotocol: the proxy's resume 101 answers none, which `websockets` takes,
    where browsers do not: see clients/js's README.)"""
    asked = 0

    async def get_token() -> str:
        nonlocal asked
        asked += 1
        return token("ada", 600 + asked)  # a different token each time

    log = Log()
    auth = jwt_auth(token_from=["header", "subprotocol", "query:access_token"])
    async with backend() as b, running_proxy(make_config(
            [b], auth=auth, resume={"enabled": True})) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        async with WsproxyClient(url, token=get_token, token_in=token_in, resume=True,
                                 on_event=log) as client:
            events = client.events()
            await client.send("before")
            with anyio.fail_after(WAIT):
                assert await client.recv() == "before"
            cut(client)
            await next_event(events, Resumed)
            await client.send("after")
            with anyio.fail_after(WAIT):
                assert await client.recv() == "after"
    assert asked == 2
    assert len(b.requests) == 1
    assert kinds(log, SessionStarted, Resumed, ResumeFailed) == ["SessionStarted", "Resumed"]


async def test_an_app_that_does_not_read_holds_the_backend_back() -> None:
    # 80 MiB: more than the inbox's bound plus every buffer on the way (websockets' queue,
    # four loopback socket buffers of at most 4-6 MiB, the proxy's) could hold, so the
    # backend cannot finish sending before the app reads.
    n, size = 320, 256 * 1024
    rec = Recorder()
    async with (
        backend(handler=rec.handler) as b,
        running_proxy(make_config([b], resume={"enabled": True})) as ctx,
    ):
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/app"
        async with WsproxyClient(url, resume=True) as client:
            await client.wait_open()
            pad = bytes(size - 4)

            async def down() -> None:
                for i in range(n):
                    await rec.streams[0].send(i.to_bytes(4, "big") + pad)

            async def past_the_bound() -> None:
                while len(client._inbox) <= INBOX_KEPT:
                    await client._changed.wait()

            sending = asyncio.create_task(down())
            with anyio.fail_after(WAIT):
                while len(client._inbox) < INBOX_KEPT:
                    await client._changed.wait()
            # Proving that nothing more comes needs a window: a client without the bound
            # goes past it at once (and the backend finishes); with it, neither happens.
            past = asyncio.create_task(past_the_bound())
            await asyncio.wait({past, sending}, timeout=1.0,
                               return_when=asyncio.FIRST_COMPLETED)
            past.cancel()
            assert len(client._inbox) == INBOX_KEPT
            assert not sending.done()
            with anyio.fail_after(WAIT * 2):
                for i in range(n):
                    message = await client.recv()
                    assert isinstance(message, bytes)
                    assert len(message) == size
                    assert int.from_bytes(message[:4], "big") == i
                await sending
