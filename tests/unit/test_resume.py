"""wsproxy.core.resume: the opt-in parameter, the framing and the replay buffer."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import FrameReader, build_raw
from wsproxy.core import frames as fr
from wsproxy.core.resume import (
    Replay,
    Total,
    control,
    control_frames,
    request_bytes,
    take_param,
)
from wsproxy.core.upgrade import Upgrade
from wsproxy.io.resume import ResumeTable, worker_of

HEAD = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
SESSION = control(type="session", id="abc", window=30)


def server(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    return build_raw(opcode, payload, fin=fin, mask=False)


def messages(written: bytes) -> list[tuple[int, bytes]]:
    """The data messages in *written* (after the HTTP head), fragments joined."""
    reader = FrameReader()
    reader.feed(written)
    out: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    opcode = 0
    for frame in reader.frames:
        assert not frame.masked
        if frame.opcode >= 8:
            continue
        if frame.opcode:
            opcode = frame.opcode
        parts.append(frame.payload)
        if frame.fin:
            out.append((opcode, b"".join(parts)))
            parts = []
    assert reader.buffer == b""
    return out


@pytest.mark.parametrize(
    ("target", "stripped", "sid", "received", "malformed"),
    [
        (b"/a", b"/a", None, None, False),
        (b"/a?x=1", b"/a?x=1", None, None, False),
        (b"/a?wsproxy_resume=1", b"/a", None, 0, False),
        (b"/a?x=1&wsproxy_resume=1&y=2", b"/a?x=1&y=2", None, 0, False),
        (b"/a?wsproxy_resume=ab-c_d.17", b"/a", "ab-c_d", 17, False),
        (b"/a?wsproxy_resume=abc", b"/a", None, None, True),
        (b"/a?wsproxy_resume=abc.-1", b"/a", None, None, True),
        (b"/a?wsproxy_resume=.3", b"/a", None, None, True),
    ],
)
def test_the_parameter_is_taken_out(target, stripped, sid, received, malformed):
    got, ask, bad = take_param(target)
    assert (got, bad) == (stripped, malformed)
    if received is None:
        assert ask is None
    else:
        assert ask is not None
        assert (ask.session_id, ask.received) == (sid, received)


def test_the_head_passes_then_the_session_message_then_prefixed_messages():
    replay = Replay(1 << 16, Total(1 << 20), SESSION)
    out = replay.feed(HEAD)
    assert out == [HEAD, SESSION]
    written = b"".join(out[1:])
    ping = server(fr.PING, b"p")
    for chunk in (server(fr.TEXT, b"hello"), ping, server(fr.BINARY, b"\x01\x02" * 100)):
        written += b"".join(replay.feed(chunk))
    got = messages(written)
    assert got[0][0] == fr.TEXT
    assert json.loads(got[0][1][1:]) == {"type": "session", "id": "abc", "window": 30}
    assert got[0][1][:1] == b"\x01"
    assert got[1:] == [(fr.TEXT, b"\x00hello"), (fr.BINARY, b"\x00" + b"\x01\x02" * 100)]
    assert ping in written  # control frames pass as they are, and are not kept
    assert replay.sent == 2
    assert replay.kept_bytes == sum(len(m) for m in replay.kept)


def test_an_error_response_passes_alone():
    replay = Replay(1 << 16, Total(1 << 20), SESSION)
    answer = b"HTTP/1.1 502 Bad Gateway\r\n\r\n"
    assert replay.feed(answer) == [answer]


@given(st.data())
def test_any_chunking_of_fragmented_messages_and_pings_gives_the_same_messages(data):
    stream = (
        server(fr.TEXT, b"ab", fin=False) + server(fr.PING, b"x")
        + server(fr.CONTINUATION, b"cd", fin=False) + server(fr.CONTINUATION, b"e")
        + server(fr.BINARY, b"z" * 300) + server(fr.TEXT, b"")
        + server(fr.BINARY, b"y" * 70000)
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    replay = Replay(1 << 20, Total(1 << 30), SESSION)
    replay.feed(HEAD)
    written = b""
    last = 0
    for cut in [*cuts, len(stream)]:
        written += b"".join(replay.feed(stream[last:cut]))
        last = cut
    assert messages(written) == [
        (fr.TEXT, b"\x00abcde"), (fr.BINARY, b"\x00" + b"z" * 300), (fr.TEXT, b"\x00"),
        (fr.BINARY, b"\x00" + b"y" * 70000),
    ]
    # A replay from any point gives the rest, as whole messages.
    assert messages(b"".join(replay.replay(1) or [])) == messages(written)[1:]


def test_an_ack_waits_for_the_end_of_a_fragmented_message():
    replay = Replay(1 << 16, Total(1 << 20), SESSION)
    replay.feed(HEAD)
    ack = control(type="ack", n=1)
    assert replay.ack(ack) == [ack]
    out = replay.feed(server(fr.TEXT, b"ab", fin=False))
    assert replay.ack(ack) == []
    out += replay.feed(server(fr.CONTINUATION, b"c"))
    assert out[-1] == ack
    assert messages(b"".join(out))[-1] == (fr.TEXT, b"\x01" + b'{"type":"ack","n":1}')


def test_the_buffer_keeps_the_latest_messages_and_a_resume_from_before_them_fails():
    total = Total(1 << 20)
    replay = Replay(100, total, SESSION)
    replay.feed(HEAD)
    for i in range(10):
        replay.feed(server(fr.TEXT, b"%02d" % i + b"x" * 20))
    assert replay.sent == 10
    assert replay.kept_bytes <= 100
    assert total.bytes == replay.kept_bytes
    assert replay.replay(replay.base - 1) is None
    assert replay.replay(11) is None  # more than was sent
    rest = replay.replay(replay.base)
    assert rest is not None
    assert [p[1][1:3] for p in messages(b"".join(rest))] == [
        b"%02d" % i for i in range(replay.base, 10)]
    assert not replay.overrun  # nothing dropped after a cut: there was none
    replay.cut_at = replay.sent
    for _ in range(5):
        replay.feed(server(fr.TEXT, b"y" * 30))
    assert replay.overrun
    replay.release()
    assert total.bytes == 0


def test_max_total_bounds_all_sessions_together():
    total = Total(150)
    a, b = Replay(1000, total, SESSION), Replay(1000, total, SESSION)
    for replay in (a, b):
        replay.feed(HEAD)
        for _ in range(3):
            replay.feed(server(fr.TEXT, b"x" * 40))
    assert total.bytes <= 150
    assert total.bytes == a.kept_bytes + b.kept_bytes


_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("head", [
    b"GET /chat?wsproxy_resume=abc.3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + _KEY + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
    b"GET /a/b?q=1&wsproxy_resume=zz.0 HTTP/1.1\r\nhost: example.com:8080\r\n"
    b"upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-key: " + _KEY
    + b"\r\nsec-websocket-version: 13\r\nsec-websocket-protocol: chat, v2\r\n"
    b"Origin: https://app\r\nCookie: a=1\r\nCookie: b=2\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
])
def test_a_request_handed_to_a_sibling_reads_as_the_same_request(head):
    first = Upgrade(max_request_head=8192, plain_http=False)
    first.receive_request(head)
    assert first.request is not None
    again = Upgrade(max_request_head=8192, plain_http=False)
    again.receive_request(request_bytes(first.request) + b"early")
    assert again.request == first.request
    assert again.early_client == b"early"


def test_a_sessions_worker_is_in_its_id():
    ids = [ResumeTable(worker).new_id() for worker in (0, 7, 63)]
    assert [worker_of(sid) for sid in ids] == [0, 7, 63]
    assert worker_of("short") is None
    assert worker_of("01234567zz" + "x" * 20) is None


def test_control_frames_keeps_whole_control_frames_and_drops_data():
    ping = build_raw(fr.PING, b"p1")
    pong = build_raw(fr.PONG, b"x" * 125)
    first = build_raw(fr.TEXT, b"a" * 300, fin=False)
    last = build_raw(fr.CONTINUATION, b"b" * 70_000)
    stream = first + ping + last[:5000]
    assert control_frames(stream) == [ping]
    assert control_frames(pong + first + ping + last) == [pong, ping]
    assert control_frames(ping[:3]) == []  # (never happens: a control frame goes whole)
    assert control_frames(b"") == []
