"""The opening handshakes (wsproxy.core.upgrade): one parse of the first request.

A request without Upgrade leaves with the parser that read it (for the HTTP relay),
and an upgrade an HTTP relay parsed comes in the same way (``receive_parsed``): the
outcome is the one the bytes themselves would have given.
"""

from __future__ import annotations

import h11
import pytest

from tests.helpers import FORWARDING
from wsproxy.core import Session, SessionState, Side
from wsproxy.core.handshake import accept_key
from wsproxy.core.http import ParsedRequest, plain_request
from wsproxy.core.upgrade import Upgrade

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: proxy.example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
PLAIN = b"POST /api?x=1 HTTP/1.1\r\nHost: proxy.example\r\nOrigin: https://a.example\r\n" \
        b"Content-Length: 4\r\n\r\nbody"


def relay_parse(data: bytes) -> ParsedRequest:
    """What an HTTP relay hands back: its parser, just past an upgrade's head."""
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(data)
    event = parser.next_event()
    assert isinstance(event, h11.Request)
    return ParsedRequest(parser, event, data)


def test_a_plain_request_leaves_with_its_parser() -> None:
    upgrade = Upgrade(max_request_head=1 << 14, plain_http=True)
    upgrade.receive_request(PLAIN[:20])
    assert upgrade.plain is None
    upgrade.receive_request(PLAIN[20:])
    assert upgrade.plain is not None
    assert upgrade.plain.received == PLAIN
    assert upgrade.plain.request.target == b"/api?x=1"
    assert isinstance(upgrade.plain.parser.next_event(), h11.Data)  # the body is the relay's


def test_a_plain_request_as_auth_and_balancing_read_it() -> None:
    parsed = relay_parse(PLAIN)
    headers = tuple((bytes(k), bytes(v)) for k, v in parsed.request.headers)
    head = plain_request(bytes(parsed.request.method), target=b"/api?x=1", headers=headers)
    assert (head.method, head.host, head.origin) == (b"POST", b"proxy.example", "https://a.example")
    assert head.subprotocols == ()
    assert head.header(b"content-length") == b"4"


def opened(session: Session) -> tuple[bytes, bytes]:
    """Take *session* through a backend's 101: what the client and the backend get."""
    session.accept()
    session.connect_upstream(target="t", authority="backend:80", path_prefix="",
                             forwarding=FORWARDING, pass_extensions=False)
    assert session.upgrade is not None
    key = session.upgrade.upstream_key
    to_backend = b"".join(session.data_to_send(UPSTREAM))
    session.receive_data(UPSTREAM, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(key)
                         + b"\r\n\r\n")
    assert session.state is SessionState.OPEN
    return b"".join(session.data_to_send(CLIENT)), to_backend + b"".join(
        session.data_to_send(UPSTREAM))


@pytest.mark.parametrize("early", [b"", b"\x81\x80\x00\x00\x00\x00"])
def test_an_upgrade_a_relay_parsed_is_taken_as_if_read(early: bytes) -> None:
    read, handed = Session("read", plain_http=True), Session("handed", plain_http=True)
    read.receive_data(CLIENT, UPGRADE + early)
    handed.receive_parsed(relay_parse(UPGRADE + early))
    assert handed.request == read.request
    assert handed.state is read.state is SessionState.AWAIT_REQUEST
    to_client, to_backend = opened(handed)
    assert to_client.startswith(b"HTTP/1.1 101 ")
    assert to_backend.endswith(b"\r\n\r\n" + early)  # the frame that came early goes on


def test_a_bad_upgrade_a_relay_parsed_is_refused_as_if_read() -> None:
    bad = UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8")
    session = Session("handed", plain_http=True)
    session.receive_parsed(relay_parse(bad))
    assert session.state is SessionState.REJECTED
    assert session.rejected_status == 426
