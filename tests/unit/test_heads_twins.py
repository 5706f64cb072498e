"""The compiled head scanners (wsproxy.core._heads) and their Python twins
(handshake.py_scan_request / py_scan_response) give the same answers (issue 18).

Checked with hypothesis (derandomized: the same inputs on every run), on the same
bytes: mostly valid upgrade requests and 101s with pieces changed (the strategies of
test_upgrade_fast_read and test_accept_fast_read, whose verdicts are checked against
h11 there, with whichever scanner is in use), heads with every kind of odd byte in
names, values and line ends, and arbitrary bytes; any head limit, negative included.
Then read_upgrade / read_accept with either scanner: the same request or answer, or
the same refusal. The same for the verdicts made in one call (issue 18, round 7):
read_request (the plainest valid upgrade checked, and its UpgradeRequest made without
its __init__), accept_plain (the plainest valid
101 checked and the client's 101 made), request_head (the backend's request) and
accept_key (SHA-1 and base64). And the hostile examples: smuggling (CL+TE, duplicate CL), obs-folds,
bare LFs, oversize heads, bad keys, a missing Upgrade: not read by either (h11 is).

The tests skip where the extension was not built (no compiler), unless
``WSPROXY_REQUIRE_SPEEDUPS=1`` makes that a failure.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_accept_fast_read import answers
from tests.unit.test_upgrade_fast_read import GOOD, heads
from wsproxy.core import handshake
from wsproxy.errors import HandshakeRejected, UpstreamUnavailable


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("wsproxy.core._heads")
    except ImportError:
        if os.environ.get("WSPROXY_REQUIRE_SPEEDUPS", "") not in ("", "0"):
            raise
        return None


_heads = _compiled()
pytestmark = pytest.mark.skipif(_heads is None, reason="the C extension was not built")
SETTINGS = settings(derandomize=True, max_examples=1500, deadline=None)
#: Mostly a limit the head fits in, so that most examples are read to the end.
LIMITS = st.one_of(st.just(8192), st.just(1 << 20),
                   st.sampled_from([-5, -1, 0, 4, 16, 64, 200]), st.integers(-50, 400))
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = handshake.accept_key(KEY)
RESPONSE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n")

#: Bytes that decide how a line is read: token and value characters, separators,
#: the whitespace a bytes pattern's \s is (and what it is not), NUL, high bytes.
ODD = st.sampled_from([
    b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x0b", b"\x0c", b"\x00", b"\x1c", b"\x1f", b"\x7f",
    b"\x80", b"\xff", b":", b"a", b"A", b"Z", b"-", b"!", b"~", b"(", b"@", b"/", b"HTTP/1.1",
    b"101", b"GET", b"host", b"Host", b"upgrade", b"connection", b"sec-websocket-key",
    b"Sec-WebSocket-Accept", b"sec-websocket-extensions", b"sec-websocket-protocol",
    b"sec-websocket-version", b"origin", b"content-length", b"Transfer-Encoding",
])


@st.composite
def mangled(draw: st.DrawFn, base: bytes) -> bytes:
    """*base* with a few pieces put in, taken out or replaced."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 3))
        data[at : at + cut] = draw(ODD)
    return bytes(data)


def requests() -> st.SearchStrategy[bytes]:
    long_name = b"X-" + b"N" * 300 + b": v\r\n"
    return st.one_of(
        heads(), mangled(GOOD), st.binary(max_size=200),
        mangled(GOOD.replace(b"\r\n\r\n", b"\r\n" + long_name + b"\r\n")),
        st.lists(ODD, max_size=30).map(b"".join).map(lambda s: b"GET / HTTP/1.1\r\n" + s),
    )


def responses() -> st.SearchStrategy[bytes]:
    return st.one_of(
        answers(), mangled(RESPONSE), st.binary(max_size=200),
        st.lists(ODD, max_size=30).map(b"".join).map(
            lambda s: b"HTTP/1.1 101 Switching Protocols\r\n" + s),
    )


@SETTINGS
@given(requests(), LIMITS)
def test_scan_request_twins(data: bytes, limit: int) -> None:
    assert _heads is not None
    assert _heads.scan_request(data, limit) == handshake.py_scan_request(data, limit)


@SETTINGS
@given(responses(), LIMITS)
def test_scan_response_twins(data: bytes, limit: int) -> None:
    assert _heads is not None
    assert _heads.scan_response(data, limit) == handshake.py_scan_response(data, limit)


def _read_upgrade(data: bytes, scanner: Any) -> object:
    """read_upgrade() with *scanner*, and read_request() of its kind (the C one with
    the C scanner, else the Python twin)."""
    compiled = _heads is not None and scanner is _heads.scan_request
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handshake, "scan_request", scanner)
        patch.setattr(handshake, "read_request",
                      _heads.read_request if compiled and _heads else handshake.py_read_request)
        try:
            return handshake.read_upgrade(data, 8192)
        except HandshakeRejected as exc:
            return ("rejected", exc.status, exc.reason, exc.headers)


def _read_accept(data: bytes, scanner: Any) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handshake, "scan_response", scanner)
        try:
            return handshake.read_accept(data, target="b", key=KEY, offered=("chat",),
                                         offered_extensions=(b"permessage-deflate",))
        except UpstreamUnavailable as exc:
            return ("refused", str(exc))


@SETTINGS
@given(requests())
def test_read_upgrade_decides_the_same_with_either(data: bytes) -> None:
    assert _heads is not None
    assert _read_upgrade(data, _heads.scan_request) == _read_upgrade(
        data, handshake.py_scan_request)


@SETTINGS
@given(responses())
def test_read_accept_decides_the_same_with_either(data: bytes) -> None:
    assert _heads is not None
    assert _read_accept(data, _heads.scan_response) == _read_accept(
        data, handshake.py_scan_response)


def _with(old: bytes, new: bytes) -> bytes:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


HOSTILE_REQUESTS = [
    _with(b"\r\n\r\n", b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
    _with(b"\r\n\r\n", b"\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"),
    _with(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
    _with(b"\r\nOrigin", b"\r\n Origin"),  # obs-fold
    _with(b"\r\nOrigin", b"\r\n\tOrigin"),
    _with(b"Upgrade: websocket\r\n", b"Upgrade: websocket\n"),  # bare LF
    _with(b"Upgrade: websocket\r\n", b""),  # missing Upgrade
    _with(b"Host: example.com\r\n", b""),  # no Host
    _with(b"Host: example.com\r\n", b"Host: a\r\nHost: b\r\n"),  # two
    _with(b"Host: example.com", b"Host : example.com"),
    _with(b"Host: example.com", b"Host: exa\x00mple.com"),
    _with(b"Host: example.com", b"Host: exa\x0bmple.com"),
    _with(b"GET /chat", b"GET  /chat"),
    _with(b"HTTP/1.1", b"HTTP/1.0"),
    GOOD[:-2],  # the head not complete
]


@pytest.mark.parametrize("data", HOSTILE_REQUESTS)
def test_hostile_requests_are_left_to_h11(data: bytes) -> None:
    assert _heads is not None
    assert _heads.scan_request(data, 8192) is None
    assert handshake.py_scan_request(data, 8192) is None


def test_an_oversize_head_is_left_to_h11() -> None:
    assert _heads is not None
    for limit in (len(GOOD) - 1, len(GOOD) - 4, 10, 0, -1):
        assert _heads.scan_request(GOOD, limit) is None
    assert _heads.scan_request(GOOD, len(GOOD)) is not None


@pytest.mark.parametrize(("old", "new", "verdict"), [
    (KEY, b"dGhlIHNhbXBsZSBub25jZQ", (400, "missing or invalid Sec-WebSocket-Key")),
    (KEY, b"not base64 at all!!", (400, "missing or invalid Sec-WebSocket-Key")),
    (b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8",
     (426, "unsupported WebSocket version")),
    (b"Connection: Upgrade", b"Connection: keep-alive", (400, "Connection header lacks 'upgrade'")),
    (b"GET /chat", b"POST /chat", (400, "a WebSocket upgrade is an HTTP/1.1 GET")),
])
def test_refusals_are_the_same_with_either(
    old: bytes, new: bytes, verdict: tuple[int, str]
) -> None:
    assert _heads is not None
    data = _with(old, new)
    c = _read_upgrade(data, _heads.scan_request)
    assert c == _read_upgrade(data, handshake.py_scan_request)
    assert isinstance(c, tuple)
    assert c[1:3] == verdict


@pytest.mark.parametrize(("old", "new"), [
    (ACCEPT, b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="),  # another key's
    (b"Upgrade: websocket\r\n", b""),
    (b"Connection: Upgrade", b"Connection: close"),
])
def test_bad_accepts_are_refused_the_same_with_either(old: bytes, new: bytes) -> None:
    assert _heads is not None
    data = RESPONSE.replace(old, new)
    c = _read_accept(data, _heads.scan_response)
    assert c == _read_accept(data, handshake.py_scan_response)
    assert isinstance(c, tuple)
    assert c[0] == "refused"


# The verdicts in one call (round 7): read_request, accept_plain, request_head, accept_key.


def _py_read_request(data: bytes, limit: int) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handshake, "scan_request", handshake.py_scan_request)
        return handshake.py_read_request(data, limit)


#: Keys: valid ones, and strings near them (lengths, padding, alphabet).
KEYS = st.one_of(
    st.just(KEY),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ .",
            min_size=20, max_size=26).map(str.encode),
    st.binary(min_size=22, max_size=22).map(lambda b: b.hex()[:22].encode() + b"=="),
)
#: Targets: plain ones and ones backend_target() looks inside (or refuses).
TARGETS = st.sampled_from([
    b"/chat", b"/", b"/chat?x=1", b"/a/b?q=../x", b"/app.js", b"/a/../b", b"/%2e%2e/x",
    b"/a%20b", b"/a\\b", b"/a#b", b"chat", b"*", b"http://h/x", b"/?", b"/a?b#c",
])
PROTOCOLS = st.sampled_from([
    None, b"chat", b"chat, superchat", b" chat ,, v2 ", b"", b",", b"bad proto", b"a/b",
    b"chat,\tv2", b"\xe9t\xe9", b"bearer.abc",
])


@st.composite
def upgrade_heads(draw: st.DrawFn) -> bytes:
    """GOOD with its key, target and subprotocol offers drawn."""
    data = GOOD.replace(KEY, draw(KEYS)).replace(b"/chat?x=1", draw(TARGETS), 1)
    protocol = draw(PROTOCOLS)
    if protocol is not None:
        data = data.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: " + protocol + b"\r\n\r\n")
    return data


@SETTINGS
@given(st.one_of(requests(), upgrade_heads()), LIMITS)
def test_read_request_twins(data: bytes, limit: int) -> None:
    assert _heads is not None
    c, py = _heads.read_request(data, limit), _py_read_request(data, limit)
    assert c == py
    if isinstance(c, tuple) and len(c) == 2:  # the requests made: equal, and alike
        assert isinstance(py, tuple)
        for request in (c[0], py[0]):
            assert type(request) is handshake.UpgradeRequest
            assert request.plain_connection is request.headers
        assert (c[0].method, c[0].origin) == (py[0].method, py[0].origin)


@SETTINGS
@given(upgrade_heads())
def test_read_upgrade_decides_the_same_with_either_on_keys_targets_and_offers(
    data: bytes,
) -> None:
    assert _heads is not None
    assert _read_upgrade(data, _heads.scan_request) == _read_upgrade(
        data, handshake.py_scan_request)


def test_the_plainest_upgrade_is_checked_in_one_call() -> None:
    assert _heads is not None
    read = _heads.read_request(GOOD, 8192)
    assert read is not None
    assert len(read) == 2
    assert read == _py_read_request(GOOD, 8192)
    request, rest_at = read
    assert isinstance(request, handshake.UpgradeRequest)
    assert rest_at == len(GOOD)
    assert (request.method, request.target, request.host, request.key, request.subprotocols,
            request.origin, request.extensions) == (
        b"GET", b"/chat?x=1", b"example.com", KEY, (), "http://example.com", ())
    assert request.headers[0] == (b"host", b"example.com")
    assert request.plain_connection is request.headers


@pytest.mark.parametrize("data", HOSTILE_REQUESTS)
def test_hostile_requests_are_left_to_h11_by_read_request(data: bytes) -> None:
    assert _heads is not None
    assert _heads.read_request(data, 8192) is None
    assert _py_read_request(data, 8192) is None


def _accept_plain(compiled: bool, *args: Any) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handshake, "scan_response", handshake.py_scan_response)
        try:
            if compiled:
                assert _heads is not None
                return _heads.accept_plain(*args)
            return handshake.py_accept_plain(*args)
        except UnicodeEncodeError as exc:
            return ("unicode", exc.object, exc.start)


CLIENT_KEY = b"x3JJHMbDL1EzLkh9GBhXDw=="
SUBPROTOCOLS = st.sampled_from([None, "chat", "bearer.abc", "", "caf\xe9", "\u20ac"])
CLIENT_HEADERS = st.sampled_from([
    (), ((b"set-cookie", b"sticky=1"),), ((b"a", b""), (b"b", b"2")),
])


@SETTINGS
@given(responses(), SUBPROTOCOLS, CLIENT_HEADERS)
def test_accept_plain_twins(
    data: bytes, subprotocol: str | None, client_headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    args = (data, KEY, CLIENT_KEY, subprotocol, client_headers)
    assert _accept_plain(True, *args) == _accept_plain(False, *args)


@SETTINGS
@given(responses(), SUBPROTOCOLS, CLIENT_HEADERS)
def test_accept_plain_says_what_read_accept_says(
    data: bytes, subprotocol: str | None, client_headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    """Where accept_plain() answers, read_accept() accepts the same 101 with no
    choices, and the client's 101 is the one made of its answer."""
    made = _accept_plain(True, data, KEY, CLIENT_KEY, subprotocol, client_headers)
    if made is None or made[0] == "unicode":
        return
    read = handshake.read_accept(data, target="b", key=KEY, offered=("chat",),
                                 offered_extensions=(b"permessage-deflate",))
    assert read is not None
    chosen, extensions, headers, rest = read
    assert (chosen, extensions) == (None, None)
    response, rest_at = made  # type: ignore[misc]
    assert data[rest_at:] == rest
    assert response == handshake.accept_response_of(
        CLIENT_KEY, subprotocol, None, headers + client_headers)


def test_the_plainest_101_is_checked_and_answered_in_one_call() -> None:
    assert _heads is not None
    made = _heads.accept_plain(RESPONSE + b"early", KEY, CLIENT_KEY, None, ())
    assert made == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + handshake.py_accept_key(CLIENT_KEY) + b"\r\n\r\n", len(RESPONSE))


@pytest.mark.parametrize("data", [
    RESPONSE.replace(ACCEPT, b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="),  # another key's
    RESPONSE.replace(b"Upgrade: websocket\r\n", b""),
    RESPONSE.replace(b"Connection: Upgrade", b"Connection: close"),
    RESPONSE.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n"),
    RESPONSE.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
    RESPONSE.replace(b"\r\nConnection", b"\r\n Connection"),  # obs-fold
    RESPONSE.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\n"),  # bare LF
    RESPONSE.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\nUpgrade: h2c\r\n"),
    RESPONSE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: other\r\n\r\n"),
    RESPONSE.replace(b"HTTP/1.1 101", b"HTTP/1.1 200"),
    RESPONSE[:-2],
    RESPONSE.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n"),
])
def test_other_101s_are_left_to_read_accept(data: bytes) -> None:
    assert _heads is not None
    assert _heads.accept_plain(data, KEY, CLIENT_KEY, None, ()) is None
    assert handshake.py_accept_plain(data, KEY, CLIENT_KEY, None, ()) is None


@SETTINGS
@given(st.binary(max_size=300))
def test_accept_key_twins(key: bytes) -> None:
    assert _heads is not None
    assert _heads.accept_key(key) == handshake.py_accept_key(key)


def test_accept_key_twins_at_every_length_of_a_few_blocks() -> None:
    # SHA-1's padding differs at each length modulo 64 (the key and the GUID's 36 bytes
    # ending at 55, 56 or 64 bytes of a block): every length, not a sample.
    assert _heads is not None
    for n in range(300):
        key = bytes((i * 7 + n) & 0xFF for i in range(n))
        assert _heads.accept_key(key) == handshake.py_accept_key(key), n


def test_accept_key_of_the_rfc() -> None:  # RFC 6455 §1.3's example
    assert _heads is not None
    assert _heads.accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


VALUES = st.sampled_from(["1.2.3.4", "a b", "", "\xe9", "\u20ac", "x\x7f", "ok-1", "\t"])
SKIPPED = st.sampled_from([
    handshake._SKIPPED, handshake._SKIPPED | {b"cookie"}, frozenset(), {b"origin"},
])


@st.composite
def request_parts(draw: st.DrawFn) -> tuple[Any, ...]:
    headers = tuple(draw(st.lists(st.tuples(
        st.sampled_from([b"origin", b"cookie", b"x-a", b"upgrade", b"host"]),
        st.sampled_from([b"1", b"", b"a b"])), max_size=4)))
    return (
        draw(st.sampled_from([b"/chat", b"/a?b", b"", b"/a b", b"/\x7f", b"/\xe9"])),
        b" HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: ", b"k",
        tuple(draw(st.lists(st.sampled_from(["chat", "v2", "\xe9", ""]), max_size=3))),
        tuple(draw(st.lists(st.sampled_from([b"permessage-deflate", b""]), max_size=2))),
        headers, draw(SKIPPED), draw(VALUES),
        b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ", b"example.com", draw(VALUES),
    )


@SETTINGS
@given(request_parts())
def test_request_head_twins(parts: tuple[Any, ...]) -> None:
    assert _heads is not None
    assert _heads.request_head(*parts) == handshake.py_request_head(*parts)
