"""``balance: cookie`` as pure functions (wsproxy.core.balance): the value that names a
backend, reading and taking out the proxy's cookie, the pick, the Set-Cookie, the
client's 101 carrying it, and the config keys (issue 16)."""

from __future__ import annotations

import hashlib

import h11
import pytest

from tests.helpers import FORWARDING
from wsproxy.config import BackendConfig, ConfigError, StickyCookieConfig, parse_config
from wsproxy.core.balance import (
    STICKY_DIGITS,
    BackendState,
    Balancer,
    sticky_header,
    sticky_value,
    take_sticky,
)
from wsproxy.core.handshake import RequestHead, accept_key
from wsproxy.core.http import forward_response
from wsproxy.core.upgrade import Upgrade

NAME = "wsproxy_backend"
UPGRADE = (
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: proxy.example\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Cookie: a=1; wsproxy_backend=" + sticky_value("b1").encode() + b"; b=2\r\n\r\n"
)


def request(*cookies: bytes) -> RequestHead:
    headers = [(b"host", b"proxy.example"), *((b"cookie", c) for c in cookies)]
    return RequestHead(target=b"/", host=b"proxy.example", origin=None, headers=tuple(headers))


def states(*names: str) -> list[BackendState]:
    return [BackendState(BackendConfig.from_url(name=n, url=f"ws://127.0.0.1:{8000 + i}"))
            for i, n in enumerate(names)]


def config(**sticky: object) -> StickyCookieConfig:
    raw = {"backends": [{"name": "b1", "url": "ws://127.0.0.1:1"}], "balance": "cookie",
           "sticky_cookie": sticky}
    return parse_config(raw).sticky_cookie


# The value ------------------------------------------------------------------------------


def test_value_is_a_fixed_digest_of_the_name_never_the_address() -> None:
    # Pinned: every replica, and every version of wsproxy, must compute the same value.
    expected = hashlib.sha256(b"wsproxy-backend\0b1").hexdigest()[:STICKY_DIGITS]
    assert sticky_value("b1") == expected
    assert len(expected) == 16
    assert int(expected, 16) >= 0
    discovered = "10.0.0.5:8000"  # a discovered backend is named by its address:port
    value = sticky_value(discovered)
    assert "10.0.0.5" not in value
    assert "8000" not in value
    assert len({sticky_value(n) for n in ("b1", "b2", discovered, "10.0.0.6:8000")}) == 4


# Reading and taking out the cookie ------------------------------------------------------


def test_take_sticky_keeps_every_other_cookie_byte_for_byte() -> None:
    value = sticky_value("b1")
    req = request(b"a=1;  b=\"x y\"; " + f"{NAME}={value}".encode() + b";c=3",
                  b"theme=dark")
    stripped, values = take_sticky(req, NAME)
    assert values == (value,)
    assert stripped.headers == (
        (b"host", b"proxy.example"), (b"cookie", b"a=1;  b=\"x y\";c=3"),
        (b"cookie", b"theme=dark"),
    )
    assert stripped.target == req.target


@pytest.mark.parametrize(
    ("cookies", "values", "left"),
    [
        ((b"wsproxy_backend=abc",), ("abc",), ()),  # a header with only ours goes away
        ((b'wsproxy_backend="abc"',), ("abc",), ()),  # RFC 6265 quotes
        ((b"wsproxy_backend=x; a=1", b"wsproxy_backend=y"), ("x", "y"), (b"a=1",)),
        ((b"my_wsproxy_backend=x; wsproxy_backend_2=y",), (),
         (b"my_wsproxy_backend=x; wsproxy_backend_2=y",)),  # names that merely contain ours
        ((b"wsproxy_backend=",), ("",), ()),
    ],
)
def test_take_sticky_cases(cookies: tuple[bytes, ...], values: tuple[str, ...],
                           left: tuple[bytes, ...]) -> None:
    stripped, found = take_sticky(request(*cookies), NAME)
    assert found == values
    assert [v for k, v in stripped.headers if k == b"cookie"] == list(left)


def test_without_the_cookie_the_request_is_the_same_object() -> None:
    req = request(b"a=1")
    assert take_sticky(req, NAME) == (req, ())


# The pick ------------------------------------------------------------------------------


def test_round_robin_underneath_alternates_but_the_cookie_holds() -> None:
    balancer = Balancer("cookie", states("b1", "b2"))
    assert {balancer.candidates()[0].name for _ in range(4)} == {"b1", "b2"}
    for name in ("b1", "b2"):
        for _ in range(10):
            picked = balancer.candidates(sticky=(sticky_value(name),))
            assert next(b.name for b in picked) == name
            assert len(picked) == 2  # the other stays as the fallback


def test_the_cookie_beats_least_connections() -> None:
    b1, b2 = states("b1", "b2")
    b1.active = 100
    balancer = Balancer("cookie", [b1, b2])
    assert balancer.candidates(sticky=(sticky_value("b1"),))[0] is b1
    assert balancer.candidates()[0] is b2


@pytest.mark.parametrize("sticky", [("garbage",), ("",), (sticky_value("gone"),), ()])
def test_an_unknown_or_stale_value_is_ignored(sticky: tuple[str, ...]) -> None:
    b1, b2 = states("b1", "b2")
    b1.active = 1
    assert Balancer("cookie", [b1, b2]).candidates(sticky=sticky)[0] is b2  # least conns


def test_the_first_value_that_names_a_usable_backend_wins() -> None:
    balancer = Balancer("cookie", states("b1", "b2"))
    picked = balancer.candidates(sticky=("stale", sticky_value("b2"), sticky_value("b1")))
    assert picked[0].name == "b2"


@pytest.mark.parametrize("flag", ["draining", "held", "removed", "unhealthy"])
def test_a_backend_out_of_rotation_gets_no_requests_of_its_sessions(flag: str) -> None:
    b1, b2 = states("b1", "b2")
    if flag == "unhealthy":
        b1.healthy = False
    else:
        setattr(b1, flag, True)
    balancer = Balancer("cookie", [b1, b2])
    for _ in range(4):
        assert [b.name for b in balancer.candidates(sticky=(sticky_value("b1"),))] == ["b2"]


def test_other_policies_ignore_the_cookie() -> None:
    balancer = Balancer("round_robin", states("b1", "b2"))
    firsts = {balancer.candidates(sticky=(sticky_value("b1"),))[0].name for _ in range(4)}
    assert firsts == {"b1", "b2"}


# The Set-Cookie --------------------------------------------------------------------------


def test_no_set_cookie_when_the_cookie_named_the_backend_that_answered() -> None:
    cfg = StickyCookieConfig()
    assert sticky_header(cfg, "b1", ("x", sticky_value("b1")), https=False) == ()
    [(name, value)] = sticky_header(cfg, "b1", (sticky_value("b2"),), https=False)
    assert name == b"Set-Cookie"
    assert value == f"wsproxy_backend={sticky_value('b1')}; Path=/; HttpOnly; " \
                    f"SameSite=Lax".encode()


@pytest.mark.parametrize(
    ("secure", "https", "flag"),
    [("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False)],
)
def test_secure_auto_follows_the_listener(secure: object, https: bool, flag: bool) -> None:
    [(_, value)] = sticky_header(config(secure=secure), "b1", (), https=https)
    assert value.endswith(b"; Secure") is flag


def test_name_path_and_samesite_are_configurable() -> None:
    cfg = config(name="route", path="/socket.io", samesite="none", secure=True)
    [(_, value)] = sticky_header(cfg, "b2", (), https=False)
    assert value == f"route={sticky_value('b2')}; Path=/socket.io; HttpOnly; " \
                    f"SameSite=None; Secure".encode()


def test_a_plain_answer_gets_the_header_once() -> None:
    response = h11.Response(status_code=200, headers=[("Content-Length", "0"),
                                                      ("Set-Cookie", "app=1")])
    extra = sticky_header(StickyCookieConfig(), "b1", (), https=False)
    out = forward_response(response, close=False, extra=extra)
    cookies = [bytes(v) for k, v in out.headers if k == b"set-cookie"]
    assert cookies == [b"app=1", extra[0][1]]
    info = forward_response(h11.InformationalResponse(status_code=103, headers=[]),
                            close=False, extra=extra)
    assert not any(k == b"set-cookie" for k, _ in info.headers)  # only the final answer


def test_the_clients_101_carries_the_set_cookie() -> None:
    upgrade = Upgrade(max_request_head=1 << 14, plain_http=False)
    upgrade.receive_request(UPGRADE)
    assert upgrade.request is not None
    stripped, values = take_sticky(upgrade.request, NAME)
    assert values == (sticky_value("b1"),)
    upgrade.request = stripped
    extra = sticky_header(StickyCookieConfig(), "b2", values, https=False)
    sent = upgrade.connect(target="b2", authority="b2:80", path_prefix="",
                           forwarding=FORWARDING, pass_extensions=True,
                           owned_headers=frozenset(), client_headers=extra)
    assert b"wsproxy_backend" not in sent
    assert b"\r\ncookie: a=1; b=2\r\n" in sent  # the others, as they came
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
              + accept_key(upgrade.upstream_key) + b"\r\n\r\n")
    opened = upgrade.receive_response(answer)
    assert opened is not None
    _, response, _, _ = opened
    head = response.split(b"\r\n")
    assert b"Set-Cookie: " + extra[0][1] in head
    assert head.count(b"Set-Cookie: " + extra[0][1]) == 1


# The config ------------------------------------------------------------------------------


def test_config_defaults_and_balance_cookie() -> None:
    raw = {"backends": [{"name": "b1", "url": "ws://127.0.0.1:1"}], "balance": "cookie"}
    cfg = parse_config(raw)
    assert cfg.balance.policy == "cookie"
    assert cfg.sticky_cookie == StickyCookieConfig(name="wsproxy_backend", path="/",
                                                   secure=None, samesite="lax")


@pytest.mark.parametrize(
    ("sticky", "key", "words"),
    [
        ({"name": "a b"}, "sticky_cookie.name", "cookie name"),
        ({"name": "a;b"}, "sticky_cookie.name", "cookie name"),
        ({"path": "socket.io"}, "sticky_cookie.path", 'starting with "/"'),
        ({"path": "/a;b"}, "sticky_cookie.path", 'without ";"'),
        ({"secure": "yes"}, "sticky_cookie.secure", "auto, true or false"),
        ({"samesite": "loose"}, "sticky_cookie.samesite", "lax, strict, none"),
        ({"samesite": "none", "secure": False}, "sticky_cookie.samesite", "needs secure"),
        ({"domain": "x"}, "sticky_cookie.domain", ""),
    ],
)
def test_config_errors_name_the_key(sticky: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(**sticky)
    assert key in str(info.value)
    assert words in str(info.value)


def test_balance_error_names_cookie() -> None:
    with pytest.raises(ConfigError, match="cookie"):
        parse_config({"backends": [{"name": "b1", "url": "ws://127.0.0.1:1"}],
                      "balance": "sticky"})
