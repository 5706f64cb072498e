"""A backend's 101 read and checked without h11 (handshake.accept_plain, then
handshake.read_accept) gives the verdicts the h11 path gives on the same bytes: the
same Opened (our 101, the choices, the early bytes), the same upstream_failure, or
the same refusal.

Properties with hypothesis, derandomized (the same inputs every run).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import FORWARDING
from wsproxy.core import upgrade as upgrade_module
from wsproxy.core.handshake import accept_key
from wsproxy.core.upgrade import Upgrade
from wsproxy.errors import UpstreamHandshakeFailed

SETTINGS = settings(derandomize=True, max_examples=500, deadline=None)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
REQUEST = (b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
           b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
#: Stands for the right Sec-WebSocket-Accept of the run's own key.
RIGHT = b"<accept>"


def outcome(data: bytes, *, fast: bool, pass_extensions: bool, auth: str | None) -> Any:
    upgrade = Upgrade(max_request_head=8192, plain_http=False)
    upgrade.receive_request(REQUEST)
    upgrade.auth_subprotocol = auth
    upgrade.connect(target="b", authority="b:1", path_prefix="", forwarding=FORWARDING,
                    pass_extensions=pass_extensions, owned_headers=frozenset(),
                    client_headers=((b"set-cookie", b"sticky=1"),))
    data = data.replace(RIGHT, accept_key(upgrade.upstream_key))
    with pytest.MonkeyPatch.context() as patch:
        if not fast:
            patch.setattr(upgrade_module, "read_accept", lambda *a, **k: None)
            patch.setattr(upgrade_module, "accept_plain", lambda *a, **k: None)
        try:
            opened = upgrade.receive_response(data)
        except UpstreamHandshakeFailed as exc:
            return ("refused", exc.status)
    return ("read", opened, upgrade.upstream_failure)


BASE = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", RIGHT)]
names = st.sampled_from([
    b"Upgrade", b"upgrade", b"Connection", b"Sec-WebSocket-Accept", b"Sec-WebSocket-Protocol",
    b"Sec-WebSocket-Extensions", b"Date", b"Set-Cookie", b"X-Backend", b"Content-Length",
    b"Transfer-Encoding", b"Keep-Alive", b"Bad Name", b"",
])
values = st.sampled_from([
    b"websocket", b"WebSocket", b"Upgrade", b"keep-alive, Upgrade", b"h2c", RIGHT,
    b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", b"chat", b"superchat", b"other", b"",
    b"permessage-deflate", b"permessage-deflate; server_no_context_takeover", b"x-unknown",
    b"0", b"chunked", b"  padded  ", b"a\tb", b"a\x00b", b"\xff", b"a=1",
])
status_lines = st.sampled_from([
    b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 101", b"HTTP/1.1 101 ", b"HTTP/1.1 101 OK",
    b"HTTP/1.0 101 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 100 Continue",
    b"HTTP/1.1 101  Switching", b"",
])


def mostly(common: bytes, *others: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([common] * 12 + list(others))


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """Mostly valid 101s, a few pieces changed: many take the fast path, some not."""
    fields = []
    for name, value in BASE:
        if draw(st.integers(0, 14)) == 0:
            continue
        if draw(st.integers(0, 6)) == 0:
            value = draw(values)
        if draw(st.booleans()):
            name = name.lower()
        fields.append((name, value))
    fields += draw(st.lists(st.tuples(names, values), max_size=3))
    fields = draw(st.permutations(fields))
    end = mostly(b"\r\n", b"\n", b"\r\n ")
    out = draw(mostly(b"HTTP/1.1 101 Switching Protocols", *status_lines.elements)) + draw(end)
    for name, value in fields:
        out += name + draw(mostly(b": ", b":", b" : ", b":\t")) + value
        out += draw(mostly(b"", b" ", b"\t")) + draw(end)
    out += draw(mostly(b"\r\n", b"\n", b""))
    return out + draw(st.sampled_from([b"", b"\x81\x02hi", b"\x88\x02\x03\xe8"]))


@SETTINGS
@given(answers(), st.booleans(), st.sampled_from([None, "bearer.x"]))
def test_the_same_verdict_as_h11_on_any_answer(
    data: bytes, pass_extensions: bool, auth: str | None
) -> None:
    assert outcome(data, fast=True, pass_extensions=pass_extensions, auth=auth) == outcome(
        data, fast=False, pass_extensions=pass_extensions, auth=auth)


@pytest.mark.parametrize("extra", [
    b"", b"Sec-WebSocket-Protocol: chat\r\n", b"Set-Cookie: a=1\r\nDate: x\r\nX-B: 2\r\n",
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n", b"Upgrade: websocket\r\n",
])
def test_valid_answers_read_the_same(extra: bytes) -> None:
    data = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + RIGHT + b"\r\n" + extra + b"\r\n\x81\x00")
    for pass_extensions in (False, True):
        fast = outcome(data, fast=True, pass_extensions=pass_extensions, auth=None)
        assert fast == outcome(data, fast=False, pass_extensions=pass_extensions, auth=None)
    assert fast[0] == "read"
