"""The PROXY protocol header parser: v1 and v2, any chunking, and what it refuses."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsproxy.core.proxy_protocol import (
    MAX_V1_HEADER,
    MAX_V2_PAYLOAD,
    V2_FIXED,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
)

REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: proxy.example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)

V6_SOURCE = bytes.fromhex("20010db8000000000000000000000001")
V6_DESTINATION = bytes.fromhex("20010db8000000000000000000000002")


def v2(command: int, family: int, body: bytes, *, version: int = 2) -> bytes:
    """A v2 header: signature, version/command, family, length, then *body*."""
    return (
        V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body
    )


def tcp4_block(src: str = "203.0.113.7", sport: int = 51000) -> bytes:
    return ipv4(src) + ipv4("10.0.0.1") + struct.pack("!HH", sport, 8080)


def ipv4(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


TLVS = tlv(0x01, b"h2") + tlv(0x02, b"proxy.example") + tlv(0x05, b"\x00" * 16)
TCP6_BLOCK = V6_SOURCE + V6_DESTINATION + struct.pack("!HH", 443, 8080)
UNKNOWN_MAX = b"PROXY UNKNOWN " + b"x" * (MAX_V1_HEADER - 16) + b"\r\n"

#: (id, header bytes, what it says).
VALID = [
    (
        "v1-tcp4",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 56324 443\r\n",
        ProxyHeader("192.0.2.10", 56324),
    ),
    (
        "v1-tcp6",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 443\r\n",
        ProxyHeader("2001:db8::1", 65535),
    ),
    (
        "v1-tcp6-uncompressed",
        b"PROXY TCP6 2001:0DB8:0:0:0:0:0:0001 ::1 0 443\r\n",
        ProxyHeader("2001:db8::1", 0),
    ),
    (
        "v1-tcp6-v4-mapped",
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
        ProxyHeader("::ffff:c000:201", 1),
    ),
    ("v1-unknown", b"PROXY UNKNOWN\r\n", ProxyHeader(None, None)),
    (
        "v1-unknown-with-addresses",
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ProxyHeader(None, None),
    ),
    ("v1-unknown-107-bytes", UNKNOWN_MAX, ProxyHeader(None, None)),
    ("v2-tcp4", v2(1, 0x11, tcp4_block()), ProxyHeader("203.0.113.7", 51000)),
    ("v2-tcp4-tlvs", v2(1, 0x11, tcp4_block() + TLVS), ProxyHeader("203.0.113.7", 51000)),
    ("v2-tcp6", v2(1, 0x21, TCP6_BLOCK), ProxyHeader("2001:db8::1", 443)),
    ("v2-tcp6-tlvs", v2(1, 0x21, TCP6_BLOCK + TLVS), ProxyHeader("2001:db8::1", 443)),
    ("v2-local", v2(0, 0x00, b""), ProxyHeader(None, None)),
    # LOCAL ignores whatever family and addresses come with it, even a short block.
    ("v2-local-with-addresses", v2(0, 0x11, tcp4_block()[:4] + TLVS), ProxyHeader(None, None)),
    ("v2-unspec", v2(1, 0x00, b""), ProxyHeader(None, None)),
    ("v2-unspec-tlvs", v2(1, 0x00, TLVS), ProxyHeader(None, None)),
    ("v2-udp4", v2(1, 0x12, tcp4_block()), ProxyHeader(None, None)),
    ("v2-unix", v2(1, 0x31, b"/run/lb.sock".ljust(216, b"\x00")), ProxyHeader(None, None)),
    ("v2-max-length", v2(1, 0x11, tcp4_block().ljust(MAX_V2_PAYLOAD, b"\x00")), None),
]
VALID_IDS = [case[0] for case in VALID]
VALID_CASES = [case[1:] for case in VALID]


def feed_chunks(chunks: list[bytes]) -> tuple[ProxyHeader, bytes]:
    """Feed *chunks* in order; the header must come with the last one."""
    parser = ProxyHeaderParser()
    for chunk in chunks[:-1]:
        assert parser.feed(chunk) is None
    result = parser.feed(chunks[-1])
    assert result is not None
    return result


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def error_offset(data: bytes) -> int:
    """Feed *data* a byte at a time; return how many bytes it took to raise."""
    parser = ProxyHeaderParser()
    for count, byte in enumerate(bytewise(data), start=1):
        try:
            assert parser.feed(byte) is None
        except ProxyProtocolError:
            return count
    pytest.fail(f"{data!r} was not refused")


# Valid headers.


@pytest.mark.parametrize(("header", "expected"), VALID_CASES, ids=VALID_IDS)
def test_all_at_once(header: bytes, expected: ProxyHeader | None) -> None:
    parsed, rest = feed_chunks([header])
    assert rest == b""
    if expected is not None:
        assert parsed == expected


@pytest.mark.parametrize(("header", "expected"), VALID_CASES, ids=VALID_IDS)
def test_byte_by_byte(header: bytes, expected: ProxyHeader | None) -> None:
    assert feed_chunks(bytewise(header)) == feed_chunks([header])


@pytest.mark.parametrize(("header", "expected"), VALID_CASES, ids=VALID_IDS)
def test_request_after_header_is_returned_intact(
    header: bytes, expected: ProxyHeader | None
) -> None:
    together = feed_chunks([header + REQUEST])
    assert together[1] == REQUEST
    # The last header byte arriving with the request, after a byte-by-byte start.
    assert feed_chunks([*bytewise(header[:-1]), header[-1:] + REQUEST]) == together


def test_a_second_header_in_the_rest_is_not_read() -> None:
    first = b"PROXY TCP4 192.0.2.10 10.0.0.1 1 2\r\n"
    second = b"PROXY TCP4 198.51.100.1 10.0.0.1 3 4\r\n"
    assert feed_chunks([first + second]) == (ProxyHeader("192.0.2.10", 1), second)


def test_empty_feeds_wait() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"") is None
    assert parser.feed(b"PROXY UNKNOWN") is None
    assert parser.feed(b"") is None
    assert parser.feed(b"\r\n") == (ProxyHeader(None, None), b"")


@given(
    case=st.sampled_from(VALID_CASES),
    tail=st.sampled_from([b"", REQUEST, b"\x00\xff", b"PROXY "]),
    data=st.data(),
)
def test_any_chunking_gives_the_same_result(
    case: tuple[bytes, ProxyHeader | None], tail: bytes, data: st.DataObject
) -> None:
    header = case[0]
    stream = header + tail
    cuts = data.draw(st.lists(st.integers(0, len(header) - 1), max_size=12).map(sorted))
    # Every chunk boundary falls inside the header, so the last chunk completes it.
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert feed_chunks(chunks) == feed_chunks([stream])
    assert feed_chunks(chunks)[1] == tail


# Refused: not a header at all, and refused early.


@pytest.mark.parametrize(
    ("data", "within"),
    [
        (REQUEST, 1),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1),  # a TLS ClientHello
        (b"proxy TCP4 192.0.2.10 10.0.0.1 1 2\r\n", 1),
        (b"PROXZ TCP4", 5),
        (b"PROXYTCP4", 6),
        (b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c", 11),
        (b"\r\n\r\nGET / HTTP/1.1", 5),
    ],
    ids=["http", "tls", "lowercase", "bad-v1-prefix", "no-space", "bad-v2-signature", "crlf"],
)
def test_no_header_is_refused_quickly(data: bytes, within: int) -> None:
    assert error_offset(data) == within
    with pytest.raises(ProxyProtocolError, match="did not start"):
        ProxyHeaderParser().feed(data)


# Refused: malformed v1.


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2",
        b"PROXY TCP4 192.0.2.10 10.0.0.256 1 2",
        b"PROXY TCP4 01.2.3.4 10.0.0.1 1 2",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2",
        b"PROXY TCP6 192.0.2.10 2001:db8::2 1 2",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2",
        b"PROXY TCP6 2001:db8::\xc3\xa9 2001:db8::2 1 2",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 65536 2",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 1 99999",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 080 2",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 +80 2",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 -1 2",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 1 ",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 1",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 1 2 3",
        b"PROXY TCP4 192.0.2.10  10.0.0.1 1 2",
        b"PROXY TCP4 192.0.2.10 10.0.0.1 1 2\n",
        b"PROXY TCP4",
        b"PROXY UDP4 192.0.2.10 10.0.0.1 1 2",
        b"PROXY tcp4 192.0.2.10 10.0.0.1 1 2",
        b"PROXY ",
        b"PROXY  UNKNOWN",
    ],
)
def test_malformed_v1_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError, match="PROXY v1"):
        ProxyHeaderParser().feed(line + b"\r\n" + REQUEST)


def test_v1_without_crlf_within_107_bytes_is_refused() -> None:
    longest = UNKNOWN_MAX[:-2]
    assert len(longest) == MAX_V1_HEADER - 2
    parser = ProxyHeaderParser()
    assert parser.feed(longest + b"x") is None  # 106 bytes: a CRLF could still end it at 107
    with pytest.raises(ProxyProtocolError, match="without CRLF in 107 bytes"):
        parser.feed(b"\r")
    # A CR that is not followed by LF, or a CRLF one byte too late.
    assert error_offset(longest + b"xx\r\n") == MAX_V1_HEADER
    assert error_offset(b"PROXY TCP4 192.0.2.10 10.0.0.1 1 2\r" + b"x" * 80) == MAX_V1_HEADER


def test_v1_needs_no_more_than_its_limit_in_one_feed() -> None:
    with pytest.raises(ProxyProtocolError, match="without CRLF"):
        ProxyHeaderParser().feed(b"PROXY UNKNOWN " + b"x" * 100_000 + b"\r\n")


# Refused: malformed v2.


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (v2(1, 0x11, tcp4_block(), version=1), "version 1"),
        (v2(1, 0x11, tcp4_block(), version=3), "version 3"),
        (v2(0, 0x00, b"", version=0), "version 0"),
        (v2(2, 0x11, tcp4_block()), "command 2"),
        (v2(0xF, 0x11, tcp4_block()), "command 15"),
        (v2(1, 0x41, tcp4_block()), "family byte 0x41"),
        (v2(1, 0x13, tcp4_block()), "family byte 0x13"),
        (v2(1, 0x11, tcp4_block()[:11]), "length 11 too short"),
        (v2(1, 0x21, TCP6_BLOCK[:35]), "length 35 too short"),
        (v2(1, 0x21, tcp4_block()), "length 12 too short"),
        (v2(1, 0x31, b"\x00" * 108), "length 108 too short"),
    ],
    ids=lambda case: case if isinstance(case, str) else "",
)
def test_malformed_v2_is_refused_at_its_fixed_part(header: bytes, message: str) -> None:
    assert error_offset(header + REQUEST) == V2_FIXED
    with pytest.raises(ProxyProtocolError, match=message):
        ProxyHeaderParser().feed(header + REQUEST)


@pytest.mark.parametrize("length", [MAX_V2_PAYLOAD + 1, 0xFFFF])
def test_v2_length_over_the_limit_is_refused_before_its_payload(length: int) -> None:
    fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", length)
    with pytest.raises(ProxyProtocolError, match=f"{length} bytes"):
        ProxyHeaderParser().feed(fixed)


def test_v2_waits_for_its_whole_payload() -> None:
    header = v2(1, 0x11, tcp4_block() + TLVS)
    parser = ProxyHeaderParser()
    assert parser.feed(header[:-1]) is None
    assert parser.feed(header[-1:] + REQUEST) == (ProxyHeader("203.0.113.7", 51000), REQUEST)


# The parser's own contract.


@pytest.mark.parametrize(
    "first", [b"PROXY UNKNOWN\r\n", b"GET / HTTP/1.1\r\n"], ids=["after-header", "after-error"]
)
def test_feeding_a_finished_parser_is_a_bug(first: bytes) -> None:
    parser = ProxyHeaderParser()
    with contextlib.suppress(ProxyProtocolError):  # the second case: refused, and done
        parser.feed(first)
    assert "FINISHED" in repr(parser)
    with pytest.raises(RuntimeError, match="already read"):
        parser.feed(b"more")


def test_repr_shows_phase_and_buffer() -> None:
    parser = ProxyHeaderParser()
    assert repr(parser) == "<ProxyHeaderParser SIGNATURE buffered=0>"
    parser.feed(b"\r\n\r\n")
    assert repr(parser) == "<ProxyHeaderParser SIGNATURE buffered=4>"
    parser.feed(b"\x00\r\nQUIT\n\x21")
    assert repr(parser) == "<ProxyHeaderParser V2 buffered=13>"


@given(
    st.lists(st.binary(max_size=64), max_size=40), st.sampled_from([b"", b"PROXY ", V2_SIGNATURE])
)
def test_byte_soup_is_refused_or_read_and_never_overbuffered(
    chunks: list[bytes], start: bytes
) -> None:
    parser = ProxyHeaderParser()
    for chunk in [start, *chunks]:
        try:
            result = parser.feed(chunk)
        except ProxyProtocolError:
            return
        if result is not None:
            return
        # Waiting: what is held is less than the longest header allowed.
        assert len(parser._buffer) < max(MAX_V1_HEADER, V2_FIXED + MAX_V2_PAYLOAD)
