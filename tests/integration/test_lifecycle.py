"""The connection lifecycle through a real proxy in this event loop (issue 3).

Heartbeats, idle and age limits, admission control, backend restarts and drains,
the "nothing lost" rule and the probes on the main listener. Peers are `websockets`
clients and servers, or, where the test must see or withhold single frames, raw TCP
peers that do the WebSocket handshake by hand (tests/helpers.py parses the frames).

Every wait is on an event (a close, an EOF, a frame, a counter reaching its mark),
bounded by a generous ``fail_after``. The time-based checks are lower bounds (a timer
never fires early), which a slow machine cannot break. Timeouts that healthy peers
must never trip (the heartbeat's, with `websockets` answering pings; an idle or age
limit before the first echo) are seconds long: a starved event loop does not trip
them. Only the peers that are deaf by design run into them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute, SocketStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import FrameReader, RawFrame, build_raw
from tests.integration.peers import (
    backend,
    closed_by_proxy,
    make_config,
    raw_exchange,
    running_proxy,
    upgrade_request,
)
from wsproxy.core import frames as fr
from wsproxy.core.session import PING_PREFIX
from wsproxy.core.states import Side
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

#: Bound on every wait for something that normally takes milliseconds.
WAIT = 10.0
#: Fast heartbeats: the sweeper then visits every 50 ms. The timeout is what a deaf
#: peer takes to be found, and far more than a healthy one ever takes to answer.
HEARTBEAT_TIMEOUT = 2.0
HEARTBEAT = {"interval": "200ms", "timeout": f"{HEARTBEAT_TIMEOUT}s"}
#: Heartbeats for tests in which no peer is deaf: nothing should time out.
CALM_HEARTBEAT = {"interval": "200ms", "timeout": "20s"}
HINT = re.compile(r"; retry-after-ms=\d+$")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def url_of(ctx: ProxyContext) -> str:
    host, port = ctx.addresses[0]
    return f"ws://{host}:{port}"


def backend_dict(name: str, port: int) -> dict[str, str]:
    return {"name": name, "url": f"ws://127.0.0.1:{port}"}


async def echoes(ws: ClientConnection, text: str = "still here") -> bool:
    with anyio.fail_after(WAIT):
        await ws.send(text)
        return await ws.recv() == text


# Raw peers ------------------------------------------------------------------------------


class RawPeer:
    """One side of a WebSocket connection, frame by frame, on an anyio stream."""

    def __init__(self, stream: SocketStream, *, client: bool) -> None:
        self.stream = stream
        self.client = client
        self.reader = FrameReader()
        self.eof = False

    async def read_head(self, initial: bytes = b"") -> bytes:
        """The HTTP head (up to the blank line); what follows goes to the frame reader."""
        data = initial
        while b"\r\n\r\n" not in data:
            data += await self.stream.receive()
        head, rest = data.split(b"\r\n\r\n", 1)
        self.reader.feed(rest)
        return head

    async def next_frame(self) -> RawFrame | None:
        """The next frame, or None at EOF (or a reset)."""
        while not self.reader.frames:
            try:
                self.reader.feed(await self.stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                self.eof = True
                return None
        return self.reader.frames.pop(0)

    async def send(self, opcode: int, payload: bytes = b"") -> None:
        await self.stream.send(build_raw(opcode, payload, mask=self.client))

    async def send_close(self, code: int, reason: str = "") -> None:
        await self.send(fr.CLOSE, code.to_bytes(2, "big") + reason.encode())


@asynccontextmanager
async def raw_backend(
    handler: Callable[[RawPeer], Awaitable[None]], *, after_101: bytes = b""
) -> AsyncIterator[int]:
    """A TCP server that accepts the WebSocket handshake by hand, then runs *handler*.

    *after_101* goes out in the same write as the 101: frames sent "at once".
    """

    async def serve_one(stream: SocketStream) -> None:
        async with stream:
            peer = RawPeer(stream, client=False)
            head = await peer.read_head()
            key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
            assert key is not None, head
            accept = base64.b64encode(hashlib.sha1(key.group(1) + GUID).digest())
            await stream.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                + after_101
            )
            await handler(peer)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def raw_client(port: int, path: str = "/") -> AsyncIterator[RawPeer]:
    """A client that has done its upgrade by hand (and answers nothing by itself)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        peer = RawPeer(stream, client=True)
        await stream.send(upgrade_request(path))
        with anyio.fail_after(WAIT):
            head = await peer.read_head()
        assert head.startswith(b"HTTP/1.1 101 "), head
        yield peer


# Heartbeats --------------------------------------------------------------------------------


async def test_backend_that_stops_answering_pings_gives_the_client_1014() -> None:
    seen: list[RawFrame] = []
    gone = anyio.Event()

    async def deaf(peer: RawPeer) -> None:
        """Reads everything, answers nothing (a hung app server)."""
        while (frame := await peer.next_frame()) is not None:
            seen.append(frame)
        gone.set()

    async with raw_backend(deaf) as port, running_proxy(
        make_config([backend_dict("deaf", port)], heartbeat=HEARTBEAT)
    ) as ctx:
        start = anyio.current_time()  # before the connection: a lower bound holds
        async with connect(url_of(ctx), ping_interval=None) as ws:
            code, _ = await closed_by_proxy(ws, within=HEARTBEAT_TIMEOUT + WAIT)
            elapsed = anyio.current_time() - start
        with anyio.fail_after(WAIT):
            await gone.wait()  # the backend's socket was closed, not left hanging
    assert code == 1014
    assert elapsed >= HEARTBEAT_TIMEOUT
    pings = [f for f in seen if f.opcode == fr.PING]
    assert pings
    assert all(f.payload.startswith(PING_PREFIX) and f.masked for f in pings)


async def test_client_that_never_answers_pings_gives_the_backend_1001() -> None:
    async with backend() as b, running_proxy(make_config([b], heartbeat=HEARTBEAT)) as ctx:
        async with raw_client(ctx.addresses[0][1]) as client:
            seen = []
            with anyio.fail_after(WAIT):
                while (frame := await client.next_frame()) is not None:
                    seen.append(frame)  # never answered
            assert client.eof
        server_side = b.connections[0]
        with anyio.fail_after(WAIT):
            await server_side.wait_closed()
    assert server_side.close_code == 1001
    pings = [f for f in seen if f.opcode == fr.PING]
    assert pings
    assert all(f.payload.startswith(PING_PREFIX) and not f.masked for f in pings)


#: Answered pings that take longer than HEARTBEAT_TIMEOUT at one per 200 ms interval:
#: a pong that did not count would have let the connection time out before.
PINGS_PAST_THE_TIMEOUT = 14


async def test_healthy_peers_answer_heartbeats_and_stay_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """websockets at both ends answer the proxy's pings; RTTs are kept for both legs."""
    async with backend() as b, running_proxy(
        make_config([b], heartbeat=HEARTBEAT)
    ) as ctx:
        rtts: dict[Side, list[float]] = {Side.CLIENT: [], Side.UPSTREAM: []}
        enough = anyio.Event()
        original = ctx.ping_rtt

        def record(side: Side, rtt: float) -> None:
            original(side, rtt)
            rtts[side].append(rtt)
            if min(len(v) for v in rtts.values()) >= PINGS_PAST_THE_TIMEOUT:
                enough.set()

        monkeypatch.setattr(ctx, "ping_rtt", record)
        async with connect(url_of(ctx), ping_interval=None) as ws:
            with anyio.fail_after(HEARTBEAT_TIMEOUT + WAIT):
                await enough.wait()
            [conn] = ctx.registry.connections.values()
            assert set(conn.rtt) == {Side.CLIENT, Side.UPSTREAM}
            assert all(rtt >= 0 for v in rtts.values() for rtt in v)
            assert await echoes(ws)
        assert ws.close_code == 1000
    assert len(b.connections) == 1


async def test_backend_sees_only_the_proxys_own_pings_never_relayed_pongs() -> None:
    """The client's pongs to the proxy's pings stay in the proxy; the client's own
    pings still go end to end."""
    seen: list[RawFrame] = []
    pinged = anyio.Event()

    async def answering(peer: RawPeer) -> None:
        while (frame := await peer.next_frame()) is not None:
            seen.append(frame)
            if frame.opcode == fr.PING:
                await peer.send(fr.PONG, frame.payload)
            elif frame.opcode in (fr.TEXT, fr.BINARY):
                await peer.send(frame.opcode, frame.payload)
            elif frame.opcode == fr.CLOSE:
                await peer.send(fr.CLOSE, frame.payload)
                return
            if sum(f.opcode == fr.PING for f in seen) >= 4:
                pinged.set()

    async with raw_backend(answering) as port, running_proxy(
        make_config([backend_dict("raw", port)], heartbeat=CALM_HEARTBEAT)
    ) as ctx, connect(url_of(ctx), ping_interval=None) as ws:
        with anyio.fail_after(WAIT):
            await pinged.wait()
            pong = await ws.ping(b"client's own")
            await pong
        assert await echoes(ws)
        [conn] = ctx.registry.connections.values()
        assert Side.UPSTREAM in conn.rtt
    assert not [f for f in seen if f.opcode == fr.PONG]
    pings = [f.payload for f in seen if f.opcode == fr.PING]
    ours = [p for p in pings if p.startswith(PING_PREFIX)]
    assert len(ours) >= 3
    assert [p for p in pings if not p.startswith(PING_PREFIX)] == [b"client's own"]


# Idle and age limits --------------------------------------------------------------------


#: Idle and age limits: long enough for the connection's first echo on a loaded machine.
LIMIT = 2.0


async def test_idle_timeout_closes_with_1001() -> None:
    async with backend() as b, running_proxy(make_config(
        [b], heartbeat=CALM_HEARTBEAT, limits={"idle_timeout": f"{LIMIT}s"}
    )) as ctx, connect(url_of(ctx), ping_interval=None) as ws:
        assert await echoes(ws)
        last_message = anyio.current_time()
        code, reason = await closed_by_proxy(ws, within=LIMIT + WAIT)
        idle_for = anyio.current_time() - last_message
    assert (code, reason) == (1001, "idle timeout")
    assert idle_for >= LIMIT
    server_side = b.connections[0]
    with anyio.fail_after(WAIT):
        await server_side.wait_closed()
    assert server_side.close_code == 1001  # the client's answer, relayed


async def test_max_connection_age_closes_with_1012() -> None:
    async with backend() as b, running_proxy(make_config(
        [b], heartbeat=CALM_HEARTBEAT, limits={"max_connection_age": f"{LIMIT}s"},
    )) as ctx:
        opened = anyio.current_time()
        async with connect(url_of(ctx), ping_interval=None) as ws:
            assert await echoes(ws)
            code, reason = await closed_by_proxy(ws, within=LIMIT * 1.1 + WAIT)
        age = anyio.current_time() - opened
    assert code == 1012
    assert reason.startswith("connection age limit")
    assert HINT.search(reason)
    assert age >= LIMIT


# Admission --------------------------------------------------------------------------------


async def test_upgrades_over_the_rate_get_503_with_retry_after() -> None:
    # 0.25/s: the refill takes 4 s, so "immediate" holds on any machine.
    async with backend() as b, running_proxy(
        make_config([b], admission={"max_upgrade_rate": 0.25, "burst": 1})
    ) as ctx:
        async with connect(url_of(ctx)) as ws:
            assert await echoes(ws)
            with pytest.raises(InvalidStatus) as exc:
                async with connect(url_of(ctx)):
                    pass
        response = exc.value.response
        assert response.status_code == 503
        assert 1 <= int(response.headers["Retry-After"]) <= 4
        assert len(b.requests) == 1  # the backend never heard of the refused one


async def test_burst_lets_that_many_through_at_once() -> None:
    # 0.1/s: a token takes 10 s to come back, far longer than four upgrades take.
    async with backend() as b, running_proxy(
        make_config([b], admission={"max_upgrade_rate": 0.1, "burst": 3})
    ) as ctx:
        port = ctx.addresses[0][1]
        answers = [await raw_exchange(port, upgrade_request(), read_until_eof=False)
                   for _ in range(4)]
    statuses = [a.split(b" ", 2)[1] for a in answers]
    assert statuses[:3] == [b"101"] * 3
    assert statuses[3] == b"503"
    retry = re.search(rb"(?im)^retry-after: (\d+)\r$", answers[3])
    assert retry is not None
    assert 1 <= int(retry.group(1)) <= 10
    assert len(b.requests) == 3


# Backend restarts and drains --------------------------------------------------------------


async def test_backend_restart_close_gives_1012_and_holds_the_backend_down() -> None:
    async with backend("b1") as b1, backend("b2") as b2, running_proxy(
        make_config([b1, b2], drain={"backend_hold_down": "60s"})
    ) as ctx:
        async with connect(url_of(ctx)) as ws:
            assert await echoes(ws)
            [restarting] = [b for b in (b1, b2) if b.connections]
            [other] = [b for b in (b1, b2) if b is not restarting]
            server_side = restarting.connections[0]
            await server_side.close(1012, "redeploying")
            code, reason = await closed_by_proxy(ws)
        assert code == 1012
        assert reason.startswith("backend restarting")
        assert HINT.search(reason)
        assert server_side.close_code == 1012  # its close was answered
        assert ctx.balancer.backends[restarting.name].held
        for i in range(3):  # the next upgrades all go to the other backend
            async with connect(url_of(ctx) + f"/next{i}") as ws:
                assert await echoes(ws)
        assert len(restarting.connections) == 1
        assert [path for path, _ in other.requests] == ["/next0", "/next1", "/next2"]


async def test_backend_closing_with_1012_right_after_its_101_is_held_down() -> None:
    """A backend on its way down accepts the upgrade and closes at once with 1012
    (the close in the same segment as its 101): the client gets 1012 and the next
    upgrades go elsewhere. (Regression: such a backend was never held down.)"""

    async def wait_for_eof(peer: RawPeer) -> None:
        while await peer.next_frame() is not None:
            pass

    restart = build_raw(fr.CLOSE, (1012).to_bytes(2, "big") + b"restarting", mask=False)
    async with raw_backend(wait_for_eof, after_101=restart) as port, backend("b2") as b2, \
            running_proxy(make_config([backend_dict("down", port), {"name": b2.name,
                                                                    "url": b2.url}],
                                      balance="round_robin")) as ctx:
        codes = []
        for i in range(4):
            async with connect(url_of(ctx) + f"/u{i}") as ws:
                with suppress(ConnectionClosed):
                    assert await echoes(ws)
            codes.append(ws.close_code)
        assert codes.count(1012) >= 1  # the restart close was translated
        assert ctx.balancer.backends["down"].held
        assert codes.count(1012) == 1  # ... and "down" got no upgrade after it


#: Long enough for a close and a refused upgrade while it lasts, on a loaded machine.
HOLD_DOWN = 3.0


async def test_hold_down_ends_after_its_time() -> None:
    async with backend("b1") as b1, running_proxy(
        make_config([b1], drain={"backend_hold_down": f"{HOLD_DOWN}s"})
    ) as ctx:
        async with connect(url_of(ctx)) as ws:
            before_the_hold = anyio.current_time()
            await b1.connections[0].close(1001, "restarting")
            assert (await closed_by_proxy(ws))[0] == 1012
        state = ctx.balancer.backends["b1"]
        assert state.held
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url_of(ctx)):
                pass
        assert exc.value.response.status_code == 503  # no backend left in rotation
        with anyio.fail_after(HOLD_DOWN + WAIT):
            while state.held:  # noqa: ASYNC110 - the release has no event to wait on
                await anyio.sleep(0.01)
        # Released, and not before its time (the hold began after before_the_hold).
        assert anyio.current_time() - before_the_hold >= HOLD_DOWN
        async with connect(url_of(ctx)) as ws:
            assert await echoes(ws)


async def test_drain_backend_closes_only_its_clients_who_reconnect_to_the_other() -> None:
    async with backend("b1") as b1, backend("b2") as b2, running_proxy(
        make_config([b1, b2], drain={"spread": "5s"})
    ) as ctx, connect(url_of(ctx) + "/c0") as c0, connect(url_of(ctx) + "/c1") as c1, \
            connect(url_of(ctx) + "/c2") as c2, connect(url_of(ctx) + "/c3") as c3:
        clients = {"/c0": c0, "/c1": c1, "/c2": c2, "/c3": c3}
        on_b1 = [clients[path] for path, _ in b1.requests]
        on_b2 = [clients[path] for path, _ in b2.requests]
        assert len(on_b1) == len(on_b2) == 2  # least_connections balances them

        state = ctx.balancer.backends["b1"]
        drain = ctx.drain_backend(state, spread=0.5)
        assert ctx.ready  # a backend's drain leaves the proxy ready
        for ws in on_b1:
            code, reason = await closed_by_proxy(ws)
            assert code == 1012
            assert reason.startswith("backend draining")
            assert HINT.search(reason)
        with anyio.fail_after(WAIT):
            await drain.done.wait()
        for ws in on_b2:
            assert await echoes(ws)  # untouched
        # The closed clients reconnect: to b2 only.
        for i in range(2):
            async with connect(url_of(ctx) + f"/again{i}") as ws:
                assert await echoes(ws)
        assert [p for p, _ in b2.requests][-2:] == ["/again0", "/again1"]
        assert len(b1.requests) == 2

        assert ctx.undrain_backend(state)
        assert not state.draining
        async with connect(url_of(ctx) + "/back") as ws:  # b1 has the fewest now
            assert await echoes(ws)
        assert b1.requests[-1][0] == "/back"
        for ws in on_b2:
            assert await echoes(ws)


# Nothing lost ---------------------------------------------------------------------------------


def recording_backend(received: list[str], mark: int, marked: anyio.Event
                      ) -> Callable[[ServerConnection], Awaitable[None]]:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(str(message))
            if len(received) == mark:
                marked.set()
    return handler


async def test_nothing_lost_when_the_proxy_drains_a_streaming_client() -> None:
    """Every message the client sent before it got the close reaches the backend,
    in order and without a gap."""
    received: list[str] = []
    streaming = anyio.Event()
    attempted: list[str] = []
    sent: list[str] = []
    async with backend(handler=recording_backend(received, 200, streaming)) as b, \
            running_proxy(make_config([b])) as ctx, \
            connect(url_of(ctx), ping_interval=None) as ws:

        async def stream() -> None:
            with suppress(ConnectionClosed):
                for i in range(1_000_000):
                    attempted.append(str(i))
                    await ws.send(str(i))
                    sent.append(str(i))
                    if i % 16 == 0:
                        await anyio.lowlevel.checkpoint()  # let the proxy, backend run

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            with anyio.fail_after(WAIT):
                await streaming.wait()
            ctx.drain(spread=0)
            code, reason = await closed_by_proxy(ws)
        server_side = b.connections[0]
        with anyio.fail_after(WAIT):
            await server_side.wait_closed()
    assert code == 1001
    assert reason.startswith("proxy draining")
    assert server_side.close_code == 1001
    assert len(sent) > 200
    # A prefix of what was attempted, and at least all that was sent for sure.
    assert received == attempted[: len(received)]
    assert len(received) >= len(sent)


async def test_messages_sent_after_the_close_frame_and_before_the_reply_still_arrive() -> None:
    received: list[str] = []
    first_batch = anyio.Event()
    async with backend(handler=recording_backend(received, 10, first_batch)) as b, \
            running_proxy(make_config([b])) as ctx:
        async with raw_client(ctx.addresses[0][1]) as client:
            for i in range(10):
                await client.send(fr.TEXT, f"before {i}".encode())
            with anyio.fail_after(WAIT):
                await first_batch.wait()
            ctx.drain(spread=0)
            with anyio.fail_after(WAIT):
                close = await client.next_frame()
            assert close is not None
            assert close.opcode == fr.CLOSE
            assert close.close[0] == 1001
            # The client still has things to say before it answers the close.
            for i in range(20):
                await client.send(fr.TEXT, f"after {i}".encode())
            await client.send_close(1001, "ok, going")
            with anyio.fail_after(WAIT):
                while await client.next_frame() is not None:
                    pass  # until the proxy closes the socket
        server_side = b.connections[0]
        with anyio.fail_after(WAIT):
            await server_side.wait_closed()
    assert received == [f"before {i}" for i in range(10)] + [f"after {i}" for i in range(20)]
    assert (server_side.close_code, server_side.close_reason) == (1001, "ok, going")


# Probes and the proxy's drain ------------------------------------------------------------------


async def probe(port: int, path: str) -> tuple[int, bytes]:
    answer = await raw_exchange(port, f"GET {path} HTTP/1.1\r\nHost: pod\r\n\r\n".encode())
    status = int(answer.split(b" ", 2)[1])
    return status, answer


async def test_probes_on_the_main_listener() -> None:
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        port = ctx.addresses[0][1]
        assert (await probe(port, "/healthz"))[0] == 200
        assert (await probe(port, "/readyz"))[0] == 200
        assert (await probe(port, "/readyz?full=1"))[0] == 200
        assert (await probe(port, "/other"))[0] == 400
        assert b.requests == []  # probes never reach a backend


async def test_drain_turns_unready_at_once_and_refuses_upgrades_after_the_delay() -> None:
    async with backend() as b, running_proxy(
        make_config([b], drain={"delay": "60s", "spread": "0s"})
    ) as ctx:
        port = ctx.addresses[0][1]
        async with connect(url_of(ctx)) as before:
            ctx.drain()
            assert not ctx.ready
            assert (await probe(port, "/readyz"))[0] == 503
            assert (await probe(port, "/healthz"))[0] == 200
            # During the delay, load balancers catch up: upgrades are still accepted.
            async with connect(url_of(ctx)) as during:
                assert await echoes(during)
                assert await echoes(before)
                ctx.hurry()  # end the delay now rather than in 60 s
                for ws in (before, during):
                    code, reason = await closed_by_proxy(ws)
                    assert code == 1001
                    assert reason.startswith("proxy draining")
                    assert HINT.search(reason)
        # After the delay: 503 with Retry-After, the listener still open.
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url_of(ctx)):
                pass
        assert exc.value.response.status_code == 503
        assert int(exc.value.response.headers["Retry-After"]) >= 1
        assert (await probe(port, "/readyz"))[0] == 503
        assert len(b.requests) == 2

        assert ctx.undrain()
        assert (await probe(port, "/readyz"))[0] == 200
        async with connect(url_of(ctx)) as ws:
            assert await echoes(ws)


async def test_closes_wait_for_the_drain_delay() -> None:
    async with backend() as b, running_proxy(
        make_config([b], drain={"delay": "300ms", "spread": "0s"})
    ) as ctx, connect(url_of(ctx)) as ws:
        start = anyio.current_time()
        ctx.drain()
        code, _ = await closed_by_proxy(ws)
        assert code == 1001
        assert anyio.current_time() - start >= 0.3


async def test_proxy_drain_spread_closes_each_client_once() -> None:
    """A spread drain in-process: every client gets exactly one 1001, and the drain
    reports what it closed."""
    async with backend() as b, running_proxy(
        make_config([b], drain={"spread": "500ms"})
    ) as ctx:
        async with connect(url_of(ctx)) as a, connect(url_of(ctx)) as c, \
                connect(url_of(ctx)) as d:
            drain = ctx.drain()
            results = [await closed_by_proxy(ws) for ws in (a, c, d)]
            with anyio.fail_after(WAIT):
                await drain.done.wait()
        assert [code for code, _ in results] == [1001] * 3
        status: dict[str, Any] = drain.status(anyio.current_time())
        assert (status["left"], status["closed"]) == (0, 3)


async def test_backend_messages_after_the_client_close_frame_are_counted() -> None:
    """RFC 6455 §5.5.1: nothing may follow our close frame to the client. What the
    backend sends meanwhile is counted as undelivered, never silently dropped."""
    async with backend(handler=lambda ws: ws.wait_closed()) as b, \
            running_proxy(make_config([b])) as ctx, \
            raw_client(ctx.addresses[0][1]) as client:
        [conn] = ctx.registry.connections.values()
        drain = ctx.drain(spread=0)
        with anyio.fail_after(WAIT):
            close = await client.next_frame()
        assert close is not None
        assert close.close[0] == 1001
        server_side = b.connections[0]
        for i in range(5):
            await server_side.send(f"late {i}")
        await client.send_close(1001)
        after = []
        with anyio.fail_after(WAIT):
            while (frame := await client.next_frame()) is not None:
                after.append(frame)
        with anyio.fail_after(WAIT):
            await drain.done.wait()  # the connection has ended: all was read
    assert after == []
    assert conn.session.undelivered(Side.CLIENT) == 5
    assert conn.summary()["undelivered_to_client"] == 5


async def test_drain_timeout_closes_what_is_left_with_a_close_to_the_backend() -> None:
    """A client that never answers its close frame is cut at ``drain.timeout``; its
    backend still gets a close frame."""
    async with backend() as b, running_proxy(make_config(
        [b], heartbeat={"interval": "20s", "timeout": "20s"},
        drain={"spread": "0s", "timeout": "500ms"},
    )) as ctx:
        async with raw_client(ctx.addresses[0][1]) as client:
            start = anyio.current_time()
            drain = ctx.drain()
            seen = []
            with anyio.fail_after(WAIT):
                while (frame := await client.next_frame()) is not None:
                    seen.append(frame)  # the close frame, never answered
            elapsed = anyio.current_time() - start
        with anyio.fail_after(WAIT):
            await drain.done.wait()
        server_side = b.connections[0]
        with anyio.fail_after(WAIT):
            await server_side.wait_closed()
    assert [f.close[0] for f in seen if f.opcode == fr.CLOSE] == [1001]
    assert elapsed >= 0.5
    assert server_side.close_code == 1001


async def test_client_that_never_answers_its_close_still_leaves_the_backend_a_close() -> None:
    """The client ignores its drain close for heartbeat.timeout: it is given up, and
    its backend gets 1001 as when a client leg dies. (Regression: both legs were
    aborted and the backend saw 1006.)"""
    async with backend() as b, running_proxy(make_config(
        [b], heartbeat={"interval": "20s", "timeout": "1s"},
        drain={"spread": "0s", "timeout": "20s"},
    )) as ctx:
        async with raw_client(ctx.addresses[0][1]) as client:
            ctx.drain()
            with anyio.fail_after(WAIT):
                while await client.next_frame() is not None:
                    pass  # the close frame, never answered; then EOF
        server_side = b.connections[0]
        with anyio.fail_after(WAIT):
            await server_side.wait_closed()
    assert server_side.close_code == 1001  # as when the client leg dies (SPEC)


async def test_backend_that_never_answers_a_close_still_leaves_the_client_an_answer() -> None:
    """The backend never answers the relayed close: after heartbeat.timeout the
    client gets its close answered by the proxy. (Regression: it saw 1006.)"""
    async def deaf(peer: RawPeer) -> None:
        while await peer.next_frame() is not None:
            pass

    async with raw_backend(deaf) as port, running_proxy(make_config(
        [backend_dict("deaf", port)], heartbeat={"interval": "20s", "timeout": "1s"},
    )) as ctx, connect(url_of(ctx), ping_interval=None, close_timeout=WAIT) as ws:
        with anyio.fail_after(WAIT):
            await ws.close(1000, "bye")
    assert ws.close_code == 1000


# Reload, in process (the SIGHUP path is in test_drain_process.py) ---------------------------


async def test_reload_adds_a_backend_and_leaves_open_connections_alone() -> None:
    async with backend("b1") as b1, backend("b2") as b2, running_proxy(make_config([b1])) as ctx, \
            connect(url_of(ctx) + "/old") as old:
        assert await echoes(old)
        ctx.apply_config(make_config([b1, b2]))
        assert set(ctx.balancer.backends) == {"b1", "b2"}
        assert ctx.drains == {}
        async with connect(url_of(ctx) + "/new") as new:  # b2 has the fewest
            assert await echoes(new)
        assert [p for p, _ in b2.requests] == ["/new"]
        assert await echoes(old)
        assert [p for p, _ in b1.requests] == ["/old"]


async def test_reload_drains_a_removed_backend_with_the_new_drain_settings() -> None:
    """The drains a reload starts follow the new file's ``drain`` section."""
    async with backend("b1") as b1, backend("b2") as b2, running_proxy(
        make_config([b1, b2], drain={"spread": "20s"})
    ) as ctx:
        state = ctx.balancer.backends["b2"]
        ctx.apply_config(make_config([b1], drain={"spread": "1s", "backend_close_code": 4000}))
        assert state.removed
        drain = ctx.drains[state]
        assert (drain.spread, drain.code) == (1.0, 4000)
