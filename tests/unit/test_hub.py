"""The hub (wsproxy.io.hub): the C ``_scan.Hub`` and the Python ``PyHub`` are twins.

Checked with hypothesis (derandomized) on real socket pairs: a few OPEN sessions, the
pumps of both sides of each in one hub, and arbitrary steps in between the hub's
``ready()`` calls: reads arriving from either peer (whole messages, which go straight
through, and pings, fragments and garbage, which go to the driver), the other
transport busy or not, pumps taken out of the hub and put back, peers' EOFs (a pump's
end takes its session's two pumps out, in the middle of a batch), with
limits on the sockets read per ``ready()`` down to one. The C hub with C pumps and the
Python hub with Python pumps give the same bytes to each peer, the same writes,
driver reads, hand-backs, session states and memberships after every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SessionHarness
from tests.unit.test_direct_relay import RELAYS, Driver, FakeTransport, Original, Sockets
from tests.unit.test_scan import FLOWS, _scan
from wsproxy.core import frames
from wsproxy.core import session as session_module
from wsproxy.core.states import Side
from wsproxy.io import direct, hub, pump

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM

HUBS: dict[str, type] = {"python": hub.PyHub}
if _scan is not None and hasattr(_scan, "Hub"):
    HUBS["c"] = _scan.Hub  # (the pumps: test_direct_relay.Sockets, of the same kind)

needs_epoll = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux's")
pytestmark = needs_epoll


class Pair:
    """One OPEN session between two fake transports, relay protocols of *kind* on
    them, and for each side a socket pair (the peer's end, the proxy's) whose proxy end
    a pump of *kind* reads from a duplicate. A pump's end (EOF or error) takes both
    pumps out of their hub (see ``end``)."""

    def __init__(self, kind: str) -> None:
        with mock.patch.object(session_module, "_Relay", RELAYS[kind]), \
                mock.patch.object(session_module, "_Flow", FLOWS[kind]):
            self.session = SessionHarness().session
            self.transports = {CLIENT: FakeTransport(), UPSTREAM: FakeTransport()}
            self.driver = Driver(self.session, self.transports)
            for side in (CLIENT, UPSTREAM):
                self.transports[side].protocol = Original(self.driver, side)
            with mock.patch.object(direct, "_RELAYS", tuple(RELAYS.values())):
                direct.relay_directly(self.driver, self.session, self.transports[CLIENT],  # type: ignore[arg-type]
                                      self.transports[UPSTREAM])  # type: ignore[arg-type]
        self.sockets = Sockets(kind, self.transports, on_end=self.end)
        self.peer, self.proxy = self.sockets.peer, self.sockets.proxy
        self.pumps, self.ends = self.sockets.pumps, self.sockets.ends
        self.received: dict[Side, list[bytes]] = {CLIENT: [], UPSTREAM: []}

    def end(self, side: Side, code: int) -> None:
        """Both pumps out of the hub (a feed's end), only this one detached: the other
        one, maybe ready in the same batch, must not be read from there on (as after a
        pause of writing, which takes a pump out from inside another's read)."""
        self.ends.append((side, code))
        for p in self.pumps.values():
            if p.hub is not None:
                p.hub.remove(p)
        self.pumps[side].detach()

    def collect(self) -> None:
        """What the pumps sent to each peer, since the last time."""
        for side in (CLIENT, UPSTREAM):
            got = b""
            while True:
                try:
                    piece = self.peer[side].recv(1 << 20)
                except BlockingIOError:
                    break
                if not piece:
                    break
                got += piece
            if got:
                self.received[side].append(got)

    def snapshot(self, the_hub: Any) -> object:
        return (
            {side: list(t.writes) for side, t in self.transports.items()},
            {side: list(r) for side, r in self.received.items()},
            list(self.driver.reads), list(self.ends), self.session.state,
            self.session.messages(CLIENT), self.session.messages(UPSTREAM),
            [p.hub is the_hub for p in self.pumps.values()],
        )

    def close(self) -> None:
        for p in self.pumps.values():
            p.detach()
        self.sockets.close()


def chunk_from(side: Side) -> st.SearchStrategy[bytes]:
    """A peer's write: whole data messages (straight through), or a ping, a fragment,
    garbage (to the driver); masked from the client as it must be."""
    mask = side is CLIENT
    piece = st.one_of(
        st.binary(max_size=200).map(lambda p: frames.build_frame(frames.BINARY, p, mask=mask)),
        st.just(frames.build_frame(frames.PING, b"p", mask=mask)),
        st.just(bytes((0x01, 0x83 if mask else 0x03)) + (b"\x00" * 4 if mask else b"") + b"abc"),
        st.just(b"\xff\xff\xff"),
    )
    return st.lists(piece, min_size=1, max_size=3).map(b"".join)


SIDES = st.sampled_from([CLIENT, UPSTREAM])
SESSIONS = 3


def step() -> st.SearchStrategy[tuple[Any, ...]]:
    index = st.integers(0, SESSIONS - 1)
    return st.one_of(
        st.tuples(st.just("send"), index, SIDES).flatmap(
            lambda t: chunk_from(t[2]).map(lambda c: (*t, c))),
        st.just(("ready",)),
        st.just(("ready",)),
        st.tuples(st.just("pause"), index, SIDES),
        st.tuples(st.just("resume"), index, SIDES),
        st.tuples(st.just("eof"), index, SIDES),
        st.tuples(st.just("busy"), index, SIDES, st.booleans()),
    )


def run(kind: str, steps: list[tuple[Any, ...]], limit: int) -> list[object]:
    """Everything the peers, transports and driver saw, step by step, with the hub and
    pumps of *kind*."""
    the_hub = HUBS[kind](limit)
    pairs = [Pair(kind) for _ in range(SESSIONS)]
    trace: list[object] = []
    try:
        for pair in pairs:
            for p in pair.pumps.values():
                the_hub.add(p)
        for s in steps:
            if s[0] == "ready":
                the_hub.ready()
            else:
                pair, side = pairs[s[1]], s[2]
                if s[0] == "send":
                    pair.peer[side].sendall(s[3])
                elif s[0] == "pause":
                    the_hub.remove(pair.pumps[side])
                elif s[0] == "resume":
                    if pair.pumps[side].fd_in >= 0:
                        the_hub.add(pair.pumps[side])
                elif s[0] == "eof":
                    pair.peer[side].shutdown(socket.SHUT_WR)
                else:
                    pair.transports[side.other].buffered = int(s[3])
            for pair in pairs:
                pair.collect()
            trace.append(([pair.snapshot(the_hub) for pair in pairs], len(the_hub)))
    finally:
        the_hub.close()
        for pair in pairs:
            pair.close()
    return trace


def possible(steps: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A peer shuts its side down once, and sends nothing after."""
    shut: set[tuple[int, Side]] = set()
    out = []
    for s in steps:
        if s[0] in ("eof", "send"):
            if (s[1], s[2]) in shut:
                continue
            if s[0] == "eof":
                shut.add((s[1], s[2]))
        out.append(s)
    return out


@pytest.mark.skipif("c" not in HUBS, reason="the C hub was not built")
@given(steps=st.lists(step(), min_size=1, max_size=24), limit=st.sampled_from([1, 2, 64]))
@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_the_c_hub_is_the_python_hub(steps: list[tuple[Any, ...]], limit: int) -> None:
    steps = possible(steps)
    no_random = SimpleNamespace(urandom=lambda n: b"\x01" * n)  # our closes' mask keys
    with mock.patch.object(frames, "os", no_random):
        assert run("c", steps, limit) == run("python", steps, limit)


@pytest.mark.parametrize("kind", list(HUBS))
def test_a_hub_reads_ready_sockets_up_to_its_limit_and_the_rest_at_the_next_wake(
    kind: str
) -> None:
    the_hub = HUBS[kind](1)
    pairs = [Pair(kind) for _ in range(2)]
    try:
        for pair in pairs:
            the_hub.add(pair.pumps[CLIENT])
        message = frames.build_frame(frames.BINARY, b"hi", mask=True)
        for pair in pairs:
            pair.peer[CLIENT].sendall(message)
        the_hub.ready()
        for pair in pairs:
            pair.collect()
        assert sorted(len(pair.received[UPSTREAM]) for pair in pairs) == [0, 1]
        the_hub.ready()  # level-triggered: the other one is still ready
        for pair in pairs:
            pair.collect()
            assert pair.received[UPSTREAM] == [message]
        the_hub.ready()  # nothing ready: nothing read
        assert all(pair.driver.reads == [] for pair in pairs)
    finally:
        the_hub.close()
        for pair in pairs:
            pair.close()


def unread(sock: socket.socket) -> bool:
    """Whether *sock* has bytes its pump has not read yet."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


@contextlib.contextmanager
def client_pumps_in_a_hub(kind: str, pairs: list[Pair]) -> Iterator[Any]:
    """A hub of *kind* reading the client side of each of *pairs*; the hub and the
    pairs closed after."""
    the_hub = HUBS[kind]()
    try:
        for pair in pairs:
            the_hub.add(pair.pumps[CLIENT])
        yield the_hub
    finally:
        the_hub.close()
        for pair in pairs:
            pair.close()


@pytest.mark.parametrize("kind", list(HUBS))
def test_a_batchs_reads_are_all_made_before_the_first_of_their_sends(kind: str) -> None:
    """What a batch's reads pass straight through is sent at the batch's end: the
    peers see the writes of a busy pass back to back (wsproxy.io.hub's doc)."""
    seen_at_sends: list[list[bool]] = []

    def is_closing(_: FakeTransport) -> bool:  # asked by each send (the C pump: at once)
        seen_at_sends.append([unread(pair.proxy[CLIENT]) for pair in pairs])
        return False

    with mock.patch.object(FakeTransport, "is_closing", is_closing):
        pairs = [Pair(kind) for _ in range(3)]
    message = frames.build_frame(frames.BINARY, b"hi", mask=True)
    with client_pumps_in_a_hub(kind, pairs) as the_hub:
        for pair in pairs:
            pair.peer[CLIENT].sendall(message)
        with mock.patch.object(FakeTransport, "is_closing", is_closing):
            the_hub.ready()
        assert seen_at_sends == [[False] * 3] * 3
        for pair in pairs:
            pair.collect()
            assert pair.received[UPSTREAM] == [message]


@pytest.mark.parametrize("kind", list(HUBS))
@pytest.mark.parametrize("ending", ["ping", "eof"])
def test_what_a_batch_holds_is_sent_before_the_driver_hears_of_anything(
    kind: str, ending: str
) -> None:
    """A read for the driver (a ping), or a pump's end, in the middle of a batch: every
    read made before it has been sent on by then, so nothing the driver writes can
    overtake it."""
    held_then: list[bool] = []
    original_end = Pair.end

    def end_and_look(pair: Pair, side: Side, code: int) -> None:
        held_then.append(held())
        original_end(pair, side, code)

    with mock.patch.object(Pair, "end", end_and_look):
        passing = [Pair(kind) for _ in range(2)]
        other = Pair(kind)
    pairs = [*passing, other]
    message = frames.build_frame(frames.BINARY, b"hi", mask=True)

    def held() -> bool:  # read from a passing pair's client, not at its backend yet
        for pair in passing:
            pair.collect()
        return any(not unread(pair.proxy[CLIENT]) and not pair.received[UPSTREAM]
                   for pair in passing)

    receive = Driver.receive

    def receive_and_look(driver: Driver, side: Side, data: bytes) -> None:
        held_then.append(held())
        receive(driver, side, data)

    with client_pumps_in_a_hub(kind, pairs) as the_hub:
        for pair in passing:
            pair.peer[CLIENT].sendall(message)
        if ending == "eof":
            other.peer[CLIENT].shutdown(socket.SHUT_WR)
        else:
            other.peer[CLIENT].sendall(frames.build_frame(frames.PING, b"p", mask=True))
        with mock.patch.object(Driver, "receive", receive_and_look):
            the_hub.ready()
        assert held_then == [False]
        for pair in passing:
            assert pair.received[UPSTREAM] == [message]


@pytest.mark.parametrize("kind", list(HUBS))
@pytest.mark.parametrize("limit", [1, 2, 64])
def test_what_becomes_ready_during_a_batch_is_read_in_the_same_wake_within_the_limit(
    kind: str, limit: int
) -> None:
    """A socket that becomes ready while ready() reads a batch is read by the same
    ready() (another epoll_wait(), no turn of the loop), as long as fewer than *limit*
    sockets were read; past the limit it waits for the next wake."""
    the_hub = HUBS[kind](limit)
    first, second = Pair(kind), Pair(kind)
    message = frames.build_frame(frames.BINARY, b"hi", mask=True)
    receive = Driver.receive

    def receive_and_send(driver: Driver, side: Side, data: bytes) -> None:
        receive(driver, side, data)
        if driver is first.driver:  # while the first batch is read
            second.peer[CLIENT].sendall(message)

    try:
        the_hub.add(first.pumps[CLIENT])
        the_hub.add(second.pumps[CLIENT])
        first.peer[CLIENT].sendall(frames.build_frame(frames.PING, b"p", mask=True))
        with mock.patch.object(Driver, "receive", receive_and_send):
            the_hub.ready()
        second.collect()
        assert second.received[UPSTREAM] == ([message] if limit > 1 else [])
        the_hub.ready()
        second.collect()
        assert second.received[UPSTREAM] == [message]
    finally:
        the_hub.close()
        first.close()
        second.close()


@pytest.mark.parametrize("kind", list(HUBS))
def test_membership_add_remove_detach_and_close(kind: str) -> None:
    """add and remove are idempotent; a detached pump leaves its hub; closing a hub
    lets its pumps go; a closed hub reads nothing and takes no pump."""
    the_hub = HUBS[kind]()
    pair = Pair(kind)
    try:
        a, b = pair.pumps[CLIENT], pair.pumps[UPSTREAM]
        assert the_hub.fileno() >= 0
        the_hub.add(a)
        the_hub.add(a)
        assert len(the_hub) == 1
        assert a.hub is the_hub
        the_hub.remove(b)  # not in: nothing
        the_hub.remove(a)
        the_hub.remove(a)
        assert len(the_hub) == 0
        assert a.hub is None
        the_hub.add(a)
        the_hub.add(b)
        other = HUBS[kind]()
        with pytest.raises(ValueError, match="in a hub"):
            other.add(a)
        other.close()
        b.detach()
        assert b.hub is None
        assert len(the_hub) == 1
        with pytest.raises(ValueError, match="detached"):
            the_hub.add(b)
        the_hub.close()
        the_hub.close()
        assert a.hub is None
        assert len(the_hub) == 0
        the_hub.ready()
        with pytest.raises(ValueError, match="closed"):
            the_hub.add(a)
        with pytest.raises(ValueError, match="closed"):
            the_hub.fileno()
        with pytest.raises(ValueError, match="limit"):
            HUBS[kind](0)
    finally:
        the_hub.close()
        pair.close()


@pytest.mark.parametrize("kind", list(HUBS))
def test_an_error_in_a_read_ends_ready_and_the_rest_wait_for_the_next_wake(kind: str) -> None:
    """A pump whose read raises (its driver did): ready() raises it (the loop's
    exception handler hears of it), the sockets not read yet are ready at the next
    wake."""
    the_hub = HUBS[kind]()
    pairs = [Pair(kind) for _ in range(2)]
    try:
        ping = frames.build_frame(frames.PING, b"p", mask=True)  # to the driver
        for pair in pairs:
            the_hub.add(pair.pumps[CLIENT])
            pair.peer[CLIENT].sendall(ping)
        failing = mock.patch.object(Driver, "receive", side_effect=RuntimeError("driver"))
        with failing, pytest.raises(RuntimeError, match="driver"):
            the_hub.ready()
        the_hub.ready()
        assert sum(len(pair.driver.reads) for pair in pairs) == 1
    finally:
        the_hub.close()
        for pair in pairs:
            pair.close()


def test_the_hub_in_use_is_the_c_one_with_the_c_pump() -> None:
    if pump.Pump is pump.PyPump:
        assert hub.Hub is hub.PyHub
    else:
        assert hub.Hub is _scan.Hub  # type: ignore[union-attr]


def arrived(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first bytes *sock* receives, read when its loop says it is readable."""
    got: asyncio.Future[bytes] = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: got.done() or got.set_result(sock.recv(1 << 16)))
    try:
        return loop.run_until_complete(asyncio.wait_for(got, 10))
    finally:
        loop.remove_reader(sock.fileno())


@pytest.mark.parametrize("kind", list(HUBS))
def test_join_makes_the_loops_hub_and_release_closes_it_once_empty(kind: str) -> None:
    """join() puts a pump in its loop's one hub (made with a loop reader on the
    first), whose ready() the loop calls; release() closes only a hub with no pump
    left, and the next join makes a new one."""
    loop = asyncio.new_event_loop()
    pair = Pair(kind)
    in_use = mock.patch.object(hub, "Hub", HUBS[kind])  # the C one even where it is off
    try:
        in_use.start()
        a, b = pair.pumps[CLIENT], pair.pumps[UPSTREAM]
        the_hub = hub.join(loop, a)
        assert hub.join(loop, b) is the_hub
        assert hub.hubs(loop) == [the_hub]
        assert isinstance(the_hub, HUBS[kind])
        message = frames.build_frame(frames.BINARY, b"through the hub", mask=True)
        pair.peer[CLIENT].sendall(message)
        assert arrived(loop, pair.peer[UPSTREAM]) == message
        the_hub.remove(a)
        hub.release(loop)
        assert hub.hubs(loop) == [the_hub]
        the_hub.remove(b)
        hub.release(loop)
        assert hub.hubs(loop) == []
        assert a.hub is None
        assert hub.join(loop, a) is not the_hub
        hub.hubs(loop)[0].remove(a)
        hub.release(loop)
    finally:
        in_use.stop()
        pair.close()
        loop.close()


def test_without_epoll_each_pump_is_a_loop_reader() -> None:
    """ReaderHub (no epoll: not Linux): a pump's socket read by a loop reader of its
    own while it is in, and not after."""
    loop = asyncio.new_event_loop()
    pair = Pair("python")
    try:
        with mock.patch.object(hub, "_EPOLL", False):
            readers = hub.join(loop, pair.pumps[CLIENT])
        assert isinstance(readers, hub.ReaderHub)
        message = frames.build_frame(frames.BINARY, b"through a reader", mask=True)
        pair.peer[CLIENT].sendall(message)
        assert arrived(loop, pair.peer[UPSTREAM]) == message
        readers.add(pair.pumps[CLIENT])
        assert len(readers) == 1
        readers.remove(pair.pumps[CLIENT])
        readers.remove(pair.pumps[CLIENT])
        assert len(readers) == 0
        assert not loop.remove_reader(pair.pumps[CLIENT].fd_in)  # none left
        readers.add(pair.pumps[UPSTREAM])
        hub.release(loop)  # not empty: kept
        readers.close()
        assert not loop.remove_reader(pair.pumps[UPSTREAM].fd_in)
        hub.release(loop)
        assert hub.hubs(loop) == []
    finally:
        pair.close()
        loop.close()
