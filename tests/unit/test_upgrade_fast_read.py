"""The upgrade request read without h11 (handshake.read_upgrade) gives the
verdicts the h11 path gives on the same bytes: the same UpgradeRequest, early bytes
and probe/plain outcome, or the same refusal (status, reason, headers).

Properties with hypothesis, derandomized (the same inputs every run).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.core.handshake import read_upgrade
from wsproxy.core.upgrade import Upgrade
from wsproxy.errors import HandshakeRejected

SETTINGS = settings(derandomize=True, max_examples=500, deadline=None)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GOOD = (b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: http://example.com\r\n\r\n")


class H11Only(Upgrade):
    """The same Upgrade, with every request read by h11 (as before the fast path)."""

    __slots__ = ()

    def _read_plain(self, data: bytes) -> bool:
        return False


def outcome(kind: type[Upgrade], data: bytes, *, plain_http: bool, head: int) -> Any:
    upgrade = kind(max_request_head=head, plain_http=plain_http)
    try:
        upgrade.receive_request(data)
    except HandshakeRejected as exc:
        return ("rejected", exc.status, exc.reason, exc.headers)
    plain = upgrade.plain
    return (
        "read", upgrade.request, upgrade._early_client, upgrade.probe,
        None if plain is None else (bytes(plain.request.target), plain.received),
    )


names = st.sampled_from([
    b"Host", b"host", b"HOST", b"Upgrade", b"upgrade", b"Connection", b"Sec-WebSocket-Key",
    b"Sec-WebSocket-Version", b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Extensions",
    b"Origin", b"Content-Length", b"Transfer-Encoding", b"X-Forwarded-For", b"Cookie",
    b"Bad Name", b"",
])
header_values = st.sampled_from([
    b"websocket", b"WebSocket", b"Upgrade", b"keep-alive, Upgrade", b"13", b"8", KEY, b"x",
    b"chat, superchat", b"bad proto", b"0", b"5", b"chunked", b"example.com", b"",
    b"  padded  ", b"a\tb", b"a\x00b", b"\xff\xfe", b"1.2.3.4, 5.6.7.8",
])
line_ends = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r\n "])
request_lines = st.sampled_from([
    b"GET /chat HTTP/1.1", b"GET / HTTP/1.1", b"POST /chat HTTP/1.1", b"GET /chat HTTP/1.0",
    b"get /chat HTTP/1.1", b"GET /healthz HTTP/1.1", b"GET /a/../b HTTP/1.1",
    b"GET http://h/x HTTP/1.1", b"GET  /chat HTTP/1.1", b"GET /ch\x7fat HTTP/1.1", b"",
    b"GET /%2e%2e/x HTTP/1.1",
])


BASE = [(b"Host", b"example.com"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Version", b"13")]


def mostly(common: bytes, *others: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([common] * 12 + list(others))


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """Mostly valid upgrades, a few pieces changed: many take the fast path, some not."""
    fields = []
    for name, value in BASE:
        if draw(st.integers(0, 14)) == 0:
            continue  # left out
        if draw(st.integers(0, 6)) == 0:
            value = draw(header_values)
        if draw(st.booleans()):
            name = name.lower()
        fields.append((name, value))
    fields += draw(st.lists(st.tuples(names, header_values), max_size=3))
    fields = draw(st.permutations(fields))
    end = mostly(b"\r\n", b"\n", b"\r\n ")
    out = draw(mostly(b"GET /chat HTTP/1.1", *request_lines.elements)) + draw(end)
    for name, value in fields:
        out += name + draw(mostly(b": ", b":", b" : ", b":\t", b":  ")) + value
        out += draw(mostly(b"", b" ", b"\t")) + draw(end)
    out += draw(mostly(b"\r\n", b"\n", b""))
    return out + draw(st.sampled_from([b"", b"\x81\x80abcd", b"GET / HTTP/1.1\r\n\r\n"]))


@SETTINGS
@given(heads(), st.booleans(), st.sampled_from([64, 200, 8192]))
def test_the_same_verdict_as_h11_on_any_head(data: bytes, plain_http: bool, head: int) -> None:
    assert outcome(Upgrade, data, plain_http=plain_http, head=head) == outcome(
        H11Only, data, plain_http=plain_http, head=head)


@SETTINGS
@given(st.lists(st.sampled_from([
    (b"Sec-WebSocket-Protocol", b"chat"), (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
    (b"Cookie", b"a=1; b=2"), (b"X-Forwarded-For", b"10.0.0.1"), (b"Host", b"second"),
    (b"Sec-WebSocket-Key", KEY), (b"Connection", b"close"), (b"Upgrade", b"h2c"),
]), max_size=4), st.binary(max_size=8))
def test_valid_upgrades_with_more_headers_read_the_same(
    extra: list[tuple[bytes, bytes]], early: bytes
) -> None:
    head, _, _ = GOOD.partition(b"\r\n\r\n")
    data = head + b"".join(b"\r\n" + n + b": " + v for n, v in extra) + b"\r\n\r\n" + early
    assert outcome(Upgrade, data, plain_http=False, head=8192) == outcome(
        H11Only, data, plain_http=False, head=8192)


def test_the_plainest_upgrade_is_read_without_h11() -> None:
    read = read_upgrade(GOOD + b"early", 8192)
    assert read is not None
    request, rest = read
    assert (request.method, request.target, rest) == (b"GET", b"/chat?x=1", b"early")
    assert request.headers[0] == (b"host", b"example.com")
    upgrade = Upgrade(max_request_head=8192, plain_http=True)
    upgrade.receive_request(GOOD)
    assert upgrade._http_server is None  # no h11 parser was made
    assert upgrade.request is not None
    assert upgrade.request.key == KEY


@pytest.mark.parametrize("data", [
    GOOD[:40],  # in pieces
    GOOD.replace(b"Upgrade: websocket\r\n", b""),  # not an upgrade: h11 (probe, plain)
    GOOD.replace(b"\r\nOrigin", b"\r\n Origin"),  # obs-fold
    GOOD.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"),  # framing
    GOOD.replace(b"Host: example.com\r\n", b""),  # no Host
    GOOD.replace(b"HTTP/1.1", b"HTTP/1.0"),
])
def test_anything_else_goes_to_h11(data: bytes) -> None:
    assert read_upgrade(data, 8192) is None


def test_a_head_over_the_limit_goes_to_h11_for_its_431() -> None:
    assert read_upgrade(GOOD, len(GOOD) - 1) is None
    assert outcome(Upgrade, GOOD, plain_http=False, head=len(GOOD) - 1)[:2] == ("rejected", 431)
