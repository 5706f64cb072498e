"""A close frame read by a relay protocol goes to the driver's ``receive_close`` (issue 18):
the relay (wsproxy.core.scan.PyRelay._close and its C twin in _scan.c) checks the frame
and the flow, the session decides and queues the frame for the other side
(Session.relay_close), the driver writes it on. Nothing else changes.

Checked with hypothesis (derandomized): a session between two fake transports, fed
reads from both sides that are often one whole close frame (codes allowed or not,
reasons UTF-8 or not, empty, one byte, masked the wrong way, not final), with data
frames, our pings, closes of the proxy's own, EOFs and a backend that restarts in
between: through the driver alone, and with each relay on both transports (with a
driver's receive_close as wsproxy.io.connection's does it): the same writes, states,
close codes, initiator, reason and counters; the two relays hand the same reads to the
driver's receive and to its receive_close.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SessionHarness, build_raw
from tests.unit.test_direct_relay import (
    RELAYS,
    Driver,
    FakeTransport,
    Original,
    both_relays,
    snapshot,
)
from tests.unit.test_scan import FLOWS, _scan
from wsproxy.core import frames, scan
from wsproxy.core import session as session_module
from wsproxy.core.states import SessionState, Side
from wsproxy.io import direct

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
OPEN = SessionState.OPEN


class ClosingDriver(Driver):
    """The test driver, with wsproxy.io.connection.Connection's receive_close."""

    def __init__(self, session: Any, transports: dict[Side, FakeTransport]) -> None:
        super().__init__(session, transports)
        self.close_reads: list[tuple[Side, bytes, int | None, str, int]] = []

    def receive_close(self, side: Side, frame: bytes, code: int | None, reason: str) -> bool:
        session = self.session
        done = session.relay_close(side, frame, code, reason)
        self.close_reads.append((side, frame, code, reason, done))
        if done:
            assert session.data_to_send(side.other) == [frame]  # queued whole, alone
            self.transports[side.other].write(frame)
        return done


CODES = st.sampled_from([1000, 1000, 1001, 1001, 1012, 1012, 4000, 1002, 1005, 1006, 1011,
                         1014, 1015, 2999, 3000, 4999, 5000, 0])
REASONS = st.sampled_from([b"", b"", b"", b"bye", "é".encode(), b"\xff", b"\xed\xa0\x80",
                           b"x" * 120])


@st.composite
def close_frame(draw: st.DrawFn, side: Side) -> bytes:
    masked = (side is CLIENT) != draw(st.sampled_from([False] * 7 + [True]))
    kind = draw(st.sampled_from(["code", "code", "code", "empty", "one", "long", "fin"]))
    if kind == "empty":
        return build_raw(frames.CLOSE, b"", mask=masked)
    if kind == "one":
        return build_raw(frames.CLOSE, b"\x03", mask=masked)
    payload = draw(CODES).to_bytes(2, "big") + draw(REASONS)
    if kind == "long":
        payload = payload + b"y" * 10  # 124 + 10: over 125 with the long reason
    return build_raw(frames.CLOSE, payload, mask=masked, fin=kind != "fin")


@st.composite
def op(draw: st.DrawFn) -> tuple[Any, ...]:
    side = draw(st.sampled_from([CLIENT, UPSTREAM]))
    what = draw(st.sampled_from(["close_read"] * 4 + ["data", "start", "ping", "close", "eof"]))
    masked = side is CLIENT
    if what == "close_read":
        frame = draw(close_frame(side))
        if draw(st.integers(0, 5)) == 0:  # now and then with more in the same read
            frame += build_raw(frames.TEXT, b"hi", mask=masked)
        return ("feed", side, [frame])
    if what == "data":
        return ("feed", side, [build_raw(frames.BINARY, b"abc", mask=masked)])
    if what == "start":  # a frame in flight: what follows it is not read alone
        frame = build_raw(frames.BINARY, bytes(20), mask=masked)
        return ("feed", side, [frame[: draw(st.integers(1, len(frame) - 1))]])
    if what == "close":
        return ("close", side, draw(st.sampled_from([1000, 1001, 4000])))
    return (what, side)


def run(ops: list[tuple[Any, ...]], relay: str | None, restarting: bool) -> list[object]:
    flow = "c" if relay == "c" else "python"
    no_random = SimpleNamespace(urandom=lambda n: b"\x01" * n)
    with mock.patch.object(session_module, "_Flow", FLOWS[flow]), mock.patch.object(
        session_module, "_Relay", RELAYS[relay or "python"]
    ), mock.patch.object(frames, "os", no_random), both_relays:
        session = SessionHarness().session
        if restarting:
            session.restart_code, session.restart_reason = 1012, "restarting"
        transports = {CLIENT: FakeTransport(), UPSTREAM: FakeTransport()}
        driver = ClosingDriver(session, transports)
        for side in (CLIENT, UPSTREAM):
            transports[side].protocol = Original(driver, side)
        if relay is not None:
            assert direct.relay_directly(driver, session, transports[CLIENT], transports[UPSTREAM])  # type: ignore[arg-type]
            assert all(t.protocol.driver is driver for t in transports.values())
        trace: list[object] = []
        for operation in ops:
            kind, side = operation[0], operation[1]
            if kind == "feed":
                for chunk in operation[2]:
                    transports[side].protocol.data_received(chunk)
            elif kind == "ping":
                session.send_ping(side, b"7")
                driver.flush()
            elif kind == "close":
                session.close(side, operation[2], "bye")
                driver.flush()
            else:
                session.receive_eof(side)
                driver.flush()
            trace.append(snapshot(session, transports))
        trace.append((
            session.close_codes(), session.initiator, session.close_reason,
            session.backend_restarting,
            [(session.undelivered(s), session.close_code_sent(s)) for s in (CLIENT, UPSTREAM)],
        ))
        trace.append(("reads", driver.reads, driver.close_reads) if relay else ())
        return trace


@given(ops=st.lists(op(), min_size=1, max_size=6), restarting=st.booleans())
@settings(max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_a_close_read_by_the_relay_is_the_drivers_close(
    ops: list[tuple[Any, ...]], restarting: bool
) -> None:
    reference = run(ops, None, restarting)[:-1]
    python = run(ops, "python", restarting)
    assert python[:-1] == reference
    if _scan is not None:
        assert run(ops, "c", restarting) == python  # the same reads to close_read too


@pytest.mark.parametrize("relay", list(RELAYS))
def test_the_usual_end_goes_through_receive_close_both_ways(relay: str) -> None:
    client_close = build_raw(frames.CLOSE, (1000).to_bytes(2, "big") + b"done", mask=True)
    answer = build_raw(frames.CLOSE, (1000).to_bytes(2, "big"), mask=False)
    trace = run([("feed", CLIENT, [client_close]), ("feed", UPSTREAM, [answer])], relay, False)
    reads, close_reads = trace[-1][1], trace[-1][2]  # type: ignore[index]
    assert reads == []  # the driver's receive() saw neither
    assert close_reads == [(CLIENT, client_close, 1000, "done", True),
                           (UPSTREAM, answer, 1000, "", True)]
    assert trace[0][1] == [client_close]  # type: ignore[index]  (to the backend as it came)
    assert trace[1][0] == [answer]  # type: ignore[index]
    assert trace[1][2] is SessionState.CLOSED  # type: ignore[index]


@pytest.mark.parametrize("relay", list(RELAYS))
def test_a_restarting_backend_goes_the_drivers_way(relay: str) -> None:
    going = build_raw(frames.CLOSE, (1001).to_bytes(2, "big"), mask=False)
    trace = run([("feed", UPSTREAM, [going])], relay, True)
    reads, close_reads = trace[-1][1], trace[-1][2]  # type: ignore[index]
    assert close_reads == [(UPSTREAM, going, 1001, "", False)]
    assert reads == [(UPSTREAM, going)]
    assert trace[-2][3] is True  # type: ignore[index]  (backend_restarting)


@pytest.mark.parametrize("relay", list(RELAYS))
def test_no_close_read_without_a_driver_or_while_fed(relay: str) -> None:
    flow_kind = "c" if relay == "c" else "python"
    with mock.patch.object(session_module, "_Flow", FLOWS[flow_kind]), mock.patch.object(
        session_module, "_Relay", RELAYS[relay]
    ):
        session = SessionHarness().session
        calls: list[tuple[Any, ...]] = []
        fallbacks: list[bytes] = []
        reads: list[tuple[Side, bytes]] = []
        original = SimpleNamespace(data_received=fallbacks.append)
        driver = SimpleNamespace(receive=lambda *args: reads.append(args),
                                 receive_close=lambda *args: calls.append(args) or True)
        protocol = session.relay_protocol(CLIENT, print, original)  # type: ignore[arg-type]
    frame = build_raw(frames.CLOSE, (1000).to_bytes(2, "big"), mask=True)
    protocol.data_received(frame)  # no driver: the original protocol's way
    protocol.driver, protocol.side = driver, CLIENT
    protocol.feeder = SimpleNamespace()  # a feed: the driver's receive
    protocol.data_received(frame)
    protocol.feeder = None
    protocol.data_received(bytearray(frame))  # not bytes: the driver's receive
    protocol.data_received(frame)
    assert fallbacks == [frame]
    assert reads == [(CLIENT, frame), (CLIENT, bytearray(frame))]
    assert calls == [(CLIENT, frame, 1000, "")]


def test_the_python_relay_is_the_one_picked_without_speedups() -> None:
    assert hasattr(scan.PyRelay, "_close")
    relay = scan.PyRelay(SimpleNamespace(), SimpleNamespace(out=[]), SimpleNamespace(state=1), 1,  # type: ignore[arg-type]
                         print, SimpleNamespace(data_received=print))  # type: ignore[arg-type]
    assert relay.driver is None
