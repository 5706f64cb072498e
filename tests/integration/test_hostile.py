"""Slow and stuck peers against a real proxy (issue 9, "Slow and stuck peers").

- Slowloris: clients that drip their upgrade a byte at a time are closed at
  ``limits.handshake_timeout``; a crowd of them does not keep a normal client out.
- A client that reads nothing while its backend keeps sending: the proxy (a
  subprocess, so that its resident memory can be read from /proc) stays bounded, the
  backend's sends stall, and once the client reads again every message arrives, in
  order, and the backend goes on.
- A backend that accepts TCP and never answers the upgrade: the next backend is tried
  after ``limits.backend_timeout``; with no other backend the client gets 502.

Everything listens on 127.0.0.1; every wait is bounded; readiness comes from the
peers themselves (sockets bound, the proxy's ``proxy.listening`` log line). Timeouts
are checked from below (a timer never fires early) and, from above, only against the
default they must be told apart from: a loaded machine makes things later, not sooner.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.helpers import parse_frame
from tests.integration.peers import (
    Backend,
    backend,
    make_config,
    raw_exchange,
    rss,
    running_proxy,
    upgrade_request,
)
from tests.integration.proxy_process import EXIT_TIMEOUT, Running, proxy_process
from wsproxy.config import LimitsConfig
from wsproxy.io.links import LINKS

pytestmark = pytest.mark.anyio

MIB = 1 << 20


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def echo_round_trip(url: str, count: int = 5) -> None:
    async with connect(url, open_timeout=5, close_timeout=2) as ws:
        for i in range(count):
            await ws.send(f"hello {i}")
            with anyio.fail_after(5):
                assert await ws.recv() == f"hello {i}"


# Slowloris…

HANDSHAKE_TIMEOUT = 0.5
#: What the configured timeouts must be told apart from (limits.handshake_timeout's
#: and limits.backend_timeout's defaults).
DEFAULT_HANDSHAKE_TIMEOUT = LimitsConfig().handshake_timeout
DEFAULT_BACKEND_TIMEOUT = LimitsConfig().backend_timeout
#: One byte every DRIP seconds (or slower): the whole request takes 8 s or more.
DRIP = 0.05


@dataclass
class Drip:
    """What one slowloris client saw."""

    sent: int = 0
    closed_after: float | None = None
    answer: bytes = b""


async def slowloris(port: int, drip: Drip, *, connected: anyio.Event | None = None) -> None:
    """Send a valid upgrade one byte every DRIP seconds until the proxy hangs up."""
    request = upgrade_request()
    started = anyio.current_time()
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if connected is not None:
            connected.set()
        with anyio.fail_after(10):  # the request alone would take len(request) * DRIP
            for byte in request:
                try:
                    await stream.send(bytes([byte]))
                    drip.sent += 1
                    with anyio.move_on_after(DRIP):  # the pace, and a watch for the end
                        data = await stream.receive()
                        drip.answer += data
                        continue  # an answer: read on until the end
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    drip.closed_after = anyio.current_time() - started
                    return
    raise AssertionError(f"the whole request went through: {drip}")


async def test_slowloris_is_closed_at_the_handshake_timeout() -> None:
    async with backend() as b:
        config = make_config([b], limits={"handshake_timeout": f"{HANDSHAKE_TIMEOUT}s"})
        async with running_proxy(config) as ctx:
            drip = Drip()
            await slowloris(ctx.addresses[0][1], drip)
    assert drip.closed_after is not None
    # Cut at this config's timeout (from below), not at the default one (from above).
    assert HANDSHAKE_TIMEOUT * 0.9 <= drip.closed_after < DEFAULT_HANDSHAKE_TIMEOUT, drip
    assert drip.sent < len(upgrade_request())
    assert drip.answer == b""  # closed, nothing else: no 101, no backend
    assert not b.requests


SLOWLORIS_CROWD = 100
#: Long enough to serve a normal client while the crowd drips on a loaded machine;
#: short of the 8 s a dripped request takes.
CROWD_TIMEOUT = 4.0


@pytest.mark.exclusive  # 100 drippers connected and a client served within CROWD_TIMEOUT
async def test_a_crowd_of_slowloris_does_not_keep_a_normal_client_out() -> None:
    drips = [Drip() for _ in range(SLOWLORIS_CROWD)]
    async with backend() as b:
        config = make_config([b], limits={"handshake_timeout": f"{CROWD_TIMEOUT}s"})
        async with running_proxy(config) as ctx, anyio.create_task_group() as tg:
            port = ctx.addresses[0][1]
            # All at once, not one after another: on a loaded machine 100 connects in
            # turn can outlast CROWD_TIMEOUT, and the first drippers are cut before the
            # normal client even starts.
            connected = [anyio.Event() for _ in drips]
            for drip, event in zip(drips, connected, strict=True):
                tg.start_soon(functools.partial(slowloris, port, drip, connected=event))
            for event in connected:
                await event.wait()
            # All connected (and queued for the proxy's accept before the normal client).
            started = anyio.current_time()
            await echo_round_trip(f"ws://127.0.0.1:{port}/", count=10)
            served_in = anyio.current_time() - started
            still_dripping = sum(d.closed_after is None for d in drips)
            held_by_the_proxy = len(ctx.registry)  # the drippers, accepted and still held
        # The task group waited for every slowloris to be cut off.
    # Served while every dripper was still held: it did not wait for them to be cut.
    assert still_dripping == SLOWLORIS_CROWD, f"served after them, in {served_in:.2f} s"
    assert held_by_the_proxy >= SLOWLORIS_CROWD
    # Every dripper cut before its request was through (slowloris() checks that),
    # and not before its timeout.
    assert all(d.closed_after is not None for d in drips)
    earliest = min(d.closed_after for d in drips if d.closed_after is not None)
    assert earliest >= CROWD_TIMEOUT * 0.9, earliest
    assert all(d.answer == b"" for d in drips)
    assert len(b.requests) == 1  # the normal client only


# A client that reads nothing…

#: A message of the flooding backend: 8 bytes of sequence number, then filler.
MESSAGE_SIZE = 256 << 10
#: No progress for this long: the backend's sends are stalled.
STALL = 1.0
#: The most the backend may push before it must have been stalled.
FLOOD_CAP = 128 * MIB
#: How much the proxy's resident memory may grow while the pipe is full.
MAX_RSS_GROWTH = 32 * MIB


@asynccontextmanager
async def flood_proxy(tmp_path: Path, backend_url: str) -> AsyncIterator[Running]:
    """``python -m wsproxy run`` in front of *backend_url*; SIGTERM, then SIGKILL by PID."""
    config = (
        "listen: {host: 127.0.0.1, port: 0}\n"
        "admin: {host: 127.0.0.1, port: 0}\n"
        f'backends: [{{name: flood, url: "{backend_url}"}}]\n'
        "heartbeat: {interval: 30s, timeout: 30s}\n"
        "drain: {spread: 0s, timeout: 1s}\n"
        "logging: {level: info, format: json}\n"
    )
    async with proxy_process(config, tmp_path, stop_grace=EXIT_TIMEOUT) as proxy:
        yield proxy


@dataclass
class Flood:
    """The flooding backend's progress: messages whose send() has returned."""

    sent: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)


def flooding_handler(flood: Flood):  # type: ignore[no-untyped-def]
    filler = os.urandom(MESSAGE_SIZE - 8)

    async def send_for_ever(ws: ServerConnection) -> None:
        seq = 0
        with anyio.move_on_after(60):  # bounds, far past the test's own
            while flood.sent * MESSAGE_SIZE < FLOOD_CAP * 2:
                try:
                    await ws.send(seq.to_bytes(8, "big") + filler)
                except ConnectionClosed:
                    return  # the test is over: the client went away
                seq += 1
                flood.sent = seq
                flood.changed.set()
                flood.changed = anyio.Event()

    return send_for_ever


async def wait_until_stalled(flood: Flood) -> None:
    """Until the backend made no progress for STALL seconds (or passed the cap)."""
    with anyio.fail_after(30):
        while flood.sent * MESSAGE_SIZE < FLOOD_CAP:
            with anyio.move_on_after(STALL):
                await flood.changed.wait()
                continue
            return
    raise AssertionError(f"never stalled: {flood.sent * MESSAGE_SIZE / MIB:.0f} MiB sent")


async def read_messages(stream: SocketStream, count: int, buffer: bytearray) -> list[int]:
    """The sequence numbers of the next *count* binary messages on a raw client socket."""
    seqs: list[int] = []
    with anyio.fail_after(20):
        while len(seqs) < count:
            frame, used = parse_frame(buffer)
            if frame is None:
                buffer += await stream.receive(1 << 20)
                continue
            del buffer[:used]
            assert frame.opcode == 0x2, frame.opcode
            assert len(frame.payload) == MESSAGE_SIZE
            seqs.append(int.from_bytes(frame.payload[:8], "big"))
    return seqs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
async def test_a_client_that_reads_nothing_stalls_the_backend_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    flood = Flood()
    peaks: list[int] = []
    async with (
        backend(handler=flooding_handler(flood), compression=None, max_size=None) as b,
        flood_proxy(tmp_path, b.url) as proxy,
        await anyio.connect_tcp("127.0.0.1", proxy.port) as client,
    ):
        before = rss(proxy.pid)
        await client.send(upgrade_request())
        buffer = bytearray()
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in buffer:
                buffer += await client.receive()
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        buffer = bytearray(rest)

        async def sample() -> None:
            while True:
                peaks.append(rss(proxy.pid))
                await anyio.sleep(0.05)  # a sampling pace, not a synchronisation

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            await wait_until_stalled(flood)  # the client has read nothing all along
            tg.cancel_scope.cancel()
        stalled_at = flood.sent
        peak = max(peaks)

        # The client reads again: everything the backend sent arrives, in order, and
        # the backend goes on.
        seqs = await read_messages(client, stalled_at + 8, buffer)
        assert seqs == list(range(stalled_at + 8))
        with anyio.fail_after(10):
            while flood.sent <= stalled_at:
                await flood.changed.wait()
        await client.aclose()
    growth = peak - before
    detail = (f"backend stalled after {stalled_at * MESSAGE_SIZE / MIB:.0f} MiB; proxy RSS "
              f"{before / MIB:.1f} -> peak {peak / MIB:.1f} MiB")
    assert stalled_at * MESSAGE_SIZE < FLOOD_CAP, detail
    assert growth < MAX_RSS_GROWTH, detail


# A backend that never answers the upgrade…

#: The good backend's upgrade faces it too: long enough for it on a loaded machine.
BACKEND_TIMEOUT = 1.0


@dataclass
class Silent:
    """A TCP server that accepts and never answers (or answers half a 101)."""

    url: str
    accepted: int = 0
    #: Connections the proxy dropped (EOF or reset seen by the server).
    dropped: int = 0
    gone: anyio.Event = field(default_factory=anyio.Event)
    requests: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def silent_backend(half_answer: bytes = b"") -> AsyncIterator[Silent]:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.accepted += 1
        try:
            silent.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if half_answer:
                writer.write(half_answer)
            while await reader.read(1 << 16):  # until the proxy hangs up
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            silent.dropped += 1
            silent.gone.set()
            writer.transport.abort()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent = Silent(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        yield silent
    finally:
        server.close()
        await server.wait_closed()


HALF_ANSWERS = {
    "says-nothing": b"",
    "half-a-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
}


def backends(*peers: Silent | Backend) -> list[dict[str, str]]:
    return [{"name": f"b{i}", "url": peer.url} for i, peer in enumerate(peers)]


@pytest.mark.parametrize("half_answer", HALF_ANSWERS.values(), ids=HALF_ANSWERS.keys())
async def test_a_backend_that_never_answers_is_left_for_the_next_after_backend_timeout(
    half_answer: bytes,
) -> None:
    async with silent_backend(half_answer) as silent, backend() as good:
        config = make_config(
            backends(silent, good), limits={"backend_timeout": f"{BACKEND_TIMEOUT}s"},
            balance="round_robin",
        )
        async with running_proxy(config) as ctx:
            url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
            times = []
            for _ in range(2):  # round robin: one of the two tries the silent one first
                started = anyio.current_time()
                await echo_round_trip(url)
                times.append(anyio.current_time() - started)
            with anyio.fail_after(5):  # the proxy dropped its connection to the silent one
                while silent.dropped < silent.accepted:
                    await silent.gone.wait()
                    silent.gone = anyio.Event()
    assert silent.accepted == 1, silent
    assert silent.requests[0].startswith(b"GET / HTTP/1.1\r\n")  # it was asked
    assert len(good.requests) == 2
    # One upgrade waited for the silent backend's timeout (not the default one's); the
    # other went straight to the good one (silent.accepted == 1 says so).
    assert BACKEND_TIMEOUT <= max(times) < DEFAULT_BACKEND_TIMEOUT, times


async def round_robin_pair(port: int) -> list[float]:
    """Two echo round trips through the proxy on *port*, each one's time: under
    round_robin one of the two tries the first backend first."""
    times = []
    for _ in range(2):
        started = anyio.current_time()
        await echo_round_trip(f"ws://127.0.0.1:{port}/")
        times.append(anyio.current_time() - started)
    return times


async def test_a_connect_that_hangs_is_cancelled_after_backend_timeout_and_the_next_tried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dial stuck in the connect itself (a SYN nobody answers; simulated, loopback
    always answers): at limits.backend_timeout the connecting task is cancelled (its
    socket closed) and the next backend serves the upgrade."""
    from wsproxy.io import connection

    real_dial = connection.dial_backend
    hung: list[str] = []
    cancelled = anyio.Event()

    async def dial(
        loop: Any, factory: Any, state: Any, context: Any, tls: Any, engine: Any = None
    ) -> Any:
        if state.name != "b0":
            return await real_dial(loop, factory, state, context, tls, engine)
        hung.append(state.name)
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    monkeypatch.setattr(connection, "dial_backend", dial)
    monkeypatch.setattr(connection, "start_link", lambda *_: None)  # every dial the loop's
    async with backend() as unused, backend() as good:
        config = make_config(
            [{"name": "b0", "url": unused.url}, {"name": "b1", "url": good.url}],
            limits={"backend_timeout": f"{BACKEND_TIMEOUT}s"}, balance="round_robin",
        )
        async with running_proxy(config) as ctx:
            times = await round_robin_pair(ctx.addresses[0][1])
            with anyio.fail_after(5):
                await cancelled.wait()
    assert hung == ["b0"]
    assert not unused.requests
    assert len(good.requests) == 2
    assert BACKEND_TIMEOUT <= max(times) < DEFAULT_BACKEND_TIMEOUT, times


NEEDS_LINKS = pytest.mark.skipif(
    not LINKS, reason="no links without the C speedups (WSPROXY_NO_SPEEDUPS=1): the loop dials"
)


def _refuse_the_loops_dial(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests of a link's dial (io.links): a dial through the loop fails them."""
    from wsproxy.io import connection

    async def dial(*_: Any) -> Any:
        raise AssertionError("a link's dial was expected, not the loop's")

    monkeypatch.setattr(connection, "dial_backend", dial)


@NEEDS_LINKS
async def test_a_link_connect_that_hangs_is_given_up_after_backend_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link's connect stuck in its SYN (a backend whose accept queue is full drops
    it: a real hang, on loopback): at limits.backend_timeout the connecting socket is
    closed and the next backend serves the upgrade."""
    _refuse_the_loops_dial(monkeypatch)
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = []
    full.setblocking(False)
    with full:
        # Its queue filled with connections nobody accepts: the next SYN is dropped.
        for _ in range(4):
            peer = socket.socket()
            peer.setblocking(False)
            peer.connect_ex(full.getsockname())
            queued.append(peer)
        async with backend() as good:
            config = make_config(
                [{"name": "b0", "url": f"ws://127.0.0.1:{full.getsockname()[1]}"},
                 {"name": "b1", "url": good.url}],
                limits={"backend_timeout": f"{BACKEND_TIMEOUT}s"}, balance="round_robin",
            )
            async with running_proxy(config) as ctx:
                times = await round_robin_pair(ctx.addresses[0][1])
        for peer in queued:
            peer.close()
    assert len(good.requests) == 2
    assert BACKEND_TIMEOUT <= max(times) < DEFAULT_BACKEND_TIMEOUT, times


@NEEDS_LINKS
async def test_many_links_refused_in_place_answer_502_without_nesting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link's connect to a port nobody listens on is refused within the connect()
    itself (loopback): the next backend's is then started a loop pass later, not
    inside the refused one's, so 400 such backends are tried one after another and the
    client gets its 502."""
    from wsproxy.io.connection import Connection

    _refuse_the_loops_dial(monkeypatch)
    refusals: list[OSError] = []
    told = Connection.dial_failed

    def dial_failed(self: Connection, protocol: Any, exc: Any) -> None:
        refusals.append(exc)
        told(self, protocol, exc)

    monkeypatch.setattr(Connection, "dial_failed", dial_failed)
    count = 400
    closed = []  # bound, not listening: each one's port refuses, and nobody takes it
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            closed.append(sock)
        config = make_config(
            [{"name": f"b{i}", "url": f"ws://127.0.0.1:{sock.getsockname()[1]}"}
             for i, sock in enumerate(closed)],
            limits={"handshake_timeout": "30s"},
        )
        async with running_proxy(config) as ctx:
            answer = await raw_exchange(ctx.addresses[0][1], upgrade_request())
    finally:
        for sock in closed:
            sock.close()
    assert status_of(answer) == 502, answer
    assert len(refusals) == count
    assert {exc.errno for exc in refusals} == {errno.ECONNREFUSED}


@NEEDS_LINKS
async def test_a_backend_by_name_is_dialled_by_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Links connect to numeric addresses only: a plain backend named by its host name
    goes to the loop's dial (which resolves it), and the upgrade is relayed as usual."""
    from wsproxy.io import connection

    real_dial = connection.dial_backend
    dialled: list[str] = []

    def dial(loop: Any, factory: Any, state: Any, *rest: Any) -> Any:
        dialled.append(state.name)
        return real_dial(loop, factory, state, *rest)

    monkeypatch.setattr(connection, "dial_backend", dial)
    async with backend() as named:
        config = make_config([{"name": "by-name", "url": f"ws://localhost:{named.port}"}])
        async with running_proxy(config) as ctx:
            await echo_round_trip(f"ws://127.0.0.1:{ctx.addresses[0][1]}/")
    assert dialled == ["by-name"]
    assert len(named.requests) == 1


async def test_a_dial_cancelled_as_the_proxy_stops_tries_no_other_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve()'s end cancels a dial in flight: its backend_timeout timer is cancelled
    with it, so no other backend is dialled afterwards."""
    from wsproxy.io import connection

    dials: list[str] = []
    dialling = anyio.Event()

    async def dial(
        loop: Any, factory: Any, state: Any, context: Any, tls: Any, engine: Any = None
    ) -> Any:
        dials.append(state.name)
        dialling.set()
        await asyncio.Event().wait()  # never set

    monkeypatch.setattr(connection, "dial_backend", dial)
    monkeypatch.setattr(connection, "start_link", lambda *_: None)  # every dial the loop's
    timeout = 0.3
    async with backend() as one, backend() as two:
        config = make_config(
            [{"name": "b0", "url": one.url}, {"name": "b1", "url": two.url}],
            limits={"backend_timeout": f"{timeout}s"},
        )
        async with (
            running_proxy(config) as ctx,
            await anyio.connect_tcp("127.0.0.1", ctx.addresses[0][1]) as stream,
        ):
            await stream.send(upgrade_request())
            with anyio.fail_after(5):
                await dialling.wait()
            ctx.cancel_tasks()
            # Nothing to wait for but time: past the moment the timer would have fired.
            await anyio.sleep(timeout * 3)
    assert len(dials) == 1, dials


@pytest.mark.parametrize("half_answer", HALF_ANSWERS.values(), ids=HALF_ANSWERS.keys())
async def test_with_only_a_backend_that_never_answers_the_client_gets_502(
    half_answer: bytes,
) -> None:
    async with silent_backend(half_answer) as silent:
        config = make_config(
            backends(silent),
            limits={"backend_timeout": f"{BACKEND_TIMEOUT}s", "handshake_timeout": "10s"},
        )
        async with running_proxy(config) as ctx:
            started = anyio.current_time()
            answer = await raw_exchange(ctx.addresses[0][1], upgrade_request())
            elapsed = anyio.current_time() - started
    assert status_of(answer) == 502, answer
    assert BACKEND_TIMEOUT <= elapsed < DEFAULT_BACKEND_TIMEOUT, elapsed
    assert silent.accepted == 1


async def test_many_backends_failing_in_place_answer_502_without_nesting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each dial's first step runs in place (wsproxy.io.steps), and a connect can fail
    in place (an unreachable network: simulated, loopback has none): the next
    backend's is then started a loop pass later, not inside the failed one's, so 400
    such backends are tried one after another and the client gets its 502."""
    from wsproxy.io import connection

    tried: list[str] = []

    async def dial(
        loop: Any, factory: Any, state: Any, context: Any, tls: Any, engine: Any = None
    ) -> Any:
        tried.append(state.name)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(connection, "dial_backend", dial)
    monkeypatch.setattr(connection, "start_link", lambda *_: None)  # every dial the loop's
    count = 400
    config = make_config(
        [{"name": f"b{i}", "url": f"ws://127.0.0.1:{9 + i}"} for i in range(count)],
        limits={"handshake_timeout": "30s"},
    )
    async with running_proxy(config) as ctx:
        answer = await raw_exchange(ctx.addresses[0][1], upgrade_request())
    assert status_of(answer) == 502, answer
    assert len(tried) == count
