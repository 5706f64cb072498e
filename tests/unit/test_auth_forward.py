"""auth.type forward: what the auth service is sent (the answers are tested against a
real service in tests/integration/test_auth.py)."""

from __future__ import annotations

from tests.unit.test_auth_sources import upgrade
from wsproxy.auth import Credentials
from wsproxy.auth.factory import build_authenticator
from wsproxy.auth.forward import ForwardAuthenticator
from wsproxy.auth.sources import find_credentials
from wsproxy.config import AuthConfig, ForwardAuthConfig


def forward(copy_headers: tuple[str, ...] = (), proto: str = "http") -> ForwardAuthenticator:
    config = ForwardAuthConfig(url="http://127.0.0.1:9/auth", copy_headers=copy_headers)
    built = build_authenticator(AuthConfig(type="forward", forward=config), proto=proto)
    assert isinstance(built, ForwardAuthenticator)
    return built


def test_the_client_headers_go_minus_hop_by_hop_and_handshake() -> None:
    request = upgrade(
        "/chat?room=1&token=t",
        ("Authorization", "Bearer abc"),
        ("Cookie", "session=s"),
        ("Sec-WebSocket-Protocol", "chat"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eA=="),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Trace", "t-1"),
    )
    headers = forward().request_headers(request, Credentials(token=None), "10.1.2.3")
    assert headers == [
        (b"authorization", b"Bearer abc"),
        (b"cookie", b"session=s"),
        (b"x-trace", b"t-1"),
        (b"x-forwarded-method", b"GET"),
        (b"x-forwarded-uri", b"/chat?room=1&token=t"),
        (b"x-forwarded-host", b"proxy.example"),
        (b"x-forwarded-for", b"10.1.2.3"),
        (b"x-forwarded-proto", b"http"),
    ]


def test_x_forwarded_proto_is_the_listeners_scheme_not_the_clients() -> None:
    request = upgrade("/", ("X-Forwarded-Proto", "http"))
    headers = forward(proto="https").request_headers(request, Credentials(None), "1.1.1.1")
    assert [v for n, v in headers if n == b"x-forwarded-proto"] == [b"https"]


def test_headers_named_in_connection_are_not_sent() -> None:
    request = upgrade("/", ("Connection", "Upgrade, X-Hop"), ("X-Hop", "1"), ("X-Keep", "2"))
    names = [n for n, _ in forward().request_headers(request, Credentials(None), "1.1.1.1")]
    assert b"x-hop" not in names
    assert b"x-keep" in names


def test_a_subprotocol_token_is_sent_as_authorization() -> None:
    request = upgrade("/", ("Sec-WebSocket-Protocol", "chat, bearer.tok"))
    creds = find_credentials(request, ["subprotocol"], "bearer.")
    headers = forward().request_headers(request, creds, "1.1.1.1")
    assert (b"authorization", b"Bearer tok") in headers
    assert not any(n.startswith(b"sec-websocket") for n, _ in headers)


def test_the_clients_own_authorization_is_not_overridden() -> None:
    request = upgrade(
        "/", ("Authorization", "Basic dTpw"), ("Sec-WebSocket-Protocol", "bearer.tok")
    )
    creds = find_credentials(request, ["subprotocol"], "bearer.")
    headers = forward().request_headers(request, creds, "1.1.1.1")
    assert [v for n, v in headers if n == b"authorization"] == [b"Basic dTpw"]


def test_owned_headers_are_the_subject_and_copy_headers() -> None:
    auth = forward(copy_headers=("X-User-Id", "X-Org"))
    assert auth.owned_headers == frozenset({"X-Auth-Subject", "X-User-Id", "X-Org"})
