"""The compiled head scanners (wsproxy.core._heads) and their Python twins
(handshake.py_scan_request / py_scan_response) give the same answers (issue 18).

Checked with hypothesis (derandomized: the same inputs on every run), on the same
bytes: mostly valid upgrade requests and 101s with pieces changed (the strategies of
test_upgrade_fast_read and test_accept_fast_read, whose verdicts are checked against
h11 there, with whichever scanner is in use), heads with every kind of odd byte in
names, values and line ends, and arbitrary bytes; any head limit, negative included.
Then read_upgrade / read_accept with either scanner: the same request or answer, or
the same refusal. And the hostile examples: smuggling (CL+TE, duplicate CL), obs-folds,
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
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handshake, "scan_request", scanner)
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
