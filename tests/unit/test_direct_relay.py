"""The relay protocols of an OPEN session (wsproxy.io.direct, core.scan.PyRelay and its C
twin ``_scan.Relay``) change nothing the driver's own path does (issue 18).

Checked with hypothesis (derandomized): a session between two fake transports, fed
arbitrary frame streams from both sides (whole, fragmented, control frames, limits
exceeded, bad frames, garbage) split at arbitrary points, with heartbeat pings,
closes of the proxy's own and EOFs in between, once through the driver's path alone
and once with each relay on both transports: the same writes to each transport, the
same states, counters, close codes and pongs; and the C relay falls back to the
driver on exactly the reads the Python one does.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SessionHarness
from tests.unit.test_scan import FLOWS, Op, _scan, needs_c, operation
from wsproxy.core import frames, scan
from wsproxy.core import session as session_module
from wsproxy.core.states import SessionState, Side
from wsproxy.io import direct, pump

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
OPEN = SessionState.OPEN


class FakeTransport:
    """Records writes; holds a protocol as a transport does."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.protocol: Any = None
        self.buffered = 0  # what get_write_buffer_size() says
        self.closing = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, pieces: list[bytes]) -> None:
        self.writes.extend(bytes(p) for p in pieces)

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: io.direct's feed stays off


class Driver:
    """What wsproxy.io.connection.Connection does with a read and after it (receive,
    _flush), over fake transports."""

    def __init__(self, session: Any, transports: dict[Side, FakeTransport]) -> None:
        self.session = session
        self.transports = transports
        #: The reads that reached the driver: (side, bytes).
        self.reads: list[tuple[Side, bytes]] = []
        #: The other callbacks a relay calls directly: (side, what).
        self.calls: list[tuple[Side, str]] = []

    def receive(self, side: Side, data: bytes) -> None:
        self.reads.append((side, data))
        session = self.session
        if session.state is OPEN:
            through = session.relay(side, data)
            if through is not None:
                self.transports[side.other].write(through)
                return
        else:
            session.receive_data(side, data)
        self.flush()

    def receive_close(self, side: Side, frame: bytes, code: int | None, reason: str) -> bool:
        return False  # every read the driver's receive (test_relay_close: the close too)

    def receive_eof(self, side: Side) -> None:
        self.calls.append((side, "eof"))

    def transport_lost(self, side: Side) -> None:
        self.calls.append((side, "lost"))

    def flush(self) -> None:
        session = self.session
        for side in (CLIENT, UPSTREAM):
            out = session.data_to_send(side)
            if out:
                self.transports[side].writelines(out)
        if session.state is not OPEN:
            direct.stop_feed(self.transports[CLIENT])  # type: ignore[arg-type]


class Original:
    """A driver's protocol: every callback to the driver (and counted): the relays call
    the driver directly for reads, EOF and loss (PyRelay's doc)."""

    def __init__(self, driver: Driver, side: Side) -> None:
        self.driver = driver
        self.side = side
        self.calls: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.driver.receive(self.side, data)

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(f"lost {exc!r}")

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


RELAYS: dict[str, type] = {"python": scan.PyRelay}
if _scan is not None:
    RELAYS["c"] = _scan.Relay
#: What io.direct takes for a relay: both kinds here, whichever the process picked (with
#: WSPROXY_NO_SPEEDUPS=1 the process makes no C relays, these tests do).
both_relays = mock.patch.object(direct, "_RELAYS", tuple(RELAYS.values()))


PUMPS: dict[str, type] = {"python": pump.PyPump}
if _scan is not None:
    PUMPS["c"] = _scan.Pump


class Sockets:
    """For each side a socket pair: the peer's end and the proxy's; pumps on the proxy's
    ends (read from a duplicate, as io.direct's feed does) with the relay protocols."""

    def __init__(self, relay: str, transports: dict[Side, FakeTransport],
                 on_end: Callable[[Side, int], None] | None = None) -> None:
        """*on_end(side, code)*: a pump's end (EOF or error); recorded in ``ends`` if
        not given."""
        self.peer: dict[Side, socket.socket] = {}
        self.proxy: dict[Side, socket.socket] = {}
        for side in (CLIENT, UPSTREAM):
            self.peer[side], self.proxy[side] = socket.socketpair()
            for sock in (self.peer[side], self.proxy[side]):
                sock.setblocking(False)
        self.ends: list[tuple[Side, int]] = []
        self.pumps: dict[Side, Any] = {}
        self.dups: list[int] = []
        ended = on_end or (lambda side, code: self.ends.append((side, code)))
        for side, other in ((CLIENT, UPSTREAM), (UPSTREAM, CLIENT)):
            fd_in = os.dup(self.proxy[side].fileno())
            self.dups.append(fd_in)
            self.pumps[side] = PUMPS[relay](
                transports[side].protocol, fd_in, self.proxy[other].fileno(),
                transports[other], lambda code, side=side: ended(side, code),
            )

    def feed(self, side: Side, chunk: bytes, transports: dict[Side, FakeTransport]) -> None:
        """*chunk* from *side*'s peer, one read by its pump; what it sent on to the other
        peer recorded as one write of the other transport (it sends one read at once)."""
        self.peer[side].sendall(chunk)
        self.pumps[side].readable()
        other = UPSTREAM if side is CLIENT else CLIENT
        sent = b""
        while True:
            try:
                piece = self.peer[other].recv(1 << 20)
            except BlockingIOError:
                break
            sent += piece
        if sent:
            # Never past what the transport holds: that would reorder the stream.
            assert not transports[other].buffered, "sent while the transport had a buffer"
            transports[other].writes.append(sent)

    def close(self) -> None:
        for fd in self.dups:
            os.close(fd)
        for sock in (*self.peer.values(), *self.proxy.values()):
            sock.close()


def run(
    ops: list[Op], max_size: int, rsv_allowed: int, relay: str | None,
    flushes: list[bool] | None = None, pumped: list[bool] | None = None,
) -> list[object]:
    """Everything a driver and its peers could see of one session fed *ops*, through
    the driver alone (*relay* None) or with the relay protocol *relay* ("python" or
    "c") on both transports once OPEN. *flushes*: whether the driver writes out
    (and stops a feed) after each op that is not a read, as the
    Connection does; without, the relays' own checks (the session's state, our
    frames waiting) have to send the next read to the driver. *pumped*: the reads
    come through the relay's pump (pump.PyPump or ``_scan.Pump``) on real sockets
    instead, with the other transport's write buffer empty (False: the pump sends)
    or not (True: it writes) at each op."""
    flow = "c" if relay == "c" else "python"
    no_random = SimpleNamespace(urandom=lambda n: b"\x01" * n)  # our pings' mask keys
    with mock.patch.object(session_module, "_Flow", FLOWS[flow]), mock.patch.object(
        session_module, "_Relay", RELAYS[relay or "python"]
    ), mock.patch.object(
        session_module, "_whole_messages", _scan.whole_messages if flow == "c" else scan._py_skip
    ), mock.patch.object(session_module, "_HOLD_FIRST", flow != "c"), mock.patch.object(
        frames, "os", no_random
    ), both_relays:
        session = SessionHarness(max_message_size=max_size).session
        for f in (session._client_flow, session._upstream_flow):
            f.rsv_allowed = rsv_allowed
        transports = {CLIENT: FakeTransport(), UPSTREAM: FakeTransport()}
        driver = Driver(session, transports)
        for side in (CLIENT, UPSTREAM):
            transports[side].protocol = Original(driver, side)
        if relay is not None:
            direct.relay_directly(driver, session, transports[CLIENT], transports[UPSTREAM])  # type: ignore[arg-type]
            assert all(isinstance(t.protocol, RELAYS[relay]) for t in transports.values())
        sockets = Sockets(relay, transports) if pumped is not None and relay else None
        trace: list[object] = []
        for i, op in enumerate(ops):
            kind, side = op[0], op[1]
            flush = driver.flush if flushes is None or flushes[i] else lambda: None
            if kind == "feed":
                for chunk in op[2]:
                    if sockets is not None and pumped is not None:
                        for transport in transports.values():
                            transport.buffered = int(pumped[i])
                        sockets.feed(side, chunk, transports)
                    else:
                        transports[side].protocol.data_received(chunk)
                    trace.append(snapshot(session, transports))
            elif kind == "ping":
                session.send_ping(side, b"7")
                flush()
            elif kind == "close":
                session.close(side, op[2], "bye")
                flush()
            else:
                session.receive_eof(side)
                flush()
            trace.append(snapshot(session, transports))
        trace.append((
            session.close_codes(), session.initiator, session.close_reason,
            [(session.messages(s), session.bytes_relayed(s), session.undelivered(s),
              session.close_code_sent(s)) for s in (CLIENT, UPSTREAM)],
            dict(session.take_pongs()),
        ))
        trace.append(("reads", driver.reads) if relay is not None else ())
        if sockets is not None:
            sockets.close()
            assert sockets.ends == []
        return trace


def snapshot(session: Any, transports: dict[Side, FakeTransport]) -> object:
    return (
        list(transports[CLIENT].writes),
        list(transports[UPSTREAM].writes),
        session.state,
        session.leg_state(CLIENT),
        session.leg_state(UPSTREAM),
        session.should_close(CLIENT),
        session.should_close(UPSTREAM),
        session.messages(CLIENT),
        session.messages(UPSTREAM),
        session.bytes_relayed(CLIENT),
        session.bytes_relayed(UPSTREAM),
    )


SIZES = st.sampled_from([0, 3, 125, 126, 300, 65536, 1 << 20])
RSV = st.sampled_from([0, 0x40, 0x70])


@given(ops=st.lists(operation(), min_size=1, max_size=8), max_size=SIZES, rsv_allowed=RSV)
@settings(max_examples=120, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_a_relayed_session_is_the_drivers_session(
    ops: list[Op], max_size: int, rsv_allowed: int
) -> None:
    reference = run(ops, max_size, rsv_allowed, None)[:-1]
    python = run(ops, max_size, rsv_allowed, "python")
    assert python[:-1] == reference
    if _scan is not None:
        compiled = run(ops, max_size, rsv_allowed, "c")
        assert compiled == python  # the fallbacks too: the same reads reach the driver


@given(
    ops=st.lists(st.tuples(operation(), st.booleans()), min_size=1, max_size=8),
    max_size=SIZES, rsv_allowed=RSV,
)
@settings(max_examples=120, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_a_relay_sends_reads_to_the_driver_while_our_frames_wait_or_once_not_open(
    ops: list[tuple[Op, bool]], max_size: int, rsv_allowed: int
) -> None:
    """Our pings and closes left in the session (not written yet), the session no
    longer OPEN with the relays still on: the same as the driver alone."""
    plain, flushes = [op for op, _ in ops], [flush for _, flush in ops]
    reference = run(plain, max_size, rsv_allowed, None, flushes)[:-1]
    python = run(plain, max_size, rsv_allowed, "python", flushes)
    assert python[:-1] == reference
    if _scan is not None:
        compiled = run(plain, max_size, rsv_allowed, "c", flushes)
        assert compiled == python


@pytest.mark.parametrize("relay", list(RELAYS))
def test_whole_messages_go_straight_through_and_the_rest_to_the_driver(relay: str) -> None:
    whole = frames.build_frame(frames.BINARY, b"abc", mask=True)
    ping = frames.build_frame(frames.PING, b"hi", mask=True)
    trace = run([("feed", CLIENT, [whole * 3, ping, whole])], 1 << 20, 0, relay)
    assert trace[-1] == ("reads", [(CLIENT, ping)])
    upstream_writes = trace[2][1]  # type: ignore[index]
    assert upstream_writes == [whole * 3, ping, whole]


@pytest.mark.parametrize("relay", list(RELAYS))
def test_the_other_callbacks_are_the_original_protocols(relay: str) -> None:
    session = SessionHarness().session
    transports = {CLIENT: FakeTransport(), UPSTREAM: FakeTransport()}
    driver = Driver(session, transports)
    originals = {side: Original(driver, side) for side in (CLIENT, UPSTREAM)}
    for side in (CLIENT, UPSTREAM):
        transports[side].protocol = originals[side]
    with mock.patch.object(session_module, "_Relay", RELAYS[relay]), mock.patch.object(
        session_module, "_Flow", FLOWS["c" if relay == "c" else "python"]
    ):
        session = SessionHarness().session
        driver.session = session
        direct.relay_directly(driver, session, transports[CLIENT], transports[UPSTREAM])  # type: ignore[arg-type]
    protocol = transports[CLIENT].protocol
    assert protocol.original is originals[CLIENT]
    assert protocol.driver is driver
    assert protocol.eof_received() is False
    protocol.connection_lost(ConnectionResetError())
    protocol.pause_writing()
    protocol.resume_writing()
    assert driver.calls == [(CLIENT, "eof"), (CLIENT, "lost")]  # the driver's, directly
    assert originals[CLIENT].calls == ["pause", "resume"]
    transports[UPSTREAM].protocol.eof_received()
    assert driver.calls[-1] == (UPSTREAM, "eof")


@pytest.mark.parametrize("relay", list(RELAYS))
def test_leaving_open_stops_a_feed_and_leaves_the_relays_on(relay: str) -> None:
    transports = {CLIENT: FakeTransport(), UPSTREAM: FakeTransport()}
    with mock.patch.object(session_module, "_Relay", RELAYS[relay]), mock.patch.object(
        session_module, "_Flow", FLOWS["c" if relay == "c" else "python"]
    ), both_relays:
        session = SessionHarness().session
        driver = Driver(session, transports)
        for side in (CLIENT, UPSTREAM):
            transports[side].protocol = Original(driver, side)
        direct.relay_directly(driver, session, transports[CLIENT], transports[UPSTREAM])  # type: ignore[arg-type]
        relays = {side: transports[side].protocol for side in (CLIENT, UPSTREAM)}
        stops: list[str] = []
        relays[CLIENT].feeder = SimpleNamespace(stop=lambda: stops.append("stopped"))
        direct.stop_feed(transports[CLIENT])  # type: ignore[arg-type]
        assert stops == ["stopped"]
        direct.stop_feed(transports[UPSTREAM])  # type: ignore[arg-type]  (no feed: nothing)
        direct.stop_feed(None)
        assert stops == ["stopped"]
        assert all(transports[side].protocol is relays[side] for side in (CLIENT, UPSTREAM))
    transports[CLIENT].protocol = Original(driver, CLIENT)  # not a relay: nothing to stop
    direct.stop_feed(transports[CLIENT])  # type: ignore[arg-type]
    assert stops == ["stopped"]


def test_no_switch_unless_open_with_both_transports() -> None:
    session = SessionHarness(opened=False).session
    client, upstream = FakeTransport(), FakeTransport()
    assert not direct.relay_directly(None, session, client, upstream)  # type: ignore[arg-type]
    assert client.protocol is None
    assert upstream.protocol is None
    session = SessionHarness().session
    assert not direct.relay_directly(None, session, client, None)  # type: ignore[arg-type]
    assert client.protocol is None


@needs_c
def test_the_c_relay_reads_objects_without_slots_by_name() -> None:
    """A session or leg without ``state``/``out`` slots is read by attribute: the
    same decisions."""
    assert _scan is not None
    flow = _scan.FlowState()
    flow.mask_bit, flow.max_size, flow.rsv_allowed = 0, 1 << 20, 0
    flow.partial, flow.pending, flow.pending_close = b"", (), None
    writes: list[bytes] = []
    fallbacks: list[bytes] = []
    original = SimpleNamespace(data_received=fallbacks.append)
    leg = SimpleNamespace(out=[])
    session = SimpleNamespace(state="open")
    relay = _scan.Relay(flow, leg, session, "open", writes.append, original)
    message = bytes((0x82, 1, 7))
    relay.data_received(message)
    leg.out = [b"ours"]
    relay.data_received(message)
    leg.out = []
    session.state = "closing"
    relay.data_received(message)
    del session.state
    relay.data_received(message)
    assert writes == [message]
    assert fallbacks == [message] * 3
    assert (flow.messages, flow.bytes) == (1, 3)


@needs_c
def test_the_c_relay_wants_a_compiled_flow_state() -> None:
    assert _scan is not None
    original = SimpleNamespace(data_received=print)
    with pytest.raises(TypeError):
        _scan.Relay(scan.PyFlowState(), SimpleNamespace(out=[]), SimpleNamespace(state=1), 1,
                    print, original)


def test_the_session_makes_the_relay_the_module_picked() -> None:
    session = SessionHarness().session
    relay = session.relay_protocol(CLIENT, print, SimpleNamespace(data_received=print))  # type: ignore[arg-type]
    assert type(relay) is scan.Relay
    assert relay.flow is session._client_flow
    assert relay.leg is session._upstream_leg



def nonempty(ops: list[Op]) -> list[Op]:
    """*ops* without empty reads (a socket has no empty read: a pump sees none)."""
    return [("feed", op[1], [c for c in op[2] if c]) if op[0] == "feed" else op for op in ops]


@given(
    ops=st.lists(st.tuples(operation(), st.booleans(), st.booleans()), min_size=1,
                 max_size=8),
    max_size=SIZES, rsv_allowed=RSV,
)
@settings(max_examples=120, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_a_pumped_session_is_the_relayed_session(
    ops: list[tuple[Op, bool, bool]], max_size: int, rsv_allowed: int
) -> None:
    """Reads through a pump on real sockets (sent on, or written when the other
    transport has something buffered) give the same writes, states, counters and
    fallbacks as through its relay protocol, with or without the driver's flushes;
    the C pump and the Python one alike."""
    plain = nonempty([op for op, _, _ in ops])
    flushes, busy = [flush for _, flush, _ in ops], [b for _, _, b in ops]
    reference = run(plain, max_size, rsv_allowed, "python", flushes)
    assert run(plain, max_size, rsv_allowed, "python", flushes, busy) == reference
    if _scan is not None:
        assert run(plain, max_size, rsv_allowed, "c", flushes, busy) == reference


def pumped_session(pump: str) -> tuple[dict[Side, FakeTransport], Driver, Sockets]:
    """An OPEN session on relays of the kind *pump* and its pumps on real sockets:
    the transports, the driver (its reads) and the sockets (close() them)."""
    with mock.patch.object(session_module, "_Relay", RELAYS[pump]), mock.patch.object(
        session_module, "_Flow", FLOWS[pump]
    ):
        session = SessionHarness().session
    transports = {CLIENT: FakeTransport(), UPSTREAM: FakeTransport()}
    driver = Driver(session, transports)
    for side in (CLIENT, UPSTREAM):
        transports[side].protocol = Original(driver, side)
    with mock.patch.object(session_module, "_Relay", RELAYS[pump]):
        direct.relay_directly(driver, session, transports[CLIENT], transports[UPSTREAM])  # type: ignore[arg-type]
    return transports, driver, Sockets(pump, transports)


@pytest.mark.parametrize("pump", list(PUMPS))
def test_a_pump_hands_the_end_of_a_stream_and_errors_over(pump: str) -> None:
    """Nothing read (the peer's EOF) is end(0); an error is end(errno); nothing to read
    is nothing at all; a detached pump reads nothing."""
    transports, driver, sockets = pumped_session(pump)
    try:
        sockets.pumps[CLIENT].readable()  # nothing there yet
        assert sockets.ends == []
        sockets.peer[CLIENT].shutdown(socket.SHUT_WR)
        sockets.pumps[CLIENT].readable()
        assert sockets.ends == [(CLIENT, 0)]
        assert driver.reads == []
        bad = PUMPS[pump](transports[CLIENT].protocol, 1 << 20, 1 << 20, transports[UPSTREAM],
                          lambda code: sockets.ends.append((UPSTREAM, code)))
        bad.readable()
        assert sockets.ends[-1] == (UPSTREAM, errno.EBADF)
        sockets.pumps[UPSTREAM].detach()
        sockets.peer[UPSTREAM].sendall(frames.build_frame(frames.BINARY, b"x", mask=False))
        sockets.pumps[UPSTREAM].readable()
        assert transports[CLIENT].writes == []
    finally:
        sockets.close()


@pytest.mark.parametrize("pump", list(PUMPS))
def test_a_pump_does_not_send_to_a_closing_transport(pump: str) -> None:
    """A closing transport (its socket maybe closed already) gets the read through its
    write, never a send() behind its back."""
    whole = frames.build_frame(frames.BINARY, b"abc", mask=True)
    transports, _, sockets = pumped_session(pump)
    try:
        transports[UPSTREAM].closing = True
        sockets.feed(CLIENT, whole, transports)
        assert transports[UPSTREAM].writes == [whole]  # through write(), not the socket
        transports[UPSTREAM].closing = False
        sockets.feed(CLIENT, whole, transports)
        assert transports[UPSTREAM].writes == [whole, whole]
    finally:
        sockets.close()
