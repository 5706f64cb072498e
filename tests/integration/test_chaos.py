"""Faults under load (issue 9): backends die and come back while clients stream.

Three `websockets` echo backends sit behind a proxy running in this event loop. About
thirty clients stream sequenced messages through it (a window of messages in flight
each) and check every echo. Meanwhile a seeded fault injector stops and restarts the
backends at random moments, on the same ports, in four ways:

- ``graceful``: the backend's server closes, each connection with a 1001 close frame;
- ``fin``: the backend's sockets are closed with no close frame (a process exiting);
- ``rst``: they are reset (SO_LINGER 0: a process killed, a host gone);
- ``drain``: the proxy drains the backend (``drain_backend``, spread 0.5 s) and later
  takes it back (``undrain_backend``).

What must hold (SPEC.md, "Closing"): every message is echoed in order, or the
connection it went on was closed with a close frame the client saw, whose code says
why (1012 for a backend restart or drain, 1014 for a backend lost without a close).
Never a gap in the sequence, never an echo out of order, never a connection that ends
without a close frame (what a client reports as 1006), never an upgrade dropped
without an answer. Clients reconnect (503/502 while no backend is there) and go on.

The run is a number of fault steps, not a number of seconds: a loaded machine makes it
longer, not different. Before each step the injector waits (bounded) for echoes to
flow, so every fault hits connections carrying messages. The schedule comes from a
fixed seed (WSPROXY_CHAOS_SEED picks another one), named in every failure message.

Every wait is bounded; the sleeps pace the senders, the clients' retries and the
fault injector, none waits for something to happen.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from tests.integration.peers import make_config, running_proxy
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

#: The fault schedule's seed; WSPROXY_CHAOS_SEED picks another one for exploring.
SEED = int(os.environ.get("WSPROXY_CHAOS_SEED", "9"))
#: How to replay a failure: in every assertion message.
REPLAY = f"(WSPROXY_CHAOS_SEED={SEED})"
CLIENTS = 30
#: Fault injector steps (each a fault or a restart, 0.2-0.7 s apart): about 12 s.
STEPS = 26
#: Echoes that must have come back since the last step before the next one (while a
#: backend is in rotation): the faults hit connections under load.
PROGRESS = 100
#: Messages in flight per connection, and the pause between two sends.
WINDOW = 8
PACE = 0.02
#: Bound on every wait for something that normally takes milliseconds; an echo (or a
#: close) that has not come within it is a stall.
WAIT = 20.0
#: A refused client tries again after this long (paces retries, waits for nothing).
RETRY_PAUSE = 0.05
KINDS = ("graceful", "fin", "rst", "drain")
#: The close codes that explain undelivered messages.
EXPLAINED = {1012, 1014}


# Backends that die and come back ----------------------------------------------------------


class Incarnation:
    """One run of a backend's server, and the connections it accepted."""

    def __init__(self) -> None:
        self.alive = True
        self.kill_how = ""
        self.connections: set[ServerConnection] = set()
        self.server: Server | None = None


def kill(ws: ServerConnection, how: str) -> None:
    """Drop *ws* with no close frame: a FIN, or a reset."""
    transport = ws.transport
    if how == "rst":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


class ChaosBackend:
    """A websockets echo server that can be stopped in several ways and restarted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.current: Incarnation | None = None

    @property
    def up(self) -> bool:
        return self.current is not None

    async def start(self) -> None:
        inc = Incarnation()

        async def echo(ws: ServerConnection) -> None:
            if not inc.alive:  # its handshake finished after the kill
                kill(ws, inc.kill_how)
                return
            inc.connections.add(ws)
            try:
                with suppress(ConnectionClosed):
                    async for message in ws:
                        await ws.send(message)
            finally:
                inc.connections.discard(ws)

        inc.server = await ws_serve(echo, "127.0.0.1", self.port, ping_interval=None)
        self.port = next(iter(inc.server.sockets)).getsockname()[1]
        self.current = inc

    async def stop(self, how: str) -> None:
        inc, self.current = self.current, None
        assert inc is not None
        assert inc.server is not None
        inc.alive, inc.kill_how = False, how
        with anyio.fail_after(WAIT):
            if how == "graceful":
                inc.server.close()  # 1001 to every open connection
            else:
                inc.server.close(close_connections=False)
                for ws in list(inc.connections):
                    kill(ws, how)
            await inc.server.wait_closed()


@asynccontextmanager
async def chaos_backends(n: int) -> AsyncIterator[list[ChaosBackend]]:
    backends = [ChaosBackend(f"b{i}") for i in range(1, n + 1)]
    for b in backends:
        await b.start()
    try:
        yield backends
    finally:
        for b in backends:
            if b.up:
                await b.stop("graceful")


# The fault injector -------------------------------------------------------------------------


@dataclass
class Faults:
    injected: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    #: Steps taken while echoes were flowing (a backend in rotation).
    under_load: int = 0


async def echoes_flowing(tally: Tally, since: int) -> None:
    """Until PROGRESS more echoes than *since* came back (bounded, polled per pace)."""
    try:
        with anyio.fail_after(WAIT):
            while tally.checked < since + PROGRESS:  # noqa: ASYNC110 - a counter, no event
                await anyio.sleep(PACE)
    except TimeoutError:
        raise AssertionError(f"no echoes for {WAIT:.0f} s with a backend up {REPLAY}: "
                             f"{tally.failures[:5]}") from None


async def inject_faults(ctx: ProxyContext, backends: list[ChaosBackend], faults: Faults,
                        tally: Tally, over: anyio.Event) -> None:
    rng = random.Random(SEED)
    drained: set[str] = set()
    kinds = list(KINDS)
    rng.shuffle(kinds)  # each kind at least once, then at random
    checked = tally.checked
    for _ in range(STEPS):
        await anyio.sleep(rng.uniform(0.2, 0.7))  # the pace of the faults
        if any(b.up and b.name not in drained for b in backends):
            await echoes_flowing(tally, checked)
            faults.under_load += 1
        checked = tally.checked
        down = [b for b in backends if not b.up or b.name in drained]
        up = [b for b in backends if b not in down]
        if down and (not up or rng.random() < 0.5):
            b = rng.choice(down)
            if b.name in drained:
                drained.discard(b.name)
                ctx.undrain_backend(ctx.balancer.backends[b.name])
            else:
                await b.start()
            faults.restarts += 1
            continue
        b = rng.choice(up)
        kind = kinds.pop() if kinds else rng.choice(KINDS)
        faults.injected[kind] += 1
        if kind == "drain":
            drained.add(b.name)
            ctx.drain_backend(ctx.balancer.backends[b.name], spread=0.5)
        else:
            await b.stop(kind)
    over.set()


# The clients ----------------------------------------------------------------------------------


@dataclass
class Tally:
    checked: int = 0
    sessions: int = 0
    closes: Counter[int] = field(default_factory=Counter)
    refused: Counter[int] = field(default_factory=Counter)
    undelivered: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def stream(ws: ClientConnection, tag: str, over: anyio.Event, tally: Tally) -> None:
    """Send sequenced messages until *over*, then a last one marked ``!``; check echoes.

    Returns when the last echo is back (the client then closes with 1000) or when the
    proxy closed the connection; the close must explain every message not echoed.
    """
    sent = received = 0
    room = anyio.Event()

    async def send() -> None:
        nonlocal sent, room
        with suppress(ConnectionClosed):
            while not over.is_set():
                while sent - received >= WINDOW:
                    await room.wait()
                    room = anyio.Event()
                await ws.send(f"{tag}:{sent}")
                sent += 1
                await anyio.sleep(PACE)
            await ws.send(f"{tag}:{sent}!")
            sent += 1

    closed: ConnectionClosed | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        try:
            while True:
                with anyio.fail_after(WAIT):  # the sender sends every PACE until over
                    message = await ws.recv(decode=True)
                assert isinstance(message, str)
                if message.rstrip("!") != f"{tag}:{received}":
                    tally.failures.append(f"{tag}: echo {message!r} after {received} in order")
                    break
                received += 1
                tally.checked += 1
                room.set()
                if message.endswith("!"):
                    break
        except ConnectionClosed as exc:
            closed = exc
        except TimeoutError:
            tally.failures.append(f"{tag}: {sent - received} not echoed and no close (a stall)")
        tg.cancel_scope.cancel()
    if closed is None:
        await ws.close()
        tally.closes[1000] += 1
    elif closed.rcvd is None:
        tally.failures.append(f"{tag}: closed without a close frame (1006): {closed!r}")
    else:
        code = closed.rcvd.code
        tally.closes[code] += 1
        if sent > received:
            tally.undelivered[code] += sent - received
            if code not in EXPLAINED:
                tally.failures.append(f"{tag}: {sent - received} not echoed, close {code}")


async def client(n: int, url: str, over: anyio.Event, tally: Tally) -> None:
    session = 0
    while not over.is_set():
        try:
            ws = await connect(url, open_timeout=WAIT, close_timeout=WAIT, ping_interval=None)
        except InvalidStatus as exc:
            tally.refused[exc.response.status_code] += 1
            await anyio.sleep(RETRY_PAUSE)
            continue
        except (InvalidMessage, OSError) as exc:
            tally.failures.append(f"c{n}: upgrade without an answer: {exc!r}")
            await anyio.sleep(RETRY_PAUSE)
            continue
        session += 1
        tally.sessions += 1
        async with ws:
            await stream(ws, f"c{n}.{session}", over, tally)


# The test ---------------------------------------------------------------------------------------


# Alone: beside other tests on a loaded machine a backend's socket was left unclosed
# (ResourceWarning, twice in four parallel runs; never in a serial one).
@pytest.mark.exclusive
@pytest.mark.timeout(180)  # about 15 s; far more on a loaded machine
async def test_backends_killed_and_restarted_under_load_lose_nothing_silently() -> None:
    async with chaos_backends(3) as backends:
        config = make_config(
            [{"name": b.name, "url": f"ws://127.0.0.1:{b.port}"} for b in backends],
            limits={"backend_timeout": "2s"},
            drain={"backend_hold_down": "500ms", "spread": "500ms"},
            balance="round_robin",
        )
        async with running_proxy(config) as ctx:
            host, port = ctx.addresses[0]
            url = f"ws://{host}:{port}/"
            over = anyio.Event()
            faults, tally = Faults(), Tally()
            started = anyio.current_time()
            with anyio.fail_after(STEPS * (0.7 + WAIT) + WAIT):  # a bound, not a pace
                async with anyio.create_task_group() as tg:
                    tg.start_soon(inject_faults, ctx, backends, faults, tally, over)
                    for n in range(CLIENTS):
                        tg.start_soon(client, n, url, over, tally)
            took = anyio.current_time() - started

    print(  # noqa: T201 - the figures for the report
        f"\nchaos (seed {SEED}, {STEPS} steps in {took:.1f} s, {CLIENTS} clients): "
        f"faults injected {sum(faults.injected.values())} {dict(faults.injected)}, "
        f"restarts {faults.restarts}; messages checked {tally.checked}; "
        f"connections {tally.sessions}; closes by code {dict(sorted(tally.closes.items()))}; "
        f"not echoed, explained by code {dict(tally.undelivered)}; "
        f"upgrades refused {dict(tally.refused)}; failures {len(tally.failures)}"
    )
    assert not tally.failures, REPLAY + "\n" + "\n".join(tally.failures[:20])
    # The schedule (a function of the seed only): every kind of fault, and plenty.
    assert set(faults.injected) == set(KINDS), (REPLAY, faults.injected)
    assert sum(faults.injected.values()) >= 8, (REPLAY, faults.injected)
    # Under load: echoes flowed before most steps (see echoes_flowing).
    assert faults.under_load >= STEPS // 2, (REPLAY, faults.under_load)
    assert tally.checked >= faults.under_load * PROGRESS, (REPLAY, tally.checked)
    assert tally.closes[1012], (REPLAY, tally.closes)
    assert tally.closes[1014], (REPLAY, tally.closes)
    assert set(tally.closes) <= {1000, *EXPLAINED}, (REPLAY, tally.closes)
