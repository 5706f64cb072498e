"""A session relayed by the relay protocols (wsproxy.io.direct), on real sockets, on both
loops: its transports carry relays while OPEN and get their own protocols back after,
and everything the driver does still happens (heartbeats, the size limit, drains,
backpressure, close handshakes). Each test runs twice: with io.direct's feed (its
sockets read by pumps) started as it is in service, after a few relayed reads, and
started at the first one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.integration.peers import (
    backend,
    both_loops,  # noqa: F401 (the anyio_backend fixture: asyncio and uvloop)
    closed_by_proxy,
    make_config,
    running_proxy,
)
from wsproxy.core.scan import PyRelay, Relay
from wsproxy.core.states import SessionState
from wsproxy.io import direct, hub
from wsproxy.io.connection import Connection
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

WAIT = 10.0
RELAYS = (PyRelay, Relay)
#: Messages of 64 KiB a client sends to a backend that does not read: 32 MiB.
FLOOD = 512


@pytest.fixture(params=["late", "at_once"], autouse=True)
def feed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """When io.direct's feed starts: after FEED_AFTER relayed reads, or at the first
    (with the Python pump too: off in service, where it does not pay)."""
    monkeypatch.setattr(direct, "FEEDING", True)
    if request.param == "at_once":
        monkeypatch.setattr(direct, "FEED_AFTER", 1)
    return str(request.param)


def url_of(ctx: ProxyContext) -> str:
    host, port = ctx.addresses[0]
    return f"ws://{host}:{port}"


def the_connection(ctx: ProxyContext) -> Connection:
    (conn,) = ctx.registry.connections.values()
    return conn


def relayed(conn: Connection) -> bool:
    """Whether both transports have relay protocols (and neither has one half-way)."""
    kinds = [isinstance(t.get_protocol(), RELAYS)
             for t in (conn._client, conn._upstream) if t is not None]
    assert len(set(kinds)) <= 1, kinds
    return bool(kinds) and kinds[0]


def client_read(conn: Connection) -> bool:
    """Whether the client's socket is being read: by its transport, or by the pump of
    io.direct's feed (which pauses the transport's reading while it reads)."""
    client, upstream = conn._client, conn._upstream
    assert client is not None
    assert upstream is not None
    if client.is_reading():  # type: ignore[attr-defined]
        return True
    feeder = getattr(upstream.get_protocol(), "feeder", None)  # reads the client's socket
    return feeder is not None and feeder.feed.on and not feeder.paused


def fed(conn: Connection) -> bool:
    """Whether io.direct's feed reads both sockets (plain TCP transports, OPEN)."""
    protocols = [t.get_protocol() for t in (conn._client, conn._upstream) if t is not None]
    return len(protocols) == 2 and all(
        getattr(p, "feeder", None) is not None and p.feeder.feed.on for p in protocols)


async def until(condition: Callable[[], bool]) -> None:
    """Until *condition* holds (bounded: a failure, not a hang)."""
    with anyio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 - transports and rtt have no event to wait on
            await anyio.sleep(0.01)


async def echoed(ws: ClientConnection, messages: list[bytes]) -> None:
    for m in messages:
        await ws.send(m)
    with anyio.fail_after(WAIT):
        assert [await ws.recv() for _ in messages] == messages


async def feeding(ws: ClientConnection, conn: Connection) -> None:
    """Echo round trips one at a time (a read each) until io.direct's feed is on: it
    starts after FEED_AFTER relayed reads."""
    for _ in range(direct.FEED_AFTER + 1):
        if fed(conn):
            return
        await echoed(ws, [b"one read"])
    assert fed(conn)


async def test_an_open_session_is_relayed_and_its_close_handshake_stops_the_feed() -> None:
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        async with connect(url_of(ctx), ping_interval=None) as ws:
            await echoed(ws, [b"x" * n for n in (0, 1, 125, 126, 65536)])
            conn = the_connection(ctx)
            assert relayed(conn)
            client, upstream = conn._client, conn._upstream
            await echoed(ws, [bytes([i]) * 64 for i in range(100)])
            assert conn.view()["messages_to_backend"] == 5 + 100
            assert conn.view()["messages_to_client"] == 5 + 100
            await feeding(ws, conn)
            await echoed(ws, [bytes([i]) * 64 for i in range(100)])
            the_feed = upstream.get_protocol().feeder.feed  # type: ignore[union-attr]
            relays = [t.get_protocol() for t in (client, upstream)]  # type: ignore[union-attr]
            await ws.close(4000, "done")
        with anyio.fail_after(WAIT):
            await b.connections[0].wait_closed()
        assert (b.connections[0].close_code, b.connections[0].close_reason) == (4000, "done")
        assert ws.close_code == 4000
        assert conn.session.state is not SessionState.OPEN
        assert not the_feed.on  # its pumps stopped, its sockets closed
        # The relays stayed on till the transports' loss, which let go of their cycle.
        assert all(isinstance(relay, RELAYS) for relay in relays)
        await until(lambda: all(relay.mate is None for relay in relays))


async def test_heartbeats_go_on_under_the_relay() -> None:
    """The proxy's pings go out and both peers' pongs (control frames: the driver's)
    are read while the session is relayed."""
    async with backend() as b:
        config = make_config([b], heartbeat={"interval": "100ms", "timeout": "10s"})
        async with running_proxy(config) as ctx, connect(url_of(ctx), ping_interval=None) as ws:
            await echoed(ws, [b"first"])
            conn = the_connection(ctx)
            assert relayed(conn)
            await until(lambda: len(conn.rtt) == 2)
            assert relayed(conn)  # still OPEN: still relayed
            await echoed(ws, [b"after the pongs"] * 20)
            await feeding(ws, conn)
            pings = len(conn.rtt)
            await until(lambda: conn._rtt_client is not None and conn._rtt_upstream is not None)
            assert pings == 2
            assert relayed(conn)


@pytest.mark.parametrize("direction", ["to_backend", "to_client"])
async def test_a_message_over_the_limit_closes_a_relayed_session_with_1009(
    direction: str
) -> None:
    big = os.urandom(5000)

    async def send_big(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(big)
        await ws.wait_closed()

    kwargs = {"handler": send_big} if direction == "to_client" else {}
    async with backend(**kwargs) as b:  # type: ignore[arg-type]
        config = make_config([b], limits={"max_message_size": 4096})
        async with running_proxy(config) as ctx, connect(url_of(ctx)) as ws:
            if direction == "to_backend":
                await echoed(ws, [b"small"])
            else:
                await until(lambda: len(ctx.registry.connections) == 1
                            and the_connection(ctx).opened)
            conn = the_connection(ctx)
            assert relayed(conn)
            if direction == "to_backend":
                await feeding(ws, conn)
            await ws.send(big if direction == "to_backend" else b"go")
            code, _ = await closed_by_proxy(ws)
            assert code == 1009
            assert not relayed(conn)
        with anyio.fail_after(WAIT):
            await b.connections[0].wait_closed()
        assert b.connections[0].close_code == 1009


async def test_a_drain_loses_no_accepted_message_of_a_relayed_stream() -> None:
    received: list[bytes] = []
    streaming = anyio.Event()

    async def record(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)  # type: ignore[arg-type]
            if len(received) == 200:
                streaming.set()

    attempted: list[bytes] = []
    sent: list[bytes] = []
    async with backend(handler=record) as b, running_proxy(make_config([b])) as ctx, \
            connect(url_of(ctx), ping_interval=None) as ws:

        async def stream() -> None:
            try:
                for i in range(1_000_000):
                    attempted.append(b"%d" % i)
                    await ws.send(b"%d" % i)
                    sent.append(b"%d" % i)
                    if i % 16 == 0:
                        await anyio.lowlevel.checkpoint()
            except ConnectionClosed:
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            with anyio.fail_after(WAIT):
                await streaming.wait()
            conn = the_connection(ctx)
            assert relayed(conn)
            assert fed(conn)
            ctx.drain(spread=0)
            code, _ = await closed_by_proxy(ws)
        with anyio.fail_after(WAIT):
            await b.connections[0].wait_closed()
    assert code == 1001
    assert b.connections[0].close_code == 1001
    assert received == attempted[: len(received)]
    assert len(received) >= len(sent) > 200
    assert not relayed(conn)


async def test_a_backend_restarting_under_the_relay_gives_its_client_1012() -> None:
    async def restart(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)
            if message == b"last":
                await ws.close(1012, "restarting")

    async with backend(handler=restart) as b, running_proxy(make_config([b])) as ctx, \
            connect(url_of(ctx), ping_interval=None) as ws:
        await echoed(ws, [b"a" * 64] * 50)
        conn = the_connection(ctx)
        assert relayed(conn)
        await feeding(ws, conn)
        await ws.send(b"last")
        assert await ws.recv() == b"last"  # accepted before the close: not lost
        code, _ = await closed_by_proxy(ws)
    assert code == 1012
    assert not relayed(conn)


async def test_a_backend_that_does_not_read_stalls_a_relayed_client() -> None:
    """Backpressure: the backend's full socket pauses reading the client (through the
    relay's pause_writing), and resumes it once the backend reads again."""
    reading = anyio.Event()
    received: list[bytes] = []

    async def slow(ws: ServerConnection) -> None:
        received.append(await ws.recv())  # type: ignore[arg-type]
        await reading.wait()
        async for message in ws:
            received.append(message)  # type: ignore[arg-type]

    message = os.urandom(1 << 16)  # uncompressed: every byte on the wire
    async with backend(handler=slow, max_size=None, compression=None) as b, \
            running_proxy(make_config([b])) as ctx, \
            connect(url_of(ctx), ping_interval=None, max_size=None, compression=None) as ws:
        await ws.send(b"hello")
        await until(lambda: len(received) == 1)
        conn = the_connection(ctx)
        assert relayed(conn)
        client = conn._client
        assert client is not None
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(FLOOD):  # far past every buffer on the way
                await ws.send(message)
                sent += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            await until(lambda: not client_read(conn))
            assert sent < FLOOD
            assert relayed(conn)
            reading.set()
            await until(lambda: sent == FLOOD and len(received) == FLOOD + 1)
        assert client_read(conn)
        assert received[1:] == [message] * FLOOD
        assert relayed(conn)
        assert fed(conn)  # late: started during the flood (32 MiB is many reads)


@pytest.mark.parametrize("how", ["eof", "reset"])
async def test_a_fed_client_that_goes_away_ends_its_session(how: str) -> None:
    """The client's socket ends under the feed (FIN, or RST: a read error) : the
    transport gets its reading back (and is aborted after an error), the driver ends
    the session as it does without the feed, the backend hears of it."""
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        ws = await connect(url_of(ctx), ping_interval=None)
        await echoed(ws, [b"hello"])
        conn = the_connection(ctx)
        await feeding(ws, conn)
        the_feed = conn._upstream.get_protocol().feeder.feed  # type: ignore[union-attr]
        sock = ws.transport.get_extra_info("socket")
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()
        with anyio.fail_after(WAIT):
            await b.connections[0].wait_closed()
        await until(lambda: not ctx.registry.connections)
        assert not the_feed.on
        assert conn.session.state is not SessionState.OPEN


async def test_no_feed_near_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Too close to the process's descriptor limit, a connection keeps its relay
    protocols without a feed (and without duplicates held)."""
    monkeypatch.setattr(direct, "_ceiling", [0])
    async with backend() as b, running_proxy(make_config([b])) as ctx, \
            connect(url_of(ctx), ping_interval=None) as ws:
        for _ in range(direct.FEED_AFTER + 2):
            await echoed(ws, [b"one read"])
        conn = the_connection(ctx)
        assert relayed(conn)
        assert not fed(conn)
        await echoed(ws, [b"still relayed"] * 10)


async def test_tls_transports_keep_their_reads(tmp_path: Path) -> None:
    """A TLS client (and so a TLS transport) gets relay protocols but never a feed: its
    socket carries records, not frames."""
    import trustme  # the TLS tests' throwaway CA

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_context)
    async with backend() as b:
        config = make_config(
            [b], listen={"tls": {"certfile": str(certfile), "keyfile": str(keyfile)}})
        async with running_proxy(config) as ctx:
            host, port = ctx.addresses[0]
            async with connect(f"wss://{host}:{port}", ssl=client_context,
                               ping_interval=None) as ws:
                for i in range(direct.FEED_AFTER + 2):
                    await echoed(ws, [b"%d" % i])
                conn = the_connection(ctx)
                assert relayed(conn)
                assert not fed(conn)
                await echoed(ws, [bytes([i]) * 64 for i in range(50)])


#: Connections fed at once in the hub tests.
MANY = 12


def fed_pumps(conns: list[Connection]) -> list[object]:
    """The pumps of these connections' feeds (two each, while fed)."""
    pumps = []
    for conn in conns:
        for t in (conn._client, conn._upstream):
            feeder = getattr(t.get_protocol(), "feeder", None) if t is not None else None
            if feeder is not None and feeder.pump is not None:
                pumps.append(feeder.pump)
    return pumps


def the_hub() -> hub.AnyHub:
    """The one hub of this loop (io.hub: every feed's pumps read through it)."""
    (only,) = hub.hubs(asyncio.get_running_loop())
    return only


async def test_many_fed_connections_share_one_hub_and_one_can_leave() -> None:
    """MANY connections fed at once: all their sockets in the loop's one hub, messages
    streamed on all of them at once come back whole and in order; one connection that
    closes leaves the hub while the others go on; the last one's end closes the hub."""
    async with backend() as b, running_proxy(make_config([b])) as ctx, \
            contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(url_of(ctx), ping_interval=None))
                   for _ in range(MANY)]
        for ws in clients:
            await echoed(ws, [b"hello"])
        conns = list(ctx.registry.connections.values())
        assert len(conns) == MANY
        for _ in range(direct.FEED_AFTER + 1):
            async with anyio.create_task_group() as tg:
                for ws in clients:
                    tg.start_soon(echoed, ws, [b"one read"])
        await until(lambda: all(fed(conn) for conn in conns))
        shared = the_hub()
        assert len(shared) == 2 * MANY
        assert all(p.hub is shared for p in fed_pumps(conns))  # type: ignore[attr-defined]

        async def stream(i: int, ws: ClientConnection) -> None:
            messages = [b"%d:%d" % (i, n) + bytes(n % 64) for n in range(300)]
            for start in range(0, len(messages), 30):  # windows of 30, as a load would
                await echoed(ws, messages[start:start + 30])

        async with anyio.create_task_group() as tg:
            for i, ws in enumerate(clients):
                tg.start_soon(stream, i, ws)
        leaving = clients.pop()
        await leaving.close()
        await until(lambda: len(shared) == 2 * (MANY - 1))
        assert hub.hubs(asyncio.get_running_loop()) == [shared]
        async with anyio.create_task_group() as tg:
            for i, ws in enumerate(clients):
                tg.start_soon(stream, i, ws)
        for ws in clients:
            await ws.close()
        await until(lambda: not ctx.registry.connections)
        await until(lambda: not hub.hubs(asyncio.get_running_loop()))


async def test_a_drain_loses_no_accepted_message_of_many_fed_streams() -> None:
    """MANY fed connections streaming to a backend that records: a drain closes each
    with 1001, and each stream's recorded messages are the first ones it sent, all
    those whose send returned among them."""
    received: dict[int, list[bytes]] = {i: [] for i in range(MANY)}
    streaming = anyio.Event()

    async def record(ws: ServerConnection) -> None:
        async for message in ws:
            i = int(bytes(message).split(b":", 1)[0])  # type: ignore[arg-type]
            received[i].append(bytes(message))  # type: ignore[arg-type]
            if all(len(r) >= 100 for r in received.values()):
                streaming.set()

    attempted: dict[int, list[bytes]] = {i: [] for i in range(MANY)}
    sent: dict[int, list[bytes]] = {i: [] for i in range(MANY)}
    codes: list[int] = []
    async with backend(handler=record) as b, running_proxy(make_config([b])) as ctx, \
            contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(url_of(ctx), ping_interval=None))
                   for _ in range(MANY)]

        async def stream(i: int, ws: ClientConnection) -> None:
            try:
                for n in range(1_000_000):
                    message = b"%d:%d" % (i, n)
                    attempted[i].append(message)
                    await ws.send(message)
                    sent[i].append(message)
                    if n % 16 == 0:
                        await anyio.lowlevel.checkpoint()
            except ConnectionClosed:
                pass

        async with anyio.create_task_group() as tg:
            for i, ws in enumerate(clients):
                tg.start_soon(stream, i, ws)
            with anyio.fail_after(WAIT):
                await streaming.wait()
            conns = list(ctx.registry.connections.values())
            await until(lambda: all(fed(conn) for conn in conns))  # their reads are whole
            assert len(the_hub()) == 2 * MANY
            ctx.drain(spread=0)
            for ws in clients:
                code, _ = await closed_by_proxy(ws)
                codes.append(code)
        with anyio.fail_after(WAIT):
            for c in b.connections:
                await c.wait_closed()
    assert codes == [1001] * MANY
    assert [c.close_code for c in b.connections] == [1001] * MANY
    for i in range(MANY):
        assert received[i] == attempted[i][: len(received[i])]
        assert len(received[i]) >= len(sent[i]) > 100
    assert not hub.hubs(asyncio.get_running_loop())
