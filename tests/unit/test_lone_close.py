"""A read that is one whole close frame takes a shortcut (Session._lone_close, issue 18):
the same outcome as the frame loop's (``_scan`` then ``_control``) on the same reads.

Checked with hypothesis (derandomized): two opened sessions, one with the shortcut and
one without, are fed the same reads from either side: close frames good and bad
(empty, one byte, codes not allowed on the wire, reasons that are not UTF-8, masked
or not, long payloads), pings and data frames before, after or with them in one
read, reads split anywhere. Both write the same bytes to each side, and end in the
same states, with the same close codes, initiator, reason and counters.
"""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import SessionHarness, build_raw
from wsproxy.core import frames
from wsproxy.core.session import Session
from wsproxy.core.states import Side

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM


class _Looped(Session):
    """A session whose every read goes through the frame loop."""

    __slots__ = ()

    def _lone_close(self, f: object, data: bytes) -> bool:  # type: ignore[override]
        return False


def _opened(kind: type[Session]) -> Session:
    harness = SessionHarness()
    session = harness.session
    session.__class__ = kind
    return session


CODES = st.one_of(
    st.sampled_from([1000, 1001, 1002, 1005, 1006, 1011, 1012, 1015, 2999, 3000, 4999, 5000]),
    st.integers(0, 65535),
)
REASONS = st.one_of(st.just(b""), st.binary(max_size=8), st.text(max_size=140).map(str.encode))


@st.composite
def close_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return b""
    if kind == 1:
        return draw(st.binary(min_size=1, max_size=1))
    return draw(CODES).to_bytes(2, "big") + draw(REASONS)


@st.composite
def frames_from(draw: st.DrawFn, side: Side) -> bytes:
    wrong = draw(st.sampled_from([False, False, False, True]))  # masked the wrong way
    masked = (side is CLIENT) != wrong
    kind = draw(st.sampled_from(["close", "close", "close", "ping", "text", "start", "odd"]))
    if kind == "close":
        payload = draw(close_payloads())
        fin = draw(st.sampled_from([True, True, True, False]))
        return build_raw(frames.CLOSE, payload, mask=masked, fin=fin)
    if kind == "ping":
        return build_raw(frames.PING, draw(st.binary(max_size=6)), mask=masked)
    if kind == "text":
        return build_raw(frames.TEXT, b"hi", mask=masked, fin=draw(st.booleans()))
    if kind == "start":  # a frame whose rest comes in later reads (or never)
        frame = build_raw(frames.BINARY, bytes(20), mask=masked)
        return frame[: draw(st.integers(1, len(frame) - 1))]
    return bytes((0x88,)) + draw(st.binary(max_size=8))


@st.composite
def reads(draw: st.DrawFn) -> list[tuple[Side, bytes]]:
    out: list[tuple[Side, bytes]] = []
    for _ in range(draw(st.integers(1, 5))):
        side = draw(st.sampled_from([CLIENT, UPSTREAM]))
        data = b"".join(draw(st.lists(frames_from(side), min_size=1, max_size=3)))
        cut = draw(st.integers(0, len(data)))
        if draw(st.booleans()) and 0 < cut < len(data):
            out += [(side, data[:cut]), (side, data[cut:])]
        else:
            out.append((side, data))
    return out


def _outputs(s: Session) -> tuple[list[bytes], bool, list[bytes], bool]:
    return s.outputs(True, True)


def _state(s: Session) -> tuple[object, ...]:
    to_client, to_backend = s.flows_to()
    return (
        s.state, s.leg_state(CLIENT), s.leg_state(UPSTREAM), s.close_codes_received(),
        s.close_code_sent(CLIENT), s.close_code_sent(UPSTREAM), s.initiator, s.close_reason,
        s.backend_restarting, to_client.messages, to_backend.messages, to_client.bytes,
        to_backend.bytes, to_client.undelivered, to_backend.undelivered,
    )


@settings(max_examples=600, derandomize=True, deadline=None)
@given(reads())
def test_the_shortcut_decides_as_the_frame_loop(steps: list[tuple[Side, bytes]]) -> None:
    short, looped = _opened(Session), _opened(_Looped)
    # The proxy's own frames to a backend are masked with a random key: one key here.
    with mock.patch.object(frames.os, "urandom", lambda n: bytes(range(1, n + 1))):
        for side, data in steps:
            for s in (short, looped):
                s.receive_data(side, data)
            assert _outputs(short) == _outputs(looped)
            assert _state(short) == _state(looped)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(reads())
def test_ending_reads_what_the_separate_readers_read(steps: list[tuple[Side, bytes]]) -> None:
    """Session.ending() (the end's metrics and closed line) is the counters of
    flows_to(), close_codes_received() and close_code_sent(CLIENT) in one call, after
    any reads."""
    s = _opened(Session)
    with mock.patch.object(frames.os, "urandom", lambda n: bytes(range(1, n + 1))):
        for side, data in steps:
            s.receive_data(side, data)
            _outputs(s)
            *counts, client_code, upstream_code, sent = s.ending()
            to_client, to_backend = s.flows_to()
            assert counts == [
                to_backend.messages, to_client.messages, to_backend.bytes, to_client.bytes,
                to_backend.undelivered, to_client.undelivered,
            ]
            assert (client_code, upstream_code) == s.close_codes_received()
            assert sent == s.close_code_sent(CLIENT)


def test_a_lone_close_goes_through_the_shortcut() -> None:
    calls: list[bytes] = []

    class Counting(Session):
        __slots__ = ()

        def _scan(self, f: object, data: bytes) -> None:  # type: ignore[override]
            calls.append(data)
            super()._scan(f, data)  # type: ignore[arg-type]

    s = _opened(Counting)
    s.receive_data(CLIENT, build_raw(frames.CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    s.receive_data(UPSTREAM, build_raw(frames.CLOSE, (1000).to_bytes(2, "big"), mask=False))
    assert calls == []
    assert s.close_codes_received() == (1000, 1000)
