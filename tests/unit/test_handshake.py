"""The two opening handshakes: the pure checks, and the Session driving them."""

from __future__ import annotations

import base64
import ipaddress

import h11
import pytest
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from tests.helpers import FORWARDING, SessionHarness, build_raw
from wsproxy.core import Session, SessionState, Side
from wsproxy.core import frames as fr
from wsproxy.core.handshake import (
    Forwarding,
    UpgradeRequest,
    accept_key,
    check_upgrade,
    check_upstream_response,
    client_address,
    error_response,
    read_accept,
    upstream_request,
    upstream_request_bytes,
)
from wsproxy.errors import HandshakeRejected, InvalidTransition, UpstreamUnavailable

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

GOOD = [
    ("Host", "proxy.example"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY.decode()),
    ("Sec-WebSocket-Version", "13"),
]


def with_headers(*, drop: tuple[str, ...] = (), **replace: str) -> list[tuple[str, str]]:
    """GOOD without *drop* and with *replace* (keyword names use _ for -)."""
    names = {k.replace("_", "-").lower(): v for k, v in replace.items()}
    out = [(n, names.pop(n.lower(), v)) for n, v in GOOD if n.lower() not in drop]
    return out + list(names.items())


def h11_request(headers: list[tuple[str, str]], *, method: str = "GET") -> h11.Request:
    return h11.Request(method=method, target="/chat?room=1", headers=headers)


def raw_request(
    headers: list[tuple[str, str]], *, method: str = "GET", target: str = "/chat?room=1",
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(data: bytes) -> tuple[h11.Response, bytes]:
    """Parse an HTTP response the way a client would."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    response = conn.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    return response, body


def header_values(event: h11.Request | h11.Response, name: bytes) -> list[bytes]:
    return [bytes(v) for k, v in event.headers if k == name]


def fed(data: bytes | list[bytes], **kwargs: int) -> Session:
    session = Session("hs", **kwargs)
    for chunk in [data] if isinstance(data, bytes) else data:
        session.receive_data(Side.CLIENT, chunk)
    return session


def answered(session: Session) -> tuple[h11.Response, bytes]:
    return read_response(b"".join(session.data_to_send(Side.CLIENT)))


# check_upgrade, pure…


class TestCheckUpgrade:
    def test_valid_upgrade(self) -> None:
        headers = with_headers(
            sec_websocket_protocol="chat, Superchat", origin="https://app.example",
            sec_websocket_extensions="permessage-deflate",
        )
        upgrade = check_upgrade(h11_request(headers))
        assert upgrade.target == b"/chat?room=1"
        assert upgrade.host == b"proxy.example"
        assert upgrade.key == KEY
        assert upgrade.subprotocols == ("chat", "Superchat")  # case kept
        assert upgrade.extensions == (b"permessage-deflate",)
        assert upgrade.origin == "https://app.example"
        assert upgrade.header(b"sec-websocket-version") == b"13"
        assert upgrade.header(b"x-nothing") is None

    def test_token_lists_are_case_insensitive(self) -> None:
        headers = with_headers(upgrade="WebSocket", connection="keep-alive, UPGRADE")
        assert check_upgrade(h11_request(headers)).key == KEY

    @pytest.mark.parametrize(
        "headers",
        [
            with_headers(drop=("upgrade",)),
            with_headers(upgrade="h2c"),
            with_headers(drop=("connection",)),
            with_headers(connection="keep-alive"),
        ],
        ids=["no-upgrade", "other-upgrade", "no-connection", "connection-without-upgrade"],
    )
    def test_not_an_upgrade_is_400(self, headers: list[tuple[str, str]]) -> None:
        with pytest.raises(HandshakeRejected) as info:
            check_upgrade(h11_request(headers))
        assert info.value.status == 400

    def test_not_a_get_is_400(self) -> None:
        with pytest.raises(HandshakeRejected) as info:
            check_upgrade(h11_request([*GOOD, ("Content-Length", "0")], method="POST"))
        assert info.value.status == 400

    def test_http_1_0_is_400(self) -> None:
        request = h11.Request(method="GET", target="/", headers=GOOD, http_version="1.0")
        with pytest.raises(HandshakeRejected) as info:
            check_upgrade(request)
        assert info.value.status == 400

    @pytest.mark.parametrize(
        "headers",
        [
            with_headers(sec_websocket_version="8"),
            with_headers(drop=("sec-websocket-version",)),
            [*GOOD, ("Sec-WebSocket-Version", "8")],
        ],
        ids=["version-8", "no-version", "two-versions"],
    )
    def test_wrong_version_is_426_with_the_version_we_speak(
        self, headers: list[tuple[str, str]]
    ) -> None:
        with pytest.raises(HandshakeRejected) as info:
            check_upgrade(h11_request(headers))
        assert info.value.status == 426
        assert ("Sec-WebSocket-Version", "13") in info.value.headers

    @pytest.mark.parametrize(
        "headers",
        [
            with_headers(drop=("sec-websocket-key",)),
            with_headers(sec_websocket_key="not base64!!"),
            with_headers(sec_websocket_key="c2hvcnQ="),  # 5 bytes
            with_headers(sec_websocket_key="AAAAAAAAAAAAAAAAAAAAAAAAAA=="),  # 19 bytes
            [*GOOD, ("Sec-WebSocket-Key", KEY.decode())],
        ],
        ids=["missing", "not-base64", "too-short", "too-long", "twice"],
    )
    def test_bad_key_is_400(self, headers: list[tuple[str, str]]) -> None:
        with pytest.raises(HandshakeRejected) as info:
            check_upgrade(h11_request(headers))
        assert info.value.status == 400


def test_accept_key_rfc_vector() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_error_response_is_a_complete_http_answer() -> None:
    response, body = read_response(
        error_response(426, "unsupported version", [("Sec-WebSocket-Version", "13")])
    )
    assert response.status_code == 426
    assert header_values(response, b"sec-websocket-version") == [b"13"]
    assert header_values(response, b"connection") == [b"close"]
    assert body == b"unsupported version\n"


# client_address…


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # No header, or a peer we do not trust: the peer is the client, its XFF a spoof.
        ("203.0.113.7", None, ("203.0.113.7", "203.0.113.7")),
        ("203.0.113.7", b"1.2.3.4", ("203.0.113.7", "203.0.113.7")),
        # A trusted proxy: the right-most untrusted address is the client.
        ("10.0.0.2", b"198.51.100.1", ("198.51.100.1", "198.51.100.1, 10.0.0.2")),
        (
            "10.0.0.2",
            b"6.6.6.6, 198.51.100.1, 10.1.1.1",
            ("198.51.100.1", "6.6.6.6, 198.51.100.1, 10.1.1.1, 10.0.0.2"),
        ),
        # Every hop trusted: the left-most one is as far as we can see.
        ("10.0.0.2", b"10.9.9.9", ("10.9.9.9", "10.9.9.9, 10.0.0.2")),
        ("fd00::1", b"2001:db8::5", ("2001:db8::5", "2001:db8::5, fd00::1")),
        # Garbage in the chain is not trusted, so it is what we get.
        ("10.0.0.2", b"unknown", ("unknown", "unknown, 10.0.0.2")),
        ("10.0.0.2", b"", ("10.0.0.2", "10.0.0.2")),
    ],
)
def test_client_address(peer: str, xff: bytes | None, expected: tuple[str, str]) -> None:
    assert client_address(peer, xff, TRUSTED) == expected


def test_client_address_trusts_nobody_by_default() -> None:
    assert client_address("10.0.0.2", b"1.2.3.4", []) == ("10.0.0.2", "10.0.0.2")


# The client's upgrade through the Session…


class TestSessionRequest:
    def test_valid_request_sets_request_and_waits_for_the_driver(self) -> None:
        session = fed(raw_request(GOOD))
        assert session.request is not None
        assert session.request.key == KEY
        assert session.state is SessionState.AWAIT_REQUEST
        assert session.data_to_send(Side.CLIENT) == []

    def test_request_one_byte_at_a_time(self) -> None:
        data = raw_request(GOOD)
        session = fed([data[i : i + 1] for i in range(len(data))])
        assert session.request is not None
        assert session.request.target == b"/chat?room=1"

    def test_not_an_upgrade_is_400(self) -> None:
        session = fed(raw_request([("Host", "x")]))
        response, _ = answered(session)
        assert response.status_code == 400
        assert session.state is SessionState.REJECTED
        assert session.rejected_status == 400
        assert session.should_close(Side.CLIENT)

    def test_wrong_version_is_426(self) -> None:
        session = fed(raw_request(with_headers(sec_websocket_version="7")))
        response, _ = answered(session)
        assert response.status_code == 426
        assert header_values(response, b"sec-websocket-version") == [b"13"]
        assert session.state is SessionState.REJECTED

    def test_bad_key_is_400(self) -> None:
        session = fed(raw_request(with_headers(sec_websocket_key="nope")))
        response, _ = answered(session)
        assert response.status_code == 400
        assert session.state is SessionState.REJECTED

    @pytest.mark.parametrize(
        "data",
        [
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n",
        ],
        ids=["bad-header-line", "tls-hello"],
    )
    def test_malformed_request_is_400(self, data: bytes) -> None:
        session = fed(data)
        response, _ = answered(session)
        assert response.status_code == 400
        assert session.state is SessionState.REJECTED
        assert session.request is None

    def test_head_over_the_limit_in_one_chunk_is_431(self) -> None:
        data = raw_request([*GOOD, ("X-Padding", "p" * 2000)])
        session = fed(data, max_request_head=1024)
        response, _ = answered(session)
        assert response.status_code == 431
        assert session.state is SessionState.REJECTED
        assert session.request is None

    def test_head_over_the_limit_in_pieces_is_431(self) -> None:
        data = raw_request([*GOOD, ("X-Padding", "p" * 2000)])
        session = fed([data[i : i + 100] for i in range(0, len(data), 100)], max_request_head=1024)
        response, _ = answered(session)
        assert response.status_code == 431
        assert session.state is SessionState.REJECTED
        assert session.request is None

    def test_endless_head_is_431_before_it_ends(self) -> None:
        session = fed([b"GET / HTTP/1.1\r\n"] + [b"X-A: " + b"a" * 95 + b"\r\n"] * 20,
                      max_request_head=1024)
        response, _ = answered(session)
        assert response.status_code == 431

    def test_head_at_the_limit_is_fine(self) -> None:
        data = raw_request(GOOD)
        assert fed(data, max_request_head=len(data)).request is not None

    def test_driver_rejects(self) -> None:
        session = fed(raw_request(GOOD))
        session.reject(403, "origin not allowed")
        response, body = answered(session)
        assert response.status_code == 403
        assert body == b"origin not allowed\n"
        assert session.state is SessionState.REJECTED

    def test_driver_refuses_for_a_drain_by_the_shutdown_trigger(self) -> None:
        session = fed(raw_request(GOOD))
        session.reject(503, "proxy is draining", shutting_down=True)
        response, _ = answered(session)
        assert response.status_code == 503
        assert session.state is SessionState.REJECTED

    def test_eof_before_the_request_fails(self) -> None:
        session = fed(raw_request(GOOD)[:10])
        session.receive_eof(Side.CLIENT)
        assert session.state is SessionState.FAILED
        assert session.should_close(Side.CLIENT)

    def test_connect_upstream_before_a_request_is_a_bug(self) -> None:
        session = Session("hs")
        with pytest.raises(InvalidTransition):
            session.connect_upstream(
                target="t", authority="b:80", path_prefix="", forwarding=FORWARDING,
                pass_extensions=True,
            )


# The backend's handshake request…


def upstream_head(
    headers: list[tuple[str, str]], *, pass_extensions: bool = True, target: str = "/chat?room=1"
) -> h11.Request:
    """What the session writes to a backend for a client's upgrade with *headers*."""
    session = fed(raw_request(headers, target=target))
    assert session.request is not None
    session.accept()
    session.connect_upstream(
        target="t", authority="backend:80", path_prefix="", forwarding=FORWARDING,
        pass_extensions=pass_extensions,
    )
    assert session.state is SessionState.CONNECTING_UPSTREAM
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"".join(session.data_to_send(Side.UPSTREAM)))
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    return request


class TestUpstreamRequest:
    def test_is_a_fresh_websocket_handshake(self) -> None:
        request = upstream_head(GOOD)
        assert request.method == b"GET"
        assert request.target == b"/chat?room=1"
        assert header_values(request, b"host") == [b"backend:80"]
        assert header_values(request, b"upgrade") == [b"websocket"]
        assert header_values(request, b"sec-websocket-version") == [b"13"]
        [key] = header_values(request, b"sec-websocket-key")
        assert key != KEY  # our own key, not the client's
        assert len(base64.b64decode(key, validate=True)) == 16

    def test_keys_differ_between_connections(self) -> None:
        keys = {tuple(header_values(upstream_head(GOOD), b"sec-websocket-key")) for _ in range(3)}
        assert len(keys) == 3

    def test_path_and_query_are_kept(self) -> None:
        request = upstream_head(GOOD, target="/a/b%20c?x=1&y=%2F")
        assert request.target == b"/a/b%20c?x=1&y=%2F"

    def test_path_prefix(self) -> None:
        upgrade = check_upgrade(h11_request(GOOD))
        request = upstream_request(
            upgrade, authority="b", path_prefix="/app/", key=b"k", forwarding=FORWARDING,
            pass_extensions=True,
        )
        assert request.target == b"/app/chat?room=1"

    def test_offers_are_forwarded(self) -> None:
        headers = with_headers(
            sec_websocket_protocol="chat, v2.chat",
            sec_websocket_extensions="permessage-deflate; client_max_window_bits",
        )
        request = upstream_head(headers)
        assert header_values(request, b"sec-websocket-protocol") == [b"chat, v2.chat"]
        assert header_values(request, b"sec-websocket-extensions") == [
            b"permessage-deflate; client_max_window_bits"
        ]

    def test_extension_offers_dropped_without_pass_extensions(self) -> None:
        headers = with_headers(sec_websocket_extensions="permessage-deflate")
        request = upstream_head(headers, pass_extensions=False)
        assert header_values(request, b"sec-websocket-extensions") == []

    def test_forwarding_headers(self) -> None:
        request = upstream_head(GOOD)
        assert header_values(request, b"x-forwarded-for") == [b"127.0.0.1"]
        assert header_values(request, b"x-forwarded-proto") == [b"http"]
        assert header_values(request, b"x-forwarded-host") == [b"proxy.example"]
        assert header_values(request, b"x-request-id") == [b"abc"]

    def test_identity_headers(self) -> None:
        upgrade = check_upgrade(h11_request([*GOOD, ("X-Auth-Subject", "mallory")]))
        forwarding = Forwarding(
            client_ip="1.2.3.4", forwarded_for="1.2.3.4", proto="https", request_id="r1",
            identity=(("X-Auth-Subject", "alice"), ("X-Auth-Tenant", "t1")),
        )
        request = upstream_request(
            upgrade, authority="b", path_prefix="", key=b"k", forwarding=forwarding,
            pass_extensions=True,
        )
        assert header_values(request, b"x-auth-subject") == [b"alice"]
        assert header_values(request, b"x-auth-tenant") == [b"t1"]
        assert header_values(request, b"x-forwarded-proto") == [b"https"]

    def test_client_copies_of_proxy_headers_are_dropped(self) -> None:
        spoofs = [
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Real-IP", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Request-Id", "spoofed"),
            ("X-Auth-Subject", "admin"),
        ]
        request = upstream_head([*GOOD, *spoofs])
        assert header_values(request, b"x-forwarded-for") == [b"127.0.0.1"]
        assert header_values(request, b"x-forwarded-proto") == [b"http"]
        assert header_values(request, b"x-forwarded-host") == [b"proxy.example"]
        assert header_values(request, b"x-request-id") == [b"abc"]
        for name in (b"x-real-ip", b"forwarded", b"x-auth-subject"):
            assert header_values(request, name) == []

    def test_hop_by_hop_headers_are_dropped_and_others_kept(self) -> None:
        headers = [
            *with_headers(connection="Upgrade, X-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("X-Hop", "secret"),
            ("Cookie", "a=1"),
            ("User-Agent", "test"),
            ("Origin", "https://app.example"),
        ]
        request = upstream_head(headers)
        names = [k for k, _ in request.headers]
        for name in (b"keep-alive", b"proxy-authorization", b"proxy-connection", b"te",
                     b"trailer", b"x-hop"):
            assert name not in names
        assert header_values(request, b"connection") == [b"Upgrade"]
        assert header_values(request, b"cookie") == [b"a=1"]
        assert header_values(request, b"user-agent") == [b"test"]
        assert header_values(request, b"origin") == [b"https://app.example"]
        assert len(header_values(request, b"host")) == 1

    def test_hop_by_hop_named_in_a_second_connection_header(self) -> None:
        # Regression (fixed in 3af4a85): only the first Connection header was read.
        headers = [*GOOD, ("Connection", "X-Hop"), ("X-Hop", "secret")]
        request = upstream_head(headers)
        assert header_values(request, b"x-hop") == []

    @pytest.mark.parametrize(
        ("headers", "identity", "prefix"),
        [
            (GOOD, (), ""),
            ([*with_headers(sec_websocket_protocol="chat, v2.chat",
                            sec_websocket_extensions="permessage-deflate"),
              ("Cookie", "a=1"), ("User-Agent", "t\tx")], (), "/app/"),
            (GOOD, (("X-Auth-Subject", "\xc3\xa0lice"), ("X-Auth-Tenant", "")), "/p"),
            # Headers the client's Connection names are hop-by-hop, whatever its case.
            ([*with_headers(connection="keep-alive, UPGRADE, X-Hop"), ("X-Hop", "1"),
              ("X-Kept", "2")], (), ""),
            ([*GOOD, ("Connection", "x-hop"), ("X-Hop", "1"), ("X-Kept", "2")], (), ""),
            ([*with_headers(connection="upgrade"), ("X-Hop", "1")], (), ""),
        ],
    )
    def test_bytes_are_what_h11_writes(
        self, headers: list[tuple[str, str]], identity: tuple[tuple[str, str], ...], prefix: str
    ) -> None:
        # upstream_request_bytes() formats the request itself rather than through h11.
        upgrade = check_upgrade(h11_request(headers))
        forwarding = Forwarding(
            client_ip="1.2.3.4", forwarded_for="10.0.0.1, 1.2.3.4", proto="https",
            request_id="r1", identity=identity,
        )
        kwargs = dict(authority="backend:80", path_prefix=prefix, key=b"k", forwarding=forwarding,
                      pass_extensions=True, owned=frozenset({b"x-auth-tenant"}))
        expected = h11.Connection(h11.CLIENT).send(upstream_request(upgrade, **kwargs))
        assert upstream_request_bytes(upgrade, **kwargs) == expected

    @pytest.mark.parametrize(
        ("identity", "prefix"),
        [
            ((("X-Auth-Subject", "a\r\nX-Evil: 1"),), ""),
            ((("X-Auth-Subject", " padded"),), ""),
            ((("X Bad Name", "v"),), ""),
            ((), "/a b"),
        ],
    )
    def test_bytes_refuse_what_h11_refuses(
        self, identity: tuple[tuple[str, str], ...], prefix: str
    ) -> None:
        upgrade = check_upgrade(h11_request(GOOD))
        forwarding = Forwarding(
            client_ip="1.2.3.4", forwarded_for="1.2.3.4", proto="http", request_id="r1",
            identity=identity,
        )
        kwargs = dict(authority="b", path_prefix=prefix, key=b"k", forwarding=forwarding,
                      pass_extensions=True)
        with pytest.raises(h11.LocalProtocolError):
            upstream_request(upgrade, **kwargs)
        with pytest.raises(h11.LocalProtocolError):
            upstream_request_bytes(upgrade, **kwargs)


# The backend's answer, through the harness…


_ACCEPT = b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def h11_switching(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """How h11, told of an upgrade GET, reads *data* as the answer to it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[
        ("Host", "b"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 101
    return [(bytes(k), bytes(v)) for k, v in event.headers], bytes(conn.trailing_data[0])


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + _ACCEPT + b"\r\n\r\n",
        b"HTTP/1.1 101\r\nUPGRADE:websocket\r\nconnection:  upgrade \t\r\n" + _ACCEPT
        + b"\r\nX-Empty:\r\nX-Spaced: a  b\tc\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"\r\n\x81\x02hi\x88",
        b"HTTP/1.1 101 \r\nX-Obs: caf\xe9\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ],
)
def test_a_plain_101_reads_as_h11_reads_it(data: bytes) -> None:
    headers, rest = h11_switching(data)
    try:
        accepted = check_upstream_response(101, headers, target="b", key=KEY, offered=(),
                                           offered_extensions=())
        expected: object = (accepted.subprotocol, accepted.extensions, accepted.headers, rest)
    except UpstreamUnavailable as exc:
        expected = exc.reason
    try:
        read: object = read_accept(data, target="b", key=KEY, offered=(),
                                   offered_extensions=())
    except UpstreamUnavailable as exc:
        read = exc.reason
    assert read == expected


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",  # incomplete
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 101 OK\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nX-Folded: a\r\n b\r\n\r\n",
        b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n",
        b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nX-Nul: a\x00b\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nX-Long: " + b"a" * 17000 + b"\r\n\r\n",
    ],
)
def test_anything_but_a_plain_101_is_left_to_h11(data: bytes) -> None:
    assert read_accept(data, target="b", key=KEY, offered=(), offered_extensions=()) is None


def connecting(**kwargs: object) -> SessionHarness:
    """A harness whose backend has got our upgrade request and not answered yet."""
    h = SessionHarness(opened=False)
    h.send_request(**kwargs)  # type: ignore[arg-type]
    assert isinstance(h.connect(), Request)
    assert h.session.state is SessionState.CONNECTING_UPSTREAM
    return h


def raw_101(key: bytes, *extra: str) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(key).decode()}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def our_key(h: SessionHarness) -> bytes:
    return h.session.upgrade.upstream_key  # type: ignore[union-attr]


class TestUpstreamResponse:
    def test_backend_sees_a_websocket_request(self) -> None:
        h = SessionHarness()
        request = h.upstream_request
        assert isinstance(request, Request)
        assert request.host == "backend:80"
        assert request.target == "/chat?room=1"
        assert (b"x-request-id", b"abc") in [(bytes(k).lower(), bytes(v))
                                             for k, v in request.extra_headers]
        assert h.session.state is SessionState.OPEN

    def test_client_101_carries_the_backend_subprotocol(self) -> None:
        h = SessionHarness(subprotocols=["chat", "v2.chat"], backend_subprotocol="v2.chat")
        assert isinstance(h.upstream_request, Request)
        assert h.upstream_request.subprotocols == ["chat", "v2.chat"]
        assert isinstance(h.accepted, AcceptConnection)
        assert h.accepted.subprotocol == "v2.chat"
        assert h.session.accepted is not None
        assert h.session.accepted.subprotocol == "v2.chat"

    def test_no_subprotocol_chosen(self) -> None:
        h = SessionHarness(subprotocols=["chat"])
        assert isinstance(h.accepted, AcceptConnection)
        assert h.accepted.subprotocol is None

    def test_extensions_negotiated_end_to_end(self) -> None:
        h = SessionHarness(
            client_extensions=[PerMessageDeflate()], backend_extensions=[PerMessageDeflate()]
        )
        assert isinstance(h.accepted, AcceptConnection)
        [ext] = h.accepted.extensions
        assert ext.name == "permessage-deflate"
        text = "compress me " * 100
        h.client_sends(TextMessage(data=text))
        [frame] = h.frames_to(Side.UPSTREAM)
        assert frame.rsv == fr.RSV1  # forwarded as compressed, untouched
        assert len(frame.payload) < len(text)
        assert h.upstream_received() == [TextMessage(data=text)]
        h.upstream_sends(BytesMessage(data=b"\x00" * 5000))
        assert h.client_received() == [BytesMessage(data=b"\x00" * 5000)]

    def test_without_pass_extensions_the_backend_sees_no_offer(self) -> None:
        h = SessionHarness(client_extensions=[PerMessageDeflate()], pass_extensions=False)
        assert isinstance(h.upstream_request, Request)
        assert h.upstream_request.extensions == []
        assert isinstance(h.accepted, AcceptConnection)
        assert h.accepted.extensions == []
        # Nothing was negotiated, so a compressed frame is a protocol error.
        h.client_sends_raw(build_raw(fr.TEXT, b"x", rsv=fr.RSV1))
        assert h.closes_to(Side.CLIENT) == [(1002, "protocol error")]

    def test_backend_403_is_passed_to_the_client(self) -> None:
        h = connecting()
        h.upstream_sends(RejectConnection(status_code=403))
        events = h.client_received()
        assert isinstance(events[0], RejectConnection)
        assert events[0].status_code == 403
        assert h.session.state is SessionState.REJECTED
        assert h.session.rejected_status == 403
        assert h.session.should_close(Side.CLIENT)
        assert h.session.should_close(Side.UPSTREAM)

    def test_backend_error_with_a_body(self) -> None:
        h = connecting()
        h.upstream_sends(RejectConnection(status_code=503, has_body=True), flush=False)
        h.upstream_sends(RejectData(data=b"busy"))
        [event, *_] = h.client_received()
        assert isinstance(event, RejectConnection)
        assert event.status_code == 503
        assert h.session.state is SessionState.REJECTED

    @pytest.mark.parametrize(
        "answer",
        [
            lambda key: raw_101(b"AAAAAAAAAAAAAAAAAAAAAA=="),
            lambda key: raw_101(key).replace(b"Upgrade: websocket\r\n", b""),
            lambda key: raw_101(key).replace(b"Connection: Upgrade\r\n", b""),
            lambda key: raw_101(key, "Sec-WebSocket-Protocol: nobody-asked"),
            lambda key: b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            lambda key: b"garbage\r\n\r\n",
        ],
        ids=["wrong-accept", "no-upgrade", "no-connection", "unoffered-subprotocol",
             "bare-101", "malformed"],
    )
    def test_bad_101_sets_upstream_failure(self, answer) -> None:  # type: ignore[no-untyped-def]
        h = connecting(subprotocols=["chat"])
        h.upstream_sends_raw(answer(our_key(h)))
        assert h.session.upstream_failure is not None
        assert h.session.state is SessionState.CONNECTING_UPSTREAM
        assert h.client_received() == []  # the client has to wait for another backend

    def test_extension_answer_without_pass_extensions_sets_upstream_failure(self) -> None:
        h = SessionHarness(opened=False)
        h.send_request(extensions=[PerMessageDeflate()])
        h.connect(pass_extensions=False)
        h.upstream_sends_raw(raw_101(our_key(h), "Sec-WebSocket-Extensions: permessage-deflate"))
        assert h.session.upstream_failure == "backend chose an extension nobody offered"

    def test_unoffered_extension_sets_upstream_failure(self) -> None:
        # Regression (fixed in 3af4a85): the client got a 101 naming an extension it
        # never offered, and failed.
        h = connecting()  # the client offered no extension
        answer = raw_101(our_key(h), "Sec-WebSocket-Extensions: permessage-deflate")
        h.session.receive_data(Side.UPSTREAM, answer)
        assert h.session.upstream_failure == "backend chose an extension nobody offered"
        assert h.client_received() == []

    @pytest.mark.parametrize(
        "cut", [lambda a: [b"HTTP/1.1 100 Continue\r\n\r\n" + a],  # read by h11
                lambda a: [a[:20], a[20:]], lambda a: [a]],  # by h11, then by hand
        ids=["continue-first", "split", "whole"],
    )
    def test_a_101_opens_however_it_comes(self, cut) -> None:  # type: ignore[no-untyped-def]
        h = connecting()
        for part in cut(raw_101(our_key(h)) + build_raw(fr.TEXT, b"early", mask=False)):
            h.upstream_sends_raw(part)
        assert h.session.state is SessionState.OPEN
        assert [type(e) for e in h.client_received()] == [AcceptConnection, TextMessage]

    def test_extension_other_than_the_offered_one_sets_upstream_failure(self) -> None:
        h = SessionHarness(opened=False)
        h.send_request(extensions=[PerMessageDeflate()])
        h.connect()
        h.upstream_sends_raw(raw_101(our_key(h), "Sec-WebSocket-Extensions: x-webkit-deflate"))
        assert h.session.upstream_failure == "backend chose an extension nobody offered"

    def test_backend_eof_during_the_handshake_sets_upstream_failure(self) -> None:
        h = connecting()
        h.upstream_eof()
        assert h.session.upstream_failure is not None
        assert h.session.state is SessionState.CONNECTING_UPSTREAM

    def test_retry_with_another_backend(self) -> None:
        h = connecting(subprotocols=["chat"])
        h.upstream_sends_raw(raw_101(b"AAAAAAAAAAAAAAAAAAAAAA=="))
        assert h.session.upstream_failure == "wrong Sec-WebSocket-Accept"
        request = h.connect(new_backend=True)
        assert isinstance(request, Request)
        assert request.subprotocols == ["chat"]
        assert h.session.upstream_failure is None
        h.upstream_sends(AcceptConnection(subprotocol="chat"))
        [accepted] = h.client_received()
        assert isinstance(accepted, AcceptConnection)
        assert accepted.subprotocol == "chat"
        assert h.session.state is SessionState.OPEN
        h.client_sends(TextMessage(data="after retry"))
        assert h.upstream_received() == [TextMessage(data="after retry")]

    def test_reject_after_upstream_failure(self) -> None:
        h = connecting()
        h.upstream_eof()
        h.session.reject(502, "no backend")
        h.pump()
        [event, *_] = h.client_received()
        assert isinstance(event, RejectConnection)
        assert event.status_code == 502
        assert h.session.state is SessionState.REJECTED

    def test_client_frames_sent_before_the_101_are_relayed_after_it(self) -> None:
        h = SessionHarness(opened=False)
        h.send_request()
        h.connect()
        # A client that does not wait (wsproto would not let us: write the frame raw).
        h.client_sends_raw(build_raw(fr.TEXT, b"eager"))
        assert h.upstream_received() == []
        h.upstream_sends(AcceptConnection())
        assert h.upstream_received() == [TextMessage(data="eager")]

    def test_request_and_first_frame_in_one_chunk(self) -> None:
        h = SessionHarness(opened=False)
        request = h.client.send(Request(host="proxy.example", target="/"))
        h.client_sends_raw(request + build_raw(fr.BINARY, b"\x01\x02"))
        assert h.session.request is not None
        h.connect()
        h.upstream_sends(AcceptConnection())
        assert h.upstream_received() == [BytesMessage(data=b"\x01\x02")]

    def test_backend_101_and_first_frame_in_one_chunk(self) -> None:
        h = connecting()
        data = h.backend.send(AcceptConnection()) + h.backend.send(TextMessage(data="hello"))
        h.upstream_sends_raw(data)
        events = h.client_received()
        assert [type(e) for e in events] == [AcceptConnection, TextMessage]
        assert events[1] == TextMessage(data="hello")


def test_upgrade_request_header_lookup() -> None:
    upgrade = UpgradeRequest(
        target=b"/", host=b"h", key=KEY, subprotocols=(), extensions=(), origin=None,
        headers=((b"x-a", b"1"), (b"x-a", b"2")),
    )
    assert upgrade.header(b"x-a") == b"1"


@pytest.mark.parametrize("extra", [(), (("Expect", "100-continue"),)], ids=["plain", "expect"])
def test_client_bytes_after_its_request_are_all_kept_for_the_backend(
    extra: tuple[tuple[str, str], ...],
) -> None:
    """Regression: a read that came after the request was in (the driver not yet routed)
    went to the request reader again, which replaced the bytes kept so far: the client's
    first frame never reached the backend (found by test_fuzz_handshake)."""
    first = build_raw(fr.TEXT, b"", mask=True)
    second = build_raw(fr.TEXT, b"hello", mask=True)
    session = fed([raw_request([*with_headers(), *extra]) + first, second])
    assert session.request is not None
    assert session.upgrade is not None
    assert session.upgrade.own_accept()[1] == first + second
