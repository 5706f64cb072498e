"""Hostile frames from either peer, table-driven (issue 9, "Hostile frames").

Every frame in ``HOSTILE`` breaks RFC 6455 and is sent, through the SessionHarness, by
the client and by the backend (or by the one side it is hostile from). The offending
leg must get the RFC's close code (1002, or 1007 for a close reason that is not
UTF-8) and be given up; the other leg gets a clean close of the proxy's own (1001 to
a backend whose client misbehaved, 1014 to a client whose backend did), which its peer
answers, so that leg ends CLOSED. Nothing of the hostile frame reaches the other side.

A data frame announcing 2^62 bytes is not malformed, only far over
``max_message_size``: that closes *both* legs with 1009 (SPEC: a message over the limit
ends the whole connection). A length with the most significant bit set (2^63 and up)
is malformed (§5.2: "the most significant bit MUST be 0"): a 1002.

The other leg is closed first and the offender gets its code once that close came back
(what the other side sent meanwhile still reaches it), or once the other leg is lost.

Some rows repeat tests/unit/test_session.py (its CLIENT_ERRORS / UPSTREAM_ERRORS):
this file covers the issue's list completely, for both directions, in one table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from wsproto.events import CloseConnection, Message, TextMessage
from wsproto.extensions import PerMessageDeflate

from tests.helpers import SessionHarness, assemble, build_raw
from wsproxy.core import LegState, SessionState, Side
from wsproxy.core import frames as fr

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
BOTH = (CLIENT, UPSTREAM)
#: The clean close the other leg gets when *side* misbehaved.
OTHER_LEG_CLOSE = {CLIENT: (1001, "client error"), UPSTREAM: (1014, "backend error")}

Build = Callable[[bool], bytes]


def frame(opcode: int, payload: bytes = b"", **kwargs: object) -> Build:
    """A frame masked as its direction requires (unless *mask* is given)."""

    def build(from_client: bool) -> bytes:
        options = {"mask": from_client, **kwargs}
        return build_raw(opcode, payload, **options)  # type: ignore[arg-type]

    return build


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


@dataclass(frozen=True)
class Hostile:
    id: str
    build: Build
    code: int
    sides: tuple[Side, ...] = BOTH
    #: Good frames at the start of *build* that are relayed before the hostile one.
    relayed: int = 0
    #: A known bug: the case is expected to fail (strict xfail with this reason).
    bug: str | None = None


# The table…

HOSTILE: list[Hostile] = [
    # Reserved opcodes (§5.2): 3-7 are data, 0xB-0xF control.
    *(Hostile(f"opcode-{op:#x}", frame(op, b"x"), 1002) for op in (3, 4, 5, 6, 7)),
    *(Hostile(f"opcode-{op:#x}", frame(op, b""), 1002) for op in (0xB, 0xC, 0xD, 0xE, 0xF)),
    Hostile("opcode-0xb-fragmented", frame(0xB, b"", fin=False), 1002),
    # Reserved bits that no extension negotiated (§5.2).
    *(
        Hostile(f"{name}-on-{kind}", frame(op, b"x", rsv=bit), 1002)
        for name, bit in (("rsv1", 0x40), ("rsv2", 0x20), ("rsv3", 0x10), ("rsv-all", 0x70))
        for kind, op in (("text", fr.TEXT), ("binary", fr.BINARY))
    ),
    Hostile("rsv1-on-first-fragment", frame(fr.TEXT, b"a", rsv=0x40, fin=False), 1002),
    Hostile(
        "rsv1-on-continuation",
        lambda m: build_raw(fr.TEXT, b"a", fin=False, mask=m)
        + build_raw(fr.CONTINUATION, b"b", rsv=0x40, mask=m),
        1002, relayed=1,
    ),
    *(
        Hostile(f"rsv1-on-{name}", frame(op, payload, rsv=0x40), 1002)
        for name, op, payload in (
            ("ping", fr.PING, b"p"), ("pong", fr.PONG, b"p"), ("close", fr.CLOSE, b"\x03\xe8"),
        )
    ),
    # Control frames too long (§5.5: at most 125 bytes of payload), in every length form.
    Hostile("ping-126", frame(fr.PING, b"p" * 126), 1002),
    Hostile("pong-126", frame(fr.PONG, b"p" * 126), 1002),
    Hostile("close-126", frame(fr.CLOSE, close_payload(1000, b"r" * 124)), 1002),
    Hostile("ping-65535", frame(fr.PING, b"p" * 65535), 1002),
    Hostile("pong-65536-header-only", frame(fr.PONG, b"", length=65536), 1002),
    Hostile("close-2^62-header-only", frame(fr.CLOSE, b"", length=1 << 62), 1002),
    Hostile("ping-2^63-header-only", frame(fr.PING, b"", length=1 << 63), 1002),
    # Fragmented control frames (§5.5: control frames MUST NOT be fragmented).
    Hostile("ping-fin0", frame(fr.PING, b"p", fin=False), 1002),
    Hostile("pong-fin0", frame(fr.PONG, b"p", fin=False), 1002),
    Hostile("close-fin0", frame(fr.CLOSE, close_payload(1000), fin=False), 1002),
    Hostile("close-fin0-empty", frame(fr.CLOSE, b"", fin=False), 1002),
    # Close reasons that are not UTF-8 (§5.5.1, §8.1): 1007.
    *(
        Hostile(f"close-reason-{name}", frame(fr.CLOSE, close_payload(1000, reason)), 1007)
        for name, reason in (
            ("ff", b"\xff"),
            ("bad-continuation", b"\xc3\x28"),
            ("lone-continuation", b"ok\x80"),
            ("overlong-slash", b"\xc0\xaf"),
            ("overlong-3-byte", b"\xe0\x80\xaf"),
            ("surrogate", b"\xed\xa0\x80"),
            ("above-10ffff", b"\xf4\x90\x80\x80"),
            ("truncated", b"\xce\xba\xe1"),
            ("f5", b"\xf5\x80\x80\x80"),
        )
    ),
    # Close codes not allowed on the wire (§7.4), and a one-byte close payload: 1002.
    *(
        Hostile(f"close-code-{code}", frame(fr.CLOSE, close_payload(code)), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    ),
    Hostile("close-code-1005-with-reason", frame(fr.CLOSE, close_payload(1005, b"x")), 1002),
    Hostile("close-one-byte", frame(fr.CLOSE, b"\x03"), 1002),
    # Masking (§5.1): a client MUST mask, a server MUST NOT.
    Hostile("unmasked-text", frame(fr.TEXT, b"hi", mask=False), 1002, (CLIENT,)),
    Hostile("unmasked-ping", frame(fr.PING, b"p", mask=False), 1002, (CLIENT,)),
    Hostile("unmasked-close", frame(fr.CLOSE, close_payload(1000), mask=False), 1002, (CLIENT,)),
    Hostile("unmasked-continuation", lambda m: build_raw(fr.TEXT, b"a", fin=False, mask=True)
            + build_raw(fr.CONTINUATION, b"b", mask=False), 1002, (CLIENT,), relayed=1),
    Hostile("masked-text", frame(fr.TEXT, b"hi", mask=True), 1002, (UPSTREAM,)),
    Hostile("masked-ping", frame(fr.PING, b"p", mask=True), 1002, (UPSTREAM,)),
    Hostile("masked-close", frame(fr.CLOSE, close_payload(1000), mask=True), 1002, (UPSTREAM,)),
    Hostile("masked-continuation", lambda m: build_raw(fr.TEXT, b"a", fin=False, mask=False)
            + build_raw(fr.CONTINUATION, b"b", mask=True), 1002, (UPSTREAM,), relayed=1),
    # Fragmentation out of order (§5.4).
    Hostile("continuation-without-start", frame(fr.CONTINUATION, b"x"), 1002),
    Hostile(
        "text-inside-a-message",
        lambda m: build_raw(fr.TEXT, b"a", fin=False, mask=m) + build_raw(fr.TEXT, b"b", mask=m),
        1002, relayed=1,
    ),
    Hostile(
        "binary-inside-a-message",
        lambda m: build_raw(fr.BINARY, b"a", fin=False, mask=m)
        + build_raw(fr.BINARY, b"b", mask=m),
        1002, relayed=1,
    ),
    # A 64-bit length with its most significant bit set (§5.2): malformed, 1002.
    *(
        Hostile(f"{kind}-length-{name}", frame(op, b"", length=length), 1002)
        for kind, op in (("binary", fr.BINARY), ("text", fr.TEXT))
        for name, length in (("2^63", 1 << 63), ("2^64-1", (1 << 64) - 1))
    ),
    Hostile(
        "continuation-length-2^63",
        lambda m: build_raw(fr.TEXT, b"a", fin=False, mask=m)
        + build_raw(fr.CONTINUATION, b"", length=1 << 63, mask=m),
        1002, relayed=1,
    ),
]


def cases() -> list[object]:
    params: list[object] = []
    for case in HOSTILE:
        marks = [pytest.mark.xfail(reason=f"bug: {case.bug}", strict=True)] if case.bug else []
        for side in case.sides:
            params.append(pytest.param(case, side, id=f"{case.id}-from-{side.value}", marks=marks))
    return params


PREFACES = {
    # Nothing before the hostile frame.
    "alone": [],
    # A good message first: it is relayed, then the close.
    "after-a-message": [TextMessage(data="fine")],
}


@pytest.mark.parametrize("chunk_size", [0, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("preface", PREFACES.values(), ids=PREFACES.keys())
@pytest.mark.parametrize(("case", "src"), cases())
def test_hostile_frame_gets_the_rfc_code_and_the_other_leg_a_clean_close(
    case: Hostile, src: Side, preface: list[TextMessage], chunk_size: int
) -> None:
    h = SessionHarness(chunk_size=chunk_size)
    dst = src.other
    for event in preface:
        h.sends(src, event)
    assert assemble(h.received(dst)) == preface
    # The hostile peer's wsproto never sent this frame: it answers our close by itself
    # only if it believes the connection still open, which it does.
    hostile = case.build(src is CLIENT)
    h.sends_raw(src, hostile)

    # The offending leg: the RFC's code, exactly one close, then given up.
    assert [code for code, _ in h.closes_to(src)] == [case.code]
    assert h.session.leg_state(src) is LegState.FAILED
    assert h.session.should_close(src)
    # The other leg: a clean close of the proxy's own, answered by its peer.
    assert h.closes_to(dst) == [OTHER_LEG_CLOSE[src]]
    received = h.received(dst)
    assert received[-1] == CloseConnection(*OTHER_LEG_CLOSE[src]), received
    assert all(isinstance(e, Message) and not e.message_finished for e in received[:-1])
    assert h.session.leg_state(dst) is LegState.CLOSED
    assert h.session.should_close(dst)
    assert h.session.state is SessionState.FAILED
    assert h.session.initiator == "proxy"
    # Nothing of the hostile frame went on: the other side saw the preface and the close.
    frames = h.frames_to(dst)
    opcodes = [f.opcode for f in frames]
    assert opcodes[: len(preface)] == [fr.TEXT] * len(preface)
    assert len(opcodes) == len(preface) + case.relayed + 1
    assert opcodes[-1] == fr.CLOSE
    assert not any(f.fin for f in frames[len(preface) : -1])  # a first fragment at most
    assert h.unparsed_to(dst) == b""
    # Whatever the offender sends next is not read.
    h.sends_raw(src, build_raw(fr.TEXT, b"more", mask=src is CLIENT))
    assert h.frames_to(dst) == frames
    h.eof(src)
    assert h.session.state is SessionState.FAILED


@pytest.mark.parametrize("chunk_size", [0, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("src", BOTH, ids=["from-client", "from-upstream"])
def test_hostile_frame_between_fragments_of_a_message(src: Side, chunk_size: int) -> None:
    """A message in progress is cut off: its first fragment went, then the close."""
    h = SessionHarness(chunk_size=chunk_size)
    dst = src.other
    h.sends(src, TextMessage(data="part", message_finished=False))
    h.sends_raw(src, build_raw(0x3, b"x", mask=src is CLIENT))
    assert [code for code, _ in h.closes_to(src)] == [1002]
    received = h.received(dst)
    assert "".join(e.data for e in received[:-1]) == "part"  # type: ignore[attr-defined]
    assert received[-1] == CloseConnection(*OTHER_LEG_CLOSE[src])
    assert h.session.leg_state(dst) is LegState.CLOSED
    assert h.session.state is SessionState.FAILED


@pytest.mark.parametrize("chunk_size", [0, 1, 7], ids=["whole", "bytewise", "by-7"])
@pytest.mark.parametrize("src", BOTH, ids=["from-client", "from-upstream"])
def test_length_2_62_is_too_big_and_closes_both_legs_with_1009(src: Side, chunk_size: int) -> None:
    """Not malformed, only over max_message_size: both legs get 1009 (SPEC)."""
    h = SessionHarness(chunk_size=chunk_size)
    dst = src.other
    h.sends_raw(src, build_raw(fr.BINARY, b"", length=1 << 62, mask=src is CLIENT))
    h.sends_raw(src, b"\x00" * 4096)  # payload: skipped, never forwarded, never buffered
    assert h.closes_to(src) == [(1009, "message too big")]
    assert h.closes_to(dst) == [(1009, "message too big")]
    assert [f.opcode for f in h.frames_to(dst)] == [fr.CLOSE]
    assert h.session.leg_state(dst) is LegState.CLOSED  # its peer answered
    assert h.session.should_close(dst)
    # The sender's answer can only come after 2^62 bytes of payload: its transport
    # ends (in the driver: heartbeat.timeout) and the session is over.
    h.eof(src)
    assert h.session.should_close(src)
    assert h.session.state in (SessionState.FAILED, SessionState.CLOSED)


@pytest.mark.parametrize("src", BOTH, ids=["from-client", "from-upstream"])
def test_hostile_frame_while_a_frame_to_the_offender_is_in_flight(src: Side) -> None:
    """No close frame can go into the middle of a frame: the offender's transport just
    ends, and the other leg still gets its clean close."""
    h = SessionHarness()
    dst = src.other
    h.auto_pong[dst] = h.auto_close[dst] = False
    big = h.peer(dst).send(TextMessage(data="y" * 1000))
    h.sends_raw(dst, big[:100])  # a frame towards src, in flight
    h.sends_raw(src, build_raw(0x3, b"x", mask=src is CLIENT))
    assert h.session.leg_state(src) is LegState.FAILED
    assert h.session.should_close(src)
    assert h.closes_to(src) == []
    assert h.written_to(src) == big[:100]  # nothing injected inside the frame
    assert h.closes_to(dst) == [OTHER_LEG_CLOSE[src]]


# With permessage-deflate negotiated, RSV1 is the extension's, and only on a first frame.

DEFLATE_HOSTILE = {
    "rsv1-on-continuation": lambda m: build_raw(fr.TEXT, b"a", fin=False, rsv=0x40, mask=m)
    + build_raw(fr.CONTINUATION, b"b", rsv=0x40, mask=m),
    "rsv2-on-text": lambda m: build_raw(fr.TEXT, b"a", rsv=0x20, mask=m),
    "rsv3-on-binary": lambda m: build_raw(fr.BINARY, b"a", rsv=0x10, mask=m),
    "rsv1-on-ping": lambda m: build_raw(fr.PING, b"", rsv=0x40, mask=m),
    "rsv1-on-close": lambda m: build_raw(fr.CLOSE, b"\x03\xe8", rsv=0x40, mask=m),
}


@pytest.mark.parametrize("src", BOTH, ids=["from-client", "from-upstream"])
@pytest.mark.parametrize("build", DEFLATE_HOSTILE.values(), ids=DEFLATE_HOSTILE.keys())
def test_reserved_bits_deflate_did_not_negotiate(build: Build, src: Side) -> None:
    h = SessionHarness(
        client_extensions=[PerMessageDeflate()], backend_extensions=[PerMessageDeflate()]
    )
    assert h.accepted is not None
    assert h.accepted.extensions
    h.sends_raw(src, build(src is CLIENT))
    assert [code for code, _ in h.closes_to(src)] == [1002]
    assert h.closes_to(src.other) == [OTHER_LEG_CLOSE[src]]
    assert h.session.leg_state(src.other) is LegState.CLOSED
    assert h.session.state is SessionState.FAILED


# The boundary: close frames that are fine are relayed as they came.

VALID_CLOSES = [
    pytest.param(b"", id="empty"),
    *(pytest.param(close_payload(c), id=f"code-{c}")
      for c in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                3000, 4999)),
    pytest.param(close_payload(1000, "ünïcødé ✓".encode()), id="utf8-reason"),
    pytest.param(close_payload(1000, b"r" * 123), id="reason-123-bytes"),
]


@pytest.mark.parametrize("src", BOTH, ids=["from-client", "from-upstream"])
@pytest.mark.parametrize("payload", VALID_CLOSES)
def test_valid_close_is_relayed_untouched(payload: bytes, src: Side) -> None:
    h = SessionHarness()
    h.auto_close[src.other] = False
    raw = build_raw(fr.CLOSE, payload, mask=src is CLIENT)
    h.sends_raw(src, raw)
    assert h.written_to(src.other) == raw
    assert h.closes_to(src) == []
    assert h.session.leg_state(src) is LegState.CLOSE_RECEIVED


@pytest.mark.parametrize("src", BOTH, ids=["from-client", "from-upstream"])
def test_offender_gets_its_code_after_the_other_leg_closed(src: Side) -> None:
    """What the other side still sends before answering our close reaches the
    offender; then the offender gets its 1002."""
    h = SessionHarness()
    dst = src.other
    h.auto_close[dst] = False
    h.sends_raw(src, build_raw(0x3, b"x", mask=src is CLIENT))
    assert h.closes_to(dst) == [OTHER_LEG_CLOSE[src]]
    assert h.closes_to(src) == []  # not yet: the other leg's answer comes first
    assert not h.session.should_close(src)
    h.sends_raw(src, build_raw(fr.TEXT, b"ignored", mask=src is CLIENT))  # no longer read
    assert [f.opcode for f in h.frames_to(dst)] == [fr.CLOSE]
    # (wsproto refuses to send after a close came in: a raw frame, as a real peer may.)
    h.sends_raw(dst, build_raw(fr.TEXT, b"answer to what you sent before", mask=dst is CLIENT))
    assert h.received(src)[0] == TextMessage(data="answer to what you sent before")
    [close] = [e for e in h.received(dst) if isinstance(e, CloseConnection)]
    h.sends(dst, close.response())
    assert [code for code, _ in h.closes_to(src)] == [1002]
    assert h.session.leg_state(dst) is LegState.CLOSED
    assert h.session.should_close(src)
    assert h.session.state is SessionState.FAILED


@pytest.mark.parametrize("src", BOTH, ids=["from-client", "from-upstream"])
def test_offender_gets_its_code_when_the_other_leg_is_lost(src: Side) -> None:
    """The other side never answers (in the driver: the close timer ends it)."""
    h = SessionHarness()
    dst = src.other
    h.auto_close[dst] = False
    h.sends_raw(src, build_raw(fr.CLOSE, close_payload(1000, b"\xff"), mask=src is CLIENT))
    assert h.closes_to(src) == []
    h.eof(dst)
    assert [code for code, _ in h.closes_to(src)] == [1007]
    assert h.session.should_close(src)
    assert h.session.should_close(dst)
    assert h.session.state is SessionState.FAILED
