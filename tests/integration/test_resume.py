"""Resumable sessions (README "Resumable sessions"), with the Python client.

A client's TCP connection is reset (SO_LINGER 0, then close: an RST, no close frame)
in the middle of a sequenced stream both ways; the client comes back within the
window: every message arrives once and in order on both ends, and the backend saw one
connection and no close. Past the window, over the buffer, with another subject's
token, after a proxy restart: the resume fails with a close the client reads, the app
is told, and a fresh session (a new backend connection) follows.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import build_raw
from tests.integration.peers import Backend, backend, make_config, running_proxy
from tests.integration.tcp_cuts import TcpRelay, reset
from wsproxy.core import frames as fr
from wsproxy.io.resume import table_for
from wsproxy.supervisor import ProxyContext
from wsproxy_client.resume import (
    ResumableSession,
    Resumed,
    ResumeEvent,
    ResumeFailed,
    SessionClosed,
    SessionStarted,
)

pytestmark = pytest.mark.anyio

SECRET = "resume-test-secret-of-32-bytes-at-least!"


@dataclass
class Recorder:
    """A backend that records what it got, per connection, and streams on request."""

    connections: int = 0
    received: list[list[str]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    streams: list[ServerConnection] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)
    want: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        mine: list[str] = []
        self.received.append(mine)
        self.streams.append(ws)
        self.changed.set()
        try:
            async for message in ws:
                assert isinstance(message, str)
                mine.append(message)
                self.changed.set()
                if len(mine) >= self.want:
                    self.got.set()
        except ConnectionClosed:
            pass
        self.closes.append(ws.close_code)
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait (bounded) until *done()*, checked at each change of the backend."""
        with anyio.fail_after(15):
            while not done():
                self.changed.clear()
                await self.changed.wait()


class Events:
    """A ResumableSession's events, and a wait for one of a kind."""

    def __init__(self) -> None:
        self.seen: list[ResumeEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, event: ResumeEvent) -> None:
        self.seen.append(event)
        self.changed.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.seen if isinstance(e, kind)]

    async def until(self, kind: type[Any], count: int = 1) -> None:
        with anyio.fail_after(15):
            while len(self.of(kind)) < count:
                self.changed.clear()
                await self.changed.wait()


def cut(session: ResumableSession) -> None:
    """Reset the client's TCP connection: an RST, no close frame."""
    ws = session.connection
    assert ws is not None
    reset(ws.transport)


@asynccontextmanager
async def setup(**resume: Any) -> AsyncIterator[tuple[Recorder, Backend, ProxyContext, str]]:
    rec = Recorder()
    overrides = resume.pop("overrides", {})
    async with backend(handler=rec.handler) as b:
        config = make_config([b], resume={"enabled": True, **resume}, **overrides)
        async with running_proxy(config) as ctx:
            host, port = ctx.addresses[0]
            yield rec, b, ctx, f"ws://{host}:{port}"


async def stream(ws: ServerConnection, count: int, start: int = 1, rate: float = 1000) -> None:
    for i in range(start, start + count):
        await ws.send(f"down-{i}")
        if i % 10 == 0:
            await asyncio.sleep(10 / rate)


async def send_up(
    send: Callable[[str], Awaitable[None]], count: int, at: dict[int, Callable[[], None]]
) -> None:
    """Send up-1..up-*count* ten at a time every 10 ms (as stream() does the other way),
    calling ``at[i]()`` (a cut, a drop) right after up-*i*."""
    for i in range(1, count + 1):
        await send(f"up-{i}")
        if i % 10 == 0:
            await asyncio.sleep(0.01)
        if i in at:
            at[i]()


async def both_ways(
    rec: Recorder, send: Callable[[str], Awaitable[None]], recv: Callable[[], Awaitable[Any]],
    n: int, at: dict[int, Callable[[], None]],
) -> None:
    """up-1..*n* sent with *send* (``at`` the cuts, as send_up() has them) while the
    backend streams down-1..*n* to *recv*: each arrives once and in order."""
    down = asyncio.create_task(stream(rec.streams[0], n))
    got: list[str] = []

    async def reader() -> None:
        while len(got) < n:
            got.append(str(await recv()))

    read = asyncio.create_task(reader())
    await send_up(send, n, at)
    with anyio.fail_after(30):
        await rec.got.wait()
        await read
        await down
    assert rec.received == [[f"up-{i}" for i in range(1, n + 1)]]
    assert got == [f"down-{i}" for i in range(1, n + 1)]


async def test_a_reset_connection_resumes_exactly_once_in_order_both_ways():
    n = 3000
    async with setup() as (rec, b, ctx, url):
        rec.want = n
        async with ResumableSession(url + "/app?x=1") as session:
            assert isinstance(session.events[0], SessionStarted)
            assert session.session_id
            # The backend never sees the parameter.
            assert b.requests[0][0] == "/app?x=1"
            # Cut twice: a session resumes as often as it drops.
            await both_ways(rec, session.send, session.recv, n,
                            {700: lambda: cut(session), 1800: lambda: cut(session)})
            assert rec.connections == 1
            assert rec.closes == []  # the backend never saw a close
            resumed = [e for e in session.events if isinstance(e, Resumed)]
            assert len(resumed) == 2
            assert not [e for e in session.events if isinstance(e, ResumeFailed)]
            resumes = await anyio.to_thread.run_sync(
                _metric, ctx, 'wsproxy_resumes_total{outcome="resumed"}')
            assert resumes == 2


async def wait_mid_message(ctx: ProxyContext) -> None:
    """Until the proxy has read the start of a client message and not its end."""
    def mid() -> bool:
        return any(not c.session.client_at_boundary() for c in ctx.registry.connections.values())
    with anyio.fail_after(10):
        while not mid():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@asynccontextmanager
async def cut_in_a_message(
    ctx: ProxyContext, rec: Recorder, big: str, **client: Any
) -> AsyncIterator[ResumableSession]:
    """A ResumableSession through a relay: "one" goes whole, then the network dies
    8 kB into *big* (the frame's header and the start of its payload get through)."""
    host, port = ctx.addresses[0]
    relay = TcpRelay(port)
    relay_port = await relay.start()
    try:
        async with ResumableSession(f"ws://{host}:{relay_port}/", **client) as session:
            rec.want = 1
            await session.send("one")
            await rec.got.wait()
            relay.passing = 8_000
            await session.send(big)
            await wait_mid_message(ctx)
            relay.cut()
            relay.passing = None  # the client's next connection goes through
            yield session
    finally:
        await relay.stop()


async def test_a_message_cut_in_its_middle_reaches_the_backend_once_and_whole():
    """The network dies in the middle of a 20 kB message: the backend has seen nothing
    of it (the proxy holds an opted-in client's message back until it is whole), the
    session is held, and the client sends the message again when it resumes."""
    big = "b" * 20_000
    async with setup() as (rec, _b, ctx, _url), cut_in_a_message(ctx, rec, big) as session:
        await session.send("after")
        await rec.until(lambda: len(rec.received[0]) >= 3)
        assert rec.received == [["one", big, "after"]]
        assert rec.connections == 1
        assert rec.closes == []
        assert [type(e) for e in session.events] == [SessionStarted, Resumed]
        # The backend sent nothing, and what was held of the cut message is let go.
        assert table_for(ctx).total.bytes == 0


@pytest.mark.parametrize("limit", [{"buffer": "4KiB"}, {"max_total": "4KiB"}])
async def test_a_message_over_the_buffer_cut_in_its_middle_is_reported_unacked(
    limit: dict[str, str],
) -> None:
    """Over ``resume.buffer``, or where holding it would take all sessions' bytes past
    ``resume.max_total``, a message goes on as it comes: cut in its middle, the
    session ends, and the client counts it among the messages that may be lost (the
    proxy acks a message once it is whole, not from its frame's header)."""
    events = Events()
    async with (
        setup(**limit) as (rec, _b, ctx, _url),
        cut_in_a_message(ctx, rec, "b" * 20_000, on_event=events),
    ):
        failed = await _failed(events)
    assert (failed.reason, failed.unacked) == ("session closed", 1)
    assert rec.received[0] == ["one"]  # and part of the message: the close says so
    assert rec.connections == 2


async def test_a_fragmented_message_goes_on_as_it_comes():
    """Only a message sent as one frame is held back: a fragment reaches the backend at
    once, so nothing that may come between fragments (a pong) waits for the last."""
    first = asyncio.Event()
    got: list[str] = []
    whole = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        parts = []
        async for part in ws.recv_streaming():
            assert isinstance(part, str)
            parts.append(part)
            first.set()
        got.append("".join(parts))
        whole.set()
        await ws.wait_closed()

    release = asyncio.Event()

    async def fragments() -> AsyncIterator[str]:
        yield "part-1 "
        await release.wait()  # until the backend has the first
        yield "part-2"

    async with backend(handler=handler) as b:
        config = make_config([b], resume={"enabled": True})
        async with running_proxy(config) as ctx:
            host, port = ctx.addresses[0]
            async with connect(f"ws://{host}:{port}/?wsproxy_resume=1") as ws:
                await ws.recv()  # the session's control message
                sending = asyncio.create_task(ws.send(fragments()))
                with anyio.fail_after(10):
                    await first.wait()
                release.set()
                with anyio.fail_after(10):
                    await sending
                    await whole.wait()
    assert got == ["part-1 part-2"]


async def test_a_message_held_back_counts_in_the_buffered_bytes_until_it_goes():
    """What the proxy holds of a client's message counts against ``max_total`` (and
    shows in wsproxy_resume_buffered_bytes) until the message goes on whole."""
    frame = build_raw(fr.TEXT, b"h" * 20_000)
    async with setup() as (rec, _b, ctx, url), connect(url + "/?wsproxy_resume=1") as ws:
        await ws.recv()  # the session's control message
        rec.want = 1
        ws.transport.write(frame[:8_000])
        await wait_mid_message(ctx)
        held = await anyio.to_thread.run_sync(
            _metric, ctx, "wsproxy_resume_buffered_bytes")
        assert held > 7_000
        ws.transport.write(frame[8_000:])
        with anyio.fail_after(10):
            await rec.got.wait()
        assert rec.received == [["h" * 20_000]]
        assert await anyio.to_thread.run_sync(
            _metric, ctx, "wsproxy_resume_buffered_bytes") == 0


async def test_a_message_over_the_buffer_goes_on_as_it_comes_and_is_acked():
    """Only a message that fits in ``resume.buffer`` is held back until it is whole."""
    big = "m" * 50_000
    async with setup(buffer="4KiB") as (rec, _b, ctx, url), ResumableSession(url) as session:
        rec.want = 2
        await session.send(big)
        await session.send("small")
        await rec.got.wait()
        assert rec.received == [[big, "small"]]
        state = table_for(ctx).sessions[session.session_id or ""]
        with anyio.fail_after(10):
            while state.acked != 2:  # the ack follows the read  # noqa: ASYNC110
                await asyncio.sleep(0.01)


def _admin(ctx: ProxyContext, path: str) -> bytes:
    host, port = ctx.admin_address
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
        return body


def _metric(ctx: ProxyContext, name: str) -> float:
    for line in _admin(ctx, "/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}")


async def _wait_held(ctx: ProxyContext, held: int) -> None:
    """Until the proxy has noticed the reset: nothing to wait on but its registry."""
    with anyio.fail_after(10):
        while sum(1 for c in ctx.registry.connections.values() if c.held) != held:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_held_session_shows_in_connections_and_metrics():
    back = asyncio.Event()
    async with setup() as (rec, _b, ctx, url):
        rec.want = 1
        async with ResumableSession(url, before_resume=back.wait) as session:
            await session.send("hello")
            await rec.got.wait()
            cut(session)
            await _wait_held(ctx, 1)
            await rec.streams[0].send("while away")
            view = json.loads(await anyio.to_thread.run_sync(_admin, ctx, "/connections"))
            rows = view["connections"] if isinstance(view, dict) else view
            assert [r.get("resume") for r in rows] == ["held"]
            assert await anyio.to_thread.run_sync(_metric, ctx, "wsproxy_resume_sessions_held") == 1
            assert await anyio.to_thread.run_sync(
                _metric, ctx, "wsproxy_resume_buffered_bytes") > len("while away")
            back.set()
            with anyio.fail_after(10):
                assert await session.recv() == "while away"


async def _failed(events: Events) -> ResumeFailed:
    await events.until(ResumeFailed)
    # …and a fresh session follows, on a new backend connection.
    await events.until(SessionStarted, 2)
    failed: ResumeFailed = events.of(ResumeFailed)[0]
    return failed


async def test_past_the_window_the_backend_gets_the_client_gone_close_and_a_fresh_session():
    async with setup(window="0.3s") as (rec, _b, _ctx, url):
        rec.want = 1

        async def away() -> None:  # longer than the window
            await rec.until(lambda: rec.closes != [])

        events = Events()
        async with ResumableSession(url, before_resume=away, on_event=events) as session:
            await session.send("one")
            await rec.got.wait()
            cut(session)
            failed = await _failed(events)
            assert rec.closes == [1001]  # as today when a client goes: "client went away"
        assert failed.reason == "window passed"
        assert rec.connections == 2


async def test_over_the_buffer_the_resume_fails():
    async with setup(buffer="1KiB") as (rec, _b, ctx, url):
        rec.want = 1
        async def away() -> None:
            await rec.until(lambda: rec.closes != [])

        events = Events()
        async with ResumableSession(url, before_resume=away, on_event=events) as session:
            await session.send("one")
            await rec.got.wait()
            cut(session)
            await _wait_held(ctx, 1)
            for _ in range(20):
                await rec.streams[0].send("x" * 200)  # 4 KB while away
            failed = await _failed(events)
        assert failed.reason == "buffer overrun"
        assert rec.closes[0] == 1001
        assert rec.connections == 2


async def test_another_subject_cannot_resume_a_session():
    def token(sub: str) -> str:
        return jwt.encode({"sub": sub}, SECRET, algorithm="HS256")

    overrides = {"auth": {"type": "jwt", "jwt": {"secret": SECRET}, "token_from": ["query:token"]}}
    async with setup(overrides=overrides) as (rec, _b, _ctx, url):
        rec.want = 1
        async with ResumableSession(url + "?token=" + token("alice")) as alice:
            await alice.send("one")
            await rec.got.wait()
            sid = alice.session_id
            # Mallory knows the id and the count, but not alice's token.
            async with connect(f"{url}?token={token('mallory')}&wsproxy_resume={sid}.0") as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.protocol.close_rcvd is not None
                assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (
                    4410, "resume failed: other subject")
            # alice's own session goes on, untouched.
            await alice.send("two")
            await rec.until(lambda: len(rec.received[0]) == 2)
            assert rec.connections == 1


async def test_after_a_proxy_restart_the_resume_fails_and_a_fresh_session_follows():
    rec = Recorder()
    rec.want = 1
    async with backend(handler=rec.handler) as b:
        config = make_config([b], resume={"enabled": True})
        gate = asyncio.Event()
        async with running_proxy(config) as ctx:
            host, port = ctx.addresses[0]
            events = Events()
            session = ResumableSession(f"ws://{host}:{port}", before_resume=gate.wait,
                                       on_event=events)
            await session.__aenter__()
            await session.send("one")
            await rec.got.wait()
            cut(session)
            await _wait_held(ctx, 1)
        # The proxy is gone, its held session with it; a new one (on another port).
        async with running_proxy(config) as ctx2:
            host, port = ctx2.addresses[0]
            session.url = f"ws://{host}:{port}"
            gate.set()
            failed = await _failed(events)
            assert failed.reason == "proxy restarted"
            await session.send("after")
            await rec.until(lambda: rec.received[1:] == [["after"]])
            await session.close()
        assert rec.connections == 2


async def test_a_close_frame_is_a_real_close():
    async with setup() as (rec, _b, _ctx, url):
        rec.want = 1
        async with ResumableSession(url) as session:
            await session.send("one")
            await rec.got.wait()
            await rec.streams[0].close(4000, "bye")
            with anyio.fail_after(10), pytest.raises(SessionClosed) as closed:
                await session.recv()
            assert closed.value.code == 4000
        assert rec.connections == 1


async def test_a_client_that_does_not_opt_in_sees_no_prefix_and_the_parameter_is_kept_when_off():
    rec = Recorder()
    async with backend(handler=rec.handler) as b:
        async with running_proxy(make_config([b])) as ctx:
            host, port = ctx.addresses[0]
            async with connect(f"ws://{host}:{port}/?wsproxy_resume=1") as ws:
                await rec.until(lambda: bool(rec.streams))
                await rec.streams[0].send("plain")
                assert await ws.recv() == "plain"
        assert b.requests[0][0] == "/?wsproxy_resume=1"  # resume off: not ours to take
    async with setup() as (rec, b, ctx, url), connect(url + "/") as ws:
        await rec.until(lambda: bool(rec.streams))
        await rec.streams[0].send("plain")
        assert await ws.recv() == "plain"  # resume on, client not opted in: as today


async def test_a_drain_ends_a_held_session_and_a_draining_proxy_refuses_resumes():
    gate = asyncio.Event()
    async with setup() as (rec, _b, ctx, url):
        rec.want = 1
        events = Events()
        async with ResumableSession(url, before_resume=gate.wait, on_event=events,
                                    retry_delay=0.01) as session:
            await session.send("one")
            await rec.got.wait()
            sid, received = session.session_id, session.received
            cut(session)
            await _wait_held(ctx, 1)
            ctx.drain(spread=0)
            await rec.until(lambda: rec.closes != [])  # no waiting out the window
            assert rec.closes == [1001]
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{url}/?wsproxy_resume={sid}.{received}"):
                    pass
            assert refused.value.response.status_code == 503
            assert rec.connections == 1
            await session.close()


class Blackhole:
    """A TCP relay to *port* that can stop passing anything on, telling nobody: the
    proxy's socket to it stays open (a path that drops packets)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.dead: set[int] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        index = len(self.pairs)
        self.pairs.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if index not in self.dead:
                        dst.write(data)
                        await dst.drain()
            except OSError:
                pass
            finally:
                if index not in self.dead:
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def drop_everything(self) -> None:
        self.dead.update(range(len(self.pairs)))

    async def stop(self) -> None:
        for pair in self.pairs:
            for writer in pair:
                writer.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_resume_takes_over_from_a_socket_the_proxy_still_thinks_alive():
    n = 1500
    async with setup() as (rec, _b, ctx, url):
        rec.want = n
        relay = Blackhole(int(url.rsplit(":", 1)[1]))
        relay_port = await relay.start()
        events = Events()
        async with ResumableSession(f"ws://127.0.0.1:{relay_port}", on_event=events) as session:
            # From up-500 everything is lost both ways, and nobody is told; at up-600
            # the client gives up on its socket (the proxy's lives on).
            await both_ways(rec, session.send, session.recv, n,
                            {500: relay.drop_everything, 600: lambda: cut(session)})
            assert rec.connections == 1
            assert rec.closes == []
            assert len(events.of(Resumed)) == 1
            assert events.of(Resumed)[0].resent >= 100  # what went into the hole
            assert table_for(ctx).outcomes == {"resumed": 1}
        await relay.stop()


async def test_a_token_that_expires_while_held_ends_the_session():
    def token(sub: str, life: float) -> str:
        # Rounded up: int() made a 2 s token a 1.1 s one at worst, which a loaded
        # machine's first connect could miss (the client then never got a session).
        return jwt.encode({"sub": sub, "exp": math.ceil(time.time() + life)}, SECRET,
                          algorithm="HS256")

    overrides = {
        "auth": {"type": "jwt", "jwt": {"secret": SECRET, "leeway": 0},
                 "token_from": ["query:token"], "close_on_expiry": True},
        "heartbeat": {"interval": "200ms", "timeout": "10s"},
    }
    gate = asyncio.Event()
    async with setup(overrides=overrides) as (rec, _b, ctx, url):
        rec.want = 1
        async with ResumableSession(f"{url}/?token={token('alice', 3)}",
                                    before_resume=gate.wait) as session:
            await session.send("one")
            await rec.got.wait()
            sid = session.session_id
            cut(session)
            await _wait_held(ctx, 1)
            await rec.until(lambda: rec.closes != [])  # at expiry, not after the window
            assert rec.closes == [1001]
            fresh = token("alice", 600)
            async with connect(f"{url}/?token={fresh}&wsproxy_resume={sid}.0") as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.protocol.close_rcvd is not None
                assert ws.protocol.close_rcvd.reason == "resume failed: session closed"
            await session.close()


def _jwt(sub: str, life: int) -> tuple[str, int]:
    """A token valid for at least *life* seconds from now, and its ``exp``."""
    exp = math.ceil(time.time()) + life
    return jwt.encode({"sub": sub, "exp": exp}, SECRET, algorithm="HS256"), exp


EXPIRING = {
    "auth": {"type": "jwt", "jwt": {"secret": SECRET, "leeway": 0},
             "token_from": ["query:token"], "close_on_expiry": True},
    # The sweep that closes at expiry visits connections a few times a second.
    "heartbeat": {"interval": "200ms", "timeout": "10s"},
}


async def _past(deadline: float) -> None:
    """Let wall-clock time pass *deadline* (a close due then has had its sweeps)."""
    while time.time() < deadline:  # noqa: ASYNC110 -- time itself is what is awaited
        await asyncio.sleep(0.1)


async def test_a_resume_with_a_refreshed_token_renews_the_expiry():
    gate = asyncio.Event()
    async with setup(overrides=EXPIRING) as (rec, _b, ctx, url):
        rec.want = 1
        first, first_exp = _jwt("alice", 3)
        events = Events()
        async with ResumableSession(f"{url}/?token={first}", before_resume=gate.wait,
                                    on_event=events) as session:
            await session.send("one")
            await rec.got.wait()
            sid = session.session_id
            cut(session)
            await _wait_held(ctx, 1)
            # An expired token is refused as auth refuses it; the session stays held.
            expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, SECRET,
                                 algorithm="HS256")
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{url}/?token={expired}&wsproxy_resume={sid}.0"):
                    pass
            assert refused.value.response.status_code == 401
            # The app refreshed its token: the resume carries the new one.
            refreshed, _ = _jwt("alice", 600)
            session.url = f"{url}/?token={refreshed}"
            gate.set()
            await events.until(Resumed)
            await _past(first_exp + 1.5)  # the first token is long expired
            await session.send("two")
            await rec.until(lambda: rec.received[0] == ["one", "two"])
            await rec.streams[0].send("three")
            with anyio.fail_after(10):
                assert await session.recv() == "three"
            assert rec.closes == []
            assert rec.connections == 1
            assert table_for(ctx).outcomes == {"resumed": 1}


async def test_without_a_resume_the_session_still_ends_at_its_token_expiry():
    async with setup(overrides=EXPIRING) as (rec, _b, _ctx, url):
        rec.want = 1
        token, _ = _jwt("alice", 3)
        async with ResumableSession(f"{url}/?token={token}") as session:
            await session.send("one")
            await rec.got.wait()
            with anyio.fail_after(15), pytest.raises(SessionClosed) as closed:
                await session.recv()
            assert (closed.value.code, closed.value.reason) == (1008, "token expired")


async def _control(ws: Any) -> dict[str, Any]:
    """The next message to a raw opted-in client: a control message of the proxy's."""
    message = await ws.recv()
    assert isinstance(message, str)
    assert message.startswith("\x01")
    control: dict[str, Any] = json.loads(message[1:])
    return control


async def test_a_resumed_session_counts_under_the_address_it_resumed_from():
    """max_connections_per_ip 1; the client starts on 127.0.0.2 and resumes from
    127.0.0.3: .2 is free again, .3 is taken; a resume from an address at its
    limit is refused as any upgrade over it (503)."""
    overrides = {"limits": {"max_connections_per_ip": 1}}
    async with setup(overrides=overrides) as (rec, _b, ctx, url):
        ws = await connect(f"{url}/?wsproxy_resume=1", local_addr=("127.0.0.2", 0))
        sid = (await _control(ws))["id"]
        reset(ws.transport)
        await _wait_held(ctx, 1)
        ws = await connect(f"{url}/?wsproxy_resume={sid}.0", local_addr=("127.0.0.3", 0))
        assert (await _control(ws))["type"] == "resumed"
        assert [c.client_ip for c in ctx.registry.connections.values()] == ["127.0.0.3"]
        # The first address's slot was given back; the new one's is taken.
        async with connect(url + "/", local_addr=("127.0.0.2", 0)) as other:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url + "/", local_addr=("127.0.0.3", 0)):
                    pass
            assert refused.value.response.status_code == 503
            # Dropped again, the session cannot come back from .2 while .2 is full…
            reset(ws.transport)
            await _wait_held(ctx, 1)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{url}/?wsproxy_resume={sid}.0",
                                   local_addr=("127.0.0.2", 0)):
                    pass
            assert refused.value.response.status_code == 503
            await other.close()
        # …and can once it is not; the session was held all along.
        await rec.until(lambda: rec.closes == [1000])  # `other`'s backend leg, closed
        ws = await connect(f"{url}/?wsproxy_resume={sid}.0", local_addr=("127.0.0.2", 0))
        assert (await _control(ws))["type"] == "resumed"
        await rec.streams[0].send("still here")
        assert await ws.recv() == "\x00still here"
        assert rec.connections == 2
        await ws.close()


async def test_a_resume_takes_the_slot_of_its_session_at_the_limits():
    """max_connections 1 and max_connections_per_ip 1, both taken by the held
    session: its resume, from the address it left, gets in; anyone else does not."""
    overrides = {"limits": {"max_connections": 1, "max_connections_per_ip": 1}}
    async with setup(overrides=overrides) as (rec, _b, ctx, url):
        ws = await connect(f"{url}/?wsproxy_resume=1", local_addr=("127.0.0.2", 0))
        sid = (await _control(ws))["id"]
        reset(ws.transport)
        await _wait_held(ctx, 1)
        ws = await connect(f"{url}/?wsproxy_resume={sid}.0", local_addr=("127.0.0.2", 0))
        assert (await _control(ws))["type"] == "resumed"
        for source in ("127.0.0.2", "127.0.0.3"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url + "/", local_addr=(source, 0)):
                    pass
            assert refused.value.response.status_code == 503
        await rec.streams[0].send("still here")
        assert await ws.recv() == "\x00still here"
        assert rec.connections == 1
        await ws.close()


async def test_a_resume_with_its_token_as_a_subprotocol_is_answered_with_that_offer():
    """A token offered as a subprotocol (``bearer.<token>``) is new on each attempt, and
    the backend never saw one: the proxy's own 101 to the resume selects the resume's
    offer, as the first 101 selected the first one's (browsers and Node fail a 101
    that answers none of their offers)."""
    overrides = {"auth": {"type": "jwt", "jwt": {"secret": SECRET},
                          "token_from": ["subprotocol"]}}
    async with setup(overrides=overrides) as (rec, _b, ctx, url):
        rec.want = 1
        first, _ = _jwt("alice", 600)
        async with connect(f"{url}/?wsproxy_resume=1",
                           subprotocols=[f"bearer.{first}", "chat"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == f"bearer.{first}"  # the backend chose none
            hello = await ws.recv()
            assert isinstance(hello, str)
            assert hello[0] == "\x01"
            sid = json.loads(hello[1:])["id"]
            await ws.send("one")
            await rec.got.wait()
            reset(ws.transport)
        await _wait_held(ctx, 1)
        second, _ = _jwt("alice", 600)
        async with connect(f"{url}/?wsproxy_resume={sid}.0",
                           subprotocols=[f"bearer.{second}", "chat"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == f"bearer.{second}"
            resumed = await ws.recv()
            assert isinstance(resumed, str)
            assert json.loads(resumed[1:]) == {"type": "resumed", "acked": 1, "sent": 0}
        assert table_for(ctx).outcomes == {"resumed": 1}
        assert rec.connections == 1
