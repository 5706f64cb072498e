"""The relay phase of Session, between two real wsproto peers (tests/helpers.py).

Most tests run in both directions: ``src`` is the side whose peer sends, ``dst`` the
side whose peer should receive.
"""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from tests.helpers import SessionHarness, assemble, build_raw, chunks
from wsproxy.core import LegState, SessionState, Side
from wsproxy.core import frames as fr
from wsproxy.core.session import PING_PREFIX

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM


@pytest.fixture(params=[CLIENT, UPSTREAM], ids=["from-client", "from-upstream"])
def src(request: pytest.FixtureRequest) -> Side:
    return request.param  # type: ignore[no-any-return]


def mask_for(side: Side) -> bool:
    """Whether frames *from* side's peer are masked (§5.1)."""
    return side is CLIENT


def assert_closed_cleanly(h: SessionHarness) -> None:
    assert h.session.leg_state(CLIENT) is LegState.CLOSED
    assert h.session.leg_state(UPSTREAM) is LegState.CLOSED
    assert h.session.state is SessionState.CLOSED
    assert h.session.should_close(CLIENT)
    assert h.session.should_close(UPSTREAM)


# Messages…


MESSAGES: list[list[Event]] = [
    [TextMessage(data="hello")],
    [BytesMessage(data=b"\x00\x01\xff")],
    [TextMessage(data="")],
    [BytesMessage(data=b"")],
    [TextMessage(data="ünïcødé ✓ 🙂")],
    [BytesMessage(data=bytes(range(256)) * 2)],  # 16-bit length
    [
        TextMessage(data="frag", message_finished=False),
        TextMessage(data="men", message_finished=False),
        TextMessage(data="ted ✓"),
    ],
    [
        BytesMessage(data=b"a" * 200, message_finished=False),
        BytesMessage(data=b"", message_finished=False),
        BytesMessage(data=b"b" * 3),
    ],
    [TextMessage(data="one"), BytesMessage(data=b"two"), TextMessage(data="three")],
]


@pytest.mark.parametrize("chunk_size", [0, 1, 3], ids=["whole", "bytewise", "by-3"])
@pytest.mark.parametrize("events", MESSAGES, ids=lambda e: repr(e)[:40])
def test_messages_arrive_intact_and_in_order(
    src: Side, chunk_size: int, events: list[Event]
) -> None:
    h = SessionHarness(chunk_size=chunk_size)
    for event in events:
        h.sends(src, event)
    assert assemble(h.received(src.other)) == assemble(events)
    assert h.received(src) == []
    assert h.session.state is SessionState.OPEN


def test_large_message_with_a_64_bit_length(src: Side) -> None:
    h = SessionHarness(chunk_size=4093)
    data = bytes(range(256)) * 300  # 76800 bytes
    h.sends(src, BytesMessage(data=data))
    assert assemble(h.received(src.other)) == [BytesMessage(data=data)]


def test_frames_are_forwarded_as_they_came(src: Side) -> None:
    h = SessionHarness()
    sent = h.peer(src).send(BytesMessage(data=b"x" * 300))
    h.sends_raw(src, sent)
    [frame] = h.frames_to(src.other)
    assert frame.masked is mask_for(src)
    assert frame.payload == b"x" * 300


def test_counters(src: Side) -> None:
    h = SessionHarness()
    h.sends(src, TextMessage(data="ab", message_finished=False))
    h.sends(src, TextMessage(data="c"))
    h.sends(src, BytesMessage(data=b"123"))
    assert h.session.messages(src.other) == 2
    assert h.session.messages(src) == 0
    head = 6 if src is CLIENT else 2
    assert h.session.bytes_relayed(src.other) == 3 * head + 6
    assert h.session.undelivered(src.other) == 0


# Any chunking relays the same messages…


@st.composite
def traffic(draw: st.DrawFn) -> list[Event]:
    """Messages, some fragmented, with pings between messages and between fragments."""
    events: list[Event] = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            parts = draw(st.lists(st.text(max_size=40), min_size=1, max_size=4))
            make = TextMessage
        else:
            parts = draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
            make = BytesMessage  # type: ignore[assignment]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            events.append(make(data=part, message_finished=last))  # type: ignore[arg-type]
            if draw(st.integers(0, 3)) == 0:
                events.append(Ping(payload=draw(st.binary(max_size=125))))
    return events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=traffic(),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    from_client=st.booleans(),
)
def test_any_chunking_relays_the_same_messages(
    events: list[Event], cuts: list[int], from_client: bool
) -> None:
    source = CLIENT if from_client else UPSTREAM
    h = SessionHarness()
    h.auto_pong[source.other] = False  # keep the stream one-way
    stream = b"".join(h.peer(source).send(event) for event in events)
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(bounds):
        h.session.receive_data(source, stream[start:end])
        h.pump()
    assert assemble(h.received(source.other)) == assemble(events)
    assert h.written_to(source.other) == stream  # forwarded untouched


def frame_soup(masked: bool) -> st.SearchStrategy[bytes]:
    """Frames that are often valid and often not, and some plain garbage."""
    payloads = st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=130))
    frame = st.builds(
        lambda opcode, payload, fin, rsv, flip: build_raw(
            opcode, payload if opcode != fr.TEXT else payload.decode("utf-8", "replace").encode(),
            fin=fin, rsv=rsv, mask=masked is not flip,
        ),
        st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11]),
        payloads,
        st.booleans(),
        st.sampled_from([0, 0, 0, 0x40, 0x10]),
        st.sampled_from([False] * 9 + [True]),
    )
    return st.lists(st.one_of(frame, frame, frame, st.binary(max_size=6)), max_size=8).map(
        b"".join
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data(), chunk=st.integers(1, 16), from_client=st.booleans())
def test_frame_soup_ends_in_a_state_never_an_exception(
    data: st.DataObject, chunk: int, from_client: bool
) -> None:
    source = CLIENT if from_client else UPSTREAM
    soup = data.draw(frame_soup(masked=from_client))
    h = SessionHarness()
    for piece in chunks(soup, chunk):
        h.sends_raw(source, piece)
    assert h.session.state in (SessionState.OPEN, SessionState.CLOSING, SessionState.FAILED,
                               SessionState.CLOSED)
    h.eof(source)
    assert h.session.state in (SessionState.FAILED, SessionState.CLOSED)
    assert h.session.should_close(source)
    # The other peer never had to refuse a frame: every close it saw is one that was
    # written to it (a refused frame would show up as a close wsproto made up). The
    # one exception is UTF-8 in text payloads, which the proxy leaves to the endpoints
    # (SPEC.md): garbage can spell a text frame that the peer refuses with 1007.
    other = source.other
    seen = [e.code for e in h.received(other) if isinstance(e, CloseConnection)]
    written = [1005 if code is None else code for code, _ in h.closes_to(other)]
    if seen == [*written, 1007]:
        seen = written  # the peer's own refusal of invalid UTF-8
    assert seen == written


# Pings and pongs…


def test_peer_ping_and_its_pong_go_end_to_end(src: Side) -> None:
    h = SessionHarness()
    h.sends(src, Ping(payload=b"rtt-1"))
    assert h.received(src.other) == [Ping(payload=b"rtt-1")]
    assert h.received(src) == [Pong(payload=b"rtt-1")]  # answered by the far peer
    assert h.session.last_pong == {}


def test_unsolicited_pong_is_relayed(src: Side) -> None:
    h = SessionHarness()
    h.sends(src, Pong(payload=b"heartbeat"))
    assert h.received(src.other) == [Pong(payload=b"heartbeat")]


def test_ping_between_fragments_is_relayed_in_place(src: Side) -> None:
    h = SessionHarness()
    h.sends(src, TextMessage(data="a", message_finished=False))
    h.sends(src, Ping(payload=b"p"))
    h.sends(src, TextMessage(data="b"))
    events = h.received(src.other)
    assert [type(e) for e in events] == [TextMessage, Ping, TextMessage]
    assert assemble(events) == [Ping(payload=b"p"), TextMessage(data="ab")]


@pytest.mark.parametrize("side", [CLIENT, UPSTREAM])
def test_our_ping_reaches_the_peer_and_its_pong_stays_with_us(side: Side) -> None:
    h = SessionHarness()
    h.session.send_ping(side, b"hb-7")
    h.pump()
    [frame] = h.frames_to(side)
    assert frame.masked is (side is UPSTREAM)
    assert h.received(side) == [Ping(payload=PING_PREFIX + b"hb-7")]
    assert h.received(side.other) == []  # the pong is not relayed
    assert h.session.last_pong == {side: b"hb-7"}
    assert h.session.messages(side.other) == 0


def test_pong_that_looks_like_ours_from_the_peer_is_absorbed() -> None:
    h = SessionHarness()
    h.client_sends(Pong(payload=PING_PREFIX + b"x"))
    assert h.upstream_received() == []
    assert h.session.last_pong == {CLIENT: b"x"}


@pytest.mark.parametrize("chunk_size", [0, 1])
def test_our_ping_waits_for_the_frame_in_flight(src: Side, chunk_size: int) -> None:
    dst = src.other
    h = SessionHarness(chunk_size=chunk_size)
    data = bytes(range(256)) * 8
    stream = h.peer(src).send(BytesMessage(data=data))
    h.sends_raw(src, stream[:1000])
    partial = h.received(dst)
    assert partial, "part of the message should be on its way"
    h.session.send_ping(dst, b"mid")
    h.pump()
    assert h.received(dst) == []  # not in the middle of the frame
    assert h.unparsed_to(dst)  # the frame is still open on the wire
    h.sends_raw(src, stream[1000:])
    events = h.received(dst)
    assert isinstance(events[-1], Ping)
    assert events[-1].payload == PING_PREFIX + b"mid"
    assert assemble(partial + events[:-1]) == [BytesMessage(data=data)]
    assert h.session.last_pong == {dst: b"mid"}
    assert h.unparsed_to(dst) == b""


def test_ping_not_sent_to_a_closing_leg() -> None:
    h = SessionHarness()
    h.auto_close[CLIENT] = False
    h.session.close(CLIENT, 1001, "drain")
    h.pump()
    h.client_received()
    h.session.send_ping(CLIENT, b"late")
    h.pump()
    assert h.client_received() == []


# Closing…


def test_close_is_relayed_and_answered(src: Side) -> None:
    dst = src.other
    h = SessionHarness()
    h.sends(src, CloseConnection(code=4000, reason="bye now"))
    assert h.received(dst) == [CloseConnection(code=4000, reason="bye now")]
    assert h.received(src) == [CloseConnection(code=4000, reason="bye now")]  # dst's answer
    assert_closed_cleanly(h)
    assert h.session.initiator == src.value
    assert h.session.close_codes() == {"client": 4000, "upstream": 4000}


def test_close_without_a_code_is_relayed(src: Side) -> None:
    h = SessionHarness()
    h.sends_raw(src, build_raw(fr.CLOSE, b"", mask=mask_for(src)))
    assert h.received(src.other) == [CloseConnection(code=1005, reason="")]
    assert h.closes_to(src.other) == [(None, "")]
    assert_closed_cleanly(h)


def test_state_while_waiting_for_the_answer(src: Side) -> None:
    h = SessionHarness()
    h.auto_close[src.other] = False
    h.sends(src, CloseConnection(code=1000))
    assert h.session.state is SessionState.CLOSING
    assert h.session.leg_state(src) is LegState.CLOSE_RECEIVED
    assert h.session.leg_state(src.other) is LegState.CLOSE_SENT
    assert not h.session.should_close(src)
    [event] = h.received(src.other)
    assert isinstance(event, CloseConnection)
    h.sends(src.other, event.response())
    assert_closed_cleanly(h)


def test_messages_before_the_answer_still_arrive(src: Side) -> None:
    h = SessionHarness()
    h.auto_close[src.other] = False
    crossing = h.peer(src.other).send(TextMessage(data="last words"))
    h.sends(src, CloseConnection(code=1000))
    [close] = h.received(src.other)
    assert isinstance(close, CloseConnection)
    assert h.session.leg_state(src.other) is LegState.CLOSE_SENT
    h.sends_raw(src.other, crossing)  # sent before our close reached it
    assert h.received(src) == [TextMessage(data="last words")]
    h.sends(src.other, close.response())
    assert h.received(src) == [CloseConnection(code=1000, reason="")]
    assert_closed_cleanly(h)


def test_data_after_a_close_is_ignored(src: Side) -> None:
    h = SessionHarness()
    h.auto_close[src.other] = False
    h.sends(src, CloseConnection(code=1000))
    h.received(src.other)
    h.sends_raw(src, build_raw(fr.TEXT, b"zombie", mask=mask_for(src)))
    assert h.received(src.other) == []


def test_crossing_closes() -> None:
    h = SessionHarness()
    h.client_sends(CloseConnection(code=1000, reason="client"), flush=False)
    h.upstream_sends(CloseConnection(code=1001, reason="backend"), flush=False)
    h.pump()
    assert h.client_received() == [CloseConnection(code=1001, reason="backend")]
    assert h.upstream_received() == [CloseConnection(code=1000, reason="client")]
    assert_closed_cleanly(h)
    assert h.session.close_codes() == {"client": 1000, "upstream": 1001}


# The proxy's own close (drain, revocation)…


@pytest.mark.parametrize("side", [CLIENT, UPSTREAM])
def test_proxy_close(side: Side) -> None:
    other = side.other
    h = SessionHarness()
    h.auto_close[side] = False
    h.sends(side, TextMessage(data="sent before our close"), flush=False)
    h.session.close(side, 1001, "drain")
    h.pump()
    assert h.received(side) == [CloseConnection(code=1001, reason="drain")]
    assert h.received(other) == [TextMessage(data="sent before our close")]
    assert h.session.initiator == "proxy"
    assert h.session.state is SessionState.CLOSING

    # What the far side sends now cannot be delivered: *side* was sent a close.
    h.sends(other, TextMessage(data="too late"))
    h.sends(other, BytesMessage(data=b"also late", message_finished=False))
    h.sends(other, BytesMessage(data=b"!"))
    assert h.received(side) == []
    assert h.session.undelivered(side) == 2
    assert h.session.messages(side) == 0

    # The answer is relayed on, and the far side's answer to it is absorbed.
    h.sends(side, CloseConnection(code=1001, reason="drain"))
    assert h.received(other) == [CloseConnection(code=1001, reason="drain")]
    assert h.received(side) == []
    assert_closed_cleanly(h)


def test_proxy_close_waits_for_the_frame_in_flight() -> None:
    h = SessionHarness()
    stream = h.backend.send(BytesMessage(data=b"z" * 5000))
    h.upstream_sends_raw(stream[:100])
    h.session.close(CLIENT, 1001, "drain")
    h.pump()
    assert h.closes_to(CLIENT) == []
    assert h.session.leg_state(CLIENT) is LegState.OPEN
    h.upstream_sends_raw(stream[100:])
    events = h.client_received()
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1001
    assert assemble(events[:-1]) == [BytesMessage(data=b"z" * 5000)]
    assert_closed_cleanly(h)


def test_proxy_close_crossing_the_client_close() -> None:
    h = SessionHarness()
    h.client_sends(CloseConnection(code=1000, reason="mine"), flush=False)
    h.session.close(CLIENT, 1001, "drain")
    h.pump()
    assert h.client_received() == [CloseConnection(code=1001, reason="drain")]
    assert h.upstream_received() == [CloseConnection(code=1000, reason="mine")]
    assert_closed_cleanly(h)


def test_close_before_open_does_nothing() -> None:
    h = SessionHarness(opened=False)
    h.send_request()
    h.session.close(CLIENT, 1001)
    assert h.session.state is SessionState.AWAIT_REQUEST
    assert h.session.data_to_send(CLIENT) == []


def test_abort() -> None:
    h = SessionHarness()
    h.session.abort()
    assert h.session.state is SessionState.FAILED
    assert h.session.should_close(CLIENT)
    assert h.session.should_close(UPSTREAM)
    h.session.abort()  # idempotent
    assert h.session.state is SessionState.FAILED


# max_message_size…


def test_message_over_the_limit_closes_both_legs_with_1009(src: Side) -> None:
    h = SessionHarness(max_message_size=100)
    h.sends(src, BytesMessage(data=b"x" * 101))
    for side in Side:
        assert [type(e) for e in h.received(side)] == [CloseConnection]
        assert h.closes_to(side) == [(1009, "message too big")]
        assert [f.opcode for f in h.frames_to(side)] == [fr.CLOSE]  # nothing else
    assert_closed_cleanly(h)
    assert h.session.initiator == "proxy"


def test_message_at_the_limit_passes(src: Side) -> None:
    h = SessionHarness(max_message_size=100)
    h.sends(src, TextMessage(data="y" * 100))
    assert h.received(src.other) == [TextMessage(data="y" * 100)]


@pytest.mark.parametrize("chunk_size", [0, 1])
def test_fragmented_message_over_the_limit(src: Side, chunk_size: int) -> None:
    dst = src.other
    h = SessionHarness(max_message_size=100, chunk_size=chunk_size)
    h.sends(src, BytesMessage(data=b"a" * 60, message_finished=False))
    assert assemble([*h.received(dst), BytesMessage(data=b"")]) == [BytesMessage(data=b"a" * 60)]
    h.sends(src, BytesMessage(data=b"b" * 60))
    # The frame that passed the limit never went out; both peers got 1009.
    assert [f.payload for f in h.frames_to(dst) if f.opcode != fr.CLOSE] == [b"a" * 60]
    assert h.closes_to(dst) == [(1009, "message too big")]
    assert h.closes_to(src) == [(1009, "message too big")]
    assert_closed_cleanly(h)


def test_oversized_frame_fed_in_pieces_never_leaks(src: Side) -> None:
    h = SessionHarness(max_message_size=1000, chunk_size=7)
    h.sends(src, BytesMessage(data=b"s" * 300))
    h.received(src.other)
    h.sends(src, BytesMessage(data=b"B" * 70000))
    assert all(b"B" not in f.payload for f in h.frames_to(src.other))
    assert h.closes_to(src.other) == [(1009, "message too big")]
    assert_closed_cleanly(h)


def test_too_big_while_a_frame_to_the_sender_is_in_flight(src: Side) -> None:
    other = src.other
    h = SessionHarness(max_message_size=1000)
    # Its wsproto has "sent" all of the message below, so it must not answer on its own.
    h.auto_close[other] = False
    stream = h.peer(other).send(BytesMessage(data=b"z" * 900))
    h.sends_raw(other, stream[:100])
    h.sends(src, BytesMessage(data=b"x" * 2000))
    assert h.closes_to(other) == [(1009, "message too big")]
    assert h.closes_to(src) == []  # not in the middle of the frame in flight
    h.sends_raw(other, stream[100:])
    assert assemble(h.received(src)) == [
        BytesMessage(data=b"z" * 900),
        CloseConnection(code=1009, reason="message too big"),
    ]
    [close] = h.received(other)
    assert isinstance(close, CloseConnection)
    h.sends(other, close.response())
    assert_closed_cleanly(h)


# Protocol errors…


CLIENT_ERRORS = {
    "unmasked": (build_raw(fr.TEXT, b"hi", mask=False), 1002),
    "reserved-opcode-3": (build_raw(0x3, b"x"), 1002),
    "reserved-opcode-7": (build_raw(0x7, b""), 1002),
    "reserved-control-opcode-b": (build_raw(0xB, b""), 1002),
    "rsv1": (build_raw(fr.TEXT, b"x", rsv=0x40), 1002),
    "rsv2": (build_raw(fr.BINARY, b"x", rsv=0x20), 1002),
    "rsv3": (build_raw(fr.TEXT, b"x", rsv=0x10), 1002),
    "continuation-without-start": (build_raw(fr.CONTINUATION, b"x"), 1002),
    "data-frame-mid-message": (
        build_raw(fr.TEXT, b"a", fin=False) + build_raw(fr.TEXT, b"b"),
        1002,
    ),
    "fragmented-ping": (build_raw(fr.PING, b"p", fin=False), 1002),
    "fragmented-close": (build_raw(fr.CLOSE, b"\x03\xe8", fin=False), 1002),
    "rsv-on-ping": (build_raw(fr.PING, b"", rsv=0x40), 1002),
    "ping-126-bytes": (build_raw(fr.PING, b"p" * 126), 1002),
    "pong-200-bytes": (build_raw(fr.PONG, b"p" * 200), 1002),
    "close-1-byte": (build_raw(fr.CLOSE, b"\x03"), 1002),
    "close-999": (build_raw(fr.CLOSE, (999).to_bytes(2, "big")), 1002),
    "close-1004": (build_raw(fr.CLOSE, (1004).to_bytes(2, "big")), 1002),
    "close-1005": (build_raw(fr.CLOSE, (1005).to_bytes(2, "big")), 1002),
    "close-1006": (build_raw(fr.CLOSE, (1006).to_bytes(2, "big")), 1002),
    "close-1015": (build_raw(fr.CLOSE, (1015).to_bytes(2, "big")), 1002),
    "close-1016": (build_raw(fr.CLOSE, (1016).to_bytes(2, "big")), 1002),
    "close-2999": (build_raw(fr.CLOSE, (2999).to_bytes(2, "big")), 1002),
    "close-5000": (build_raw(fr.CLOSE, (5000).to_bytes(2, "big")), 1002),
    "close-reason-not-utf8": (build_raw(fr.CLOSE, b"\x03\xe8\xc3\x28"), 1007),
}


@pytest.mark.parametrize("chunk_size", [0, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("data", "code"), CLIENT_ERRORS.values(), ids=CLIENT_ERRORS.keys())
def test_client_protocol_error(data: bytes, code: int, chunk_size: int) -> None:
    h = SessionHarness(chunk_size=chunk_size)
    h.client_sends_raw(data)
    assert [c for c, _ in h.closes_to(CLIENT)] == [code]
    assert h.session.leg_state(CLIENT) is LegState.FAILED
    assert h.session.should_close(CLIENT)
    events = h.upstream_received()
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1001
    assert all(isinstance(e, TextMessage) for e in events[:-1])  # a fragment at most
    # The backend answered our 1001 by itself: the session is over.
    assert h.session.leg_state(UPSTREAM) is LegState.CLOSED
    assert h.session.state is SessionState.FAILED
    assert h.session.initiator == "proxy"


UPSTREAM_ERRORS = {
    "masked": (build_raw(fr.TEXT, b"hi", mask=True), 1002),
    "reserved-opcode": (build_raw(0x3, b"x", mask=False), 1002),
    "rsv1": (build_raw(fr.TEXT, b"x", rsv=0x40, mask=False), 1002),
    "continuation-without-start": (build_raw(fr.CONTINUATION, b"x", mask=False), 1002),
    "fragmented-ping": (build_raw(fr.PING, b"p", fin=False, mask=False), 1002),
    "ping-126-bytes": (build_raw(fr.PING, b"p" * 126, mask=False), 1002),
    "close-1005": (build_raw(fr.CLOSE, (1005).to_bytes(2, "big"), mask=False), 1002),
    "close-reason-not-utf8": (build_raw(fr.CLOSE, b"\x03\xe8\xff", mask=False), 1007),
}


@pytest.mark.parametrize(("data", "code"), UPSTREAM_ERRORS.values(), ids=UPSTREAM_ERRORS.keys())
def test_upstream_protocol_error(data: bytes, code: int) -> None:
    h = SessionHarness()
    h.upstream_sends_raw(data)
    assert [c for c, _ in h.closes_to(UPSTREAM)] == [code]
    assert h.session.leg_state(UPSTREAM) is LegState.FAILED
    assert h.closes_to(CLIENT) == [(1014, "backend error")]
    assert h.client_received() == [CloseConnection(code=1014, reason="backend error")]
    assert h.session.state is SessionState.FAILED


def test_frames_before_the_error_are_still_relayed() -> None:
    h = SessionHarness()
    good = h.client.send(TextMessage(data="fine"))
    h.client_sends_raw(good + build_raw(fr.TEXT, b"bad", mask=False))
    events = h.upstream_received()
    assert events[0] == TextMessage(data="fine")
    assert events[1] == CloseConnection(code=1001, reason="client error")


def test_oversized_control_frame_fails_on_its_header() -> None:
    # Regression (fixed in 3af4a85): it used to be buffered until its payload arrived.
    h = SessionHarness()
    header = build_raw(fr.PING, b"", length=1 << 40)  # header and mask key only
    h.client_sends_raw(header)
    h.client_sends_raw(b"\x00" * 65536)
    assert [c for c, _ in h.closes_to(CLIENT)] == [1002]
    assert h.session.leg_state(CLIENT) is LegState.FAILED


# EOF…


def test_client_eof_while_open() -> None:
    h = SessionHarness()
    h.client_eof()
    assert h.upstream_received() == [CloseConnection(code=1001, reason="connection lost")]
    assert h.session.leg_state(CLIENT) is LegState.FAILED
    assert h.session.leg_state(UPSTREAM) is LegState.CLOSED  # the backend answered
    assert h.session.state is SessionState.FAILED
    assert h.session.initiator == "client"
    assert h.session.should_close(UPSTREAM)


def test_upstream_eof_while_open() -> None:
    h = SessionHarness()
    h.upstream_eof()
    assert h.closes_to(CLIENT) == [(1014, "connection lost")]
    assert h.client_received() == [CloseConnection(code=1014, reason="connection lost")]
    assert h.session.leg_state(UPSTREAM) is LegState.FAILED
    assert h.session.leg_state(CLIENT) is LegState.CLOSED
    assert h.session.state is SessionState.FAILED
    assert h.session.initiator == "upstream"


def test_eof_waiting_before_the_answer() -> None:
    h = SessionHarness()
    h.auto_close[CLIENT] = False
    h.upstream_eof()
    assert h.session.state is SessionState.CLOSING
    assert not h.session.should_close(CLIENT)
    assert h.session.should_close(UPSTREAM)


def test_eof_while_a_frame_to_the_other_side_is_in_flight(src: Side) -> None:
    dst = src.other
    h = SessionHarness()
    stream = h.peer(src).send(BytesMessage(data=b"q" * 4000))
    h.sends_raw(src, stream[:500])
    assert h.received(dst)
    h.eof(src)
    # The frame can never be completed, so no close frame can follow it.
    assert h.closes_to(dst) == []
    assert h.session.leg_state(dst) is LegState.FAILED
    assert h.session.leg_state(src) is LegState.FAILED
    assert h.session.state is SessionState.FAILED
    assert h.session.should_close(dst)


def test_eof_after_close_gets_the_answer_it_waits_for(src: Side) -> None:
    h = SessionHarness()
    h.auto_close[src.other] = False
    h.sends(src, CloseConnection(code=4001, reason="done"))
    h.received(src.other)
    h.eof(src.other)  # the far side vanished without answering
    assert h.received(src) == [CloseConnection(code=4001, reason="done")]
    assert h.session.leg_state(src) is LegState.CLOSED
    assert h.session.state is SessionState.FAILED


def test_eof_after_the_close_handshake_changes_nothing() -> None:
    h = SessionHarness()
    h.client_sends(CloseConnection(code=1000))
    assert_closed_cleanly(h)
    assert h.client_received() == [CloseConnection(code=1000, reason="")]
    h.upstream_eof()
    h.client_eof()
    assert_closed_cleanly(h)
    assert h.client_received() == []


def test_the_backends_eof_is_awaited_only_after_its_close_handshake() -> None:
    h = SessionHarness()
    assert not h.session.upstream_eof_awaited()  # OPEN
    h.auto_close[UPSTREAM] = False
    h.client_sends(CloseConnection(code=1000))
    assert not h.session.upstream_eof_awaited()  # our close sent, no answer yet
    h.upstream_sends(CloseConnection(code=1000))
    assert_closed_cleanly(h)
    assert h.session.upstream_eof_awaited()  # §7.1.1: the backend closes TCP first
    h.upstream_eof()
    assert not h.session.upstream_eof_awaited()


def _closed(h: SessionHarness) -> None:
    h.client_sends(CloseConnection(code=1000))
    assert h.session.state is SessionState.CLOSED


def _failed(h: SessionHarness) -> None:
    h.client_sends_raw(build_raw(fr.TEXT, b"", mask=False))
    assert h.session.state is SessionState.FAILED


@pytest.mark.parametrize("end", [_closed, _failed], ids=["closed", "failed"])
@pytest.mark.parametrize("side", [CLIENT, UPSTREAM])
def test_bytes_after_the_end_are_not_kept(side: Side, end) -> None:  # type: ignore[no-untyped-def]
    # Regression (fixed in 3af4a85): they piled up in the session, never emptied.
    # The driver may read a backend a little longer, waiting for its EOF (§7.1.1).
    h = SessionHarness()
    end(h)
    h.client_received()
    h.upstream_received()
    chunk = b"\x00" * (1 << 16)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(64):  # 4 MiB
            h.session.receive_data(side, chunk)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert h.session.data_to_send(side.other) == []
    assert grown < 1 << 20


@pytest.mark.parametrize("fragmented", [False, True])
def test_a_client_message_cut_in_its_middle_is_rewound_and_comes_again(
    fragmented: bool,
) -> None:
    """A resumable session's client socket dies in a message of which nothing reached
    the backend (wsproxy.io.resume's gate held it): rewind_client forgets it, keeps our
    ping that waited behind its frame, and the message sent again arrives once."""
    h = SessionHarness()
    h.client_sends(TextMessage(data="one"))
    assert h.upstream_received() == [TextMessage(data="one")]
    messages, relayed = h.session.messages(UPSTREAM), h.session.bytes_relayed(UPSTREAM)
    data = bytes(range(256)) * 8
    if fragmented:  # a first fragment whole, then the start of the last one
        stream = h.client.send(BytesMessage(data=data[:100], message_finished=False))
        stream += h.client.send(BytesMessage(data=data[100:]))
    else:
        stream = h.client.send(BytesMessage(data=data))
    if fragmented:
        h.session.receive_data(CLIENT, stream[:50])  # in the first fragment
        assert not h.session.client_last_frame_open()
        h.session.receive_data(CLIENT, stream[50:1000])
    else:
        h.session.receive_data(CLIENT, stream[:1000])
    assert h.session.client_last_frame_open()
    h.session.send_ping(UPSTREAM, b"mid")  # waits for the frame in flight
    assert not h.session.client_at_boundary()
    # Counted from its last frame's header on, but not whole yet.
    assert h.session.messages(UPSTREAM) == messages + 1
    assert h.session.client_messages_whole() == messages
    assert h.session.data_to_send(UPSTREAM)  # what the gate held: dropped
    h.session.rewind_client(messages, relayed)
    assert h.session.client_at_boundary()
    assert (h.session.messages(UPSTREAM), h.session.bytes_relayed(UPSTREAM)) == (
        messages, relayed)
    [ping] = h.session.data_to_send(UPSTREAM)
    assert ping[0] == 0x80 | fr.PING
    h.sends_raw(CLIENT, h.client.send(BytesMessage(data=data)))  # sent again
    assert h.upstream_received() == [BytesMessage(data=data)]
    assert h.session.messages(UPSTREAM) == messages + 1
    assert h.session.state is SessionState.OPEN
