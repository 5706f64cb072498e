"""``balance: cookie`` through real proxies in this event loop (issue 16).

Two real backends (tests/integration/http_backend.py: plain GETs and upgrades, each
request recorded, each answer tagged X-Backend) behind ``plain_http: proxy`` and
``balance: cookie``: the way socket.io, SignalR and SockJS open a session with plain
long-polls and upgrade it later, every request of the session must reach one backend.
Round robin underneath alternates, so N requests out of N on one backend is the cookie.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from tests.integration.http_backend import (
    WAIT,
    HttpBackend,
    Reply,
    SeenRequest,
    http_backend,
    http_client,
)
from tests.integration.peers import make_config, running_proxy, upgrade_request
from tests.integration.test_admin import admin
from wsproxy.core.balance import sticky_value
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

N = 8
COOKIE = "wsproxy_backend"


@asynccontextmanager
async def two_backends() -> AsyncIterator[tuple[HttpBackend, HttpBackend]]:
    async with http_backend("b1") as b1, http_backend("b2") as b2:
        yield b1, b2


@asynccontextmanager
async def sticky_proxy(backends: Sequence[HttpBackend], **overrides: Any
                       ) -> AsyncIterator[ProxyContext]:
    config = make_config([{"name": b.name, "url": b.url} for b in backends],
                         plain_http="proxy", balance="cookie", **overrides)
    async with running_proxy(config) as ctx:
        yield ctx


def port_of(ctx: ProxyContext) -> int:
    return ctx.addresses[0][1]


async def get(ctx: ProxyContext, cookie: str | None = None, path: str = "/hello") -> Reply:
    """One GET on a connection of its own (a fresh pick each time)."""
    headers = [] if cookie is None else [("Cookie", cookie)]
    async with http_client(port_of(ctx)) as client:
        return await client.request("GET", path, headers)


def set_value(reply: Reply | dict[str, str]) -> str | None:
    """The value of the proxy's cookie in a Set-Cookie of *reply*, if any."""
    values = reply.all("set-cookie") if isinstance(reply, Reply) else (
        [reply["set-cookie"]] if "set-cookie" in reply else [])
    ours = [v for v in values if v.startswith(COOKIE + "=")]
    assert len(ours) <= 1, values
    return ours[0].split(";")[0].partition("=")[2] if ours else None


async def upgrade(ctx: ProxyContext, cookie: str | None = None) -> tuple[int, dict[str, str]]:
    """A raw upgrade: the status and headers (lower-cased) of the answer, then a close."""
    extra = "" if cookie is None else f"Cookie: {cookie}\r\n"
    async with await anyio.connect_tcp("127.0.0.1", port_of(ctx)) as stream:
        await stream.send(upgrade_request("/socket.io/?transport=websocket", extra=extra))
        data = b""
        with anyio.fail_after(WAIT):
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
    status_line, *lines = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return int(status_line.split()[1]), headers


def upgrades(backend: HttpBackend) -> list[SeenRequest]:
    return [r for r in backend.requests if r.get("upgrade")]


def cookies_seen(*backends: HttpBackend) -> list[str]:
    return [v for b in backends for r in b.requests for v in r.all("cookie")]


async def test_a_session_stays_on_the_backend_its_cookie_names() -> None:
    async with two_backends() as (b1, b2), sticky_proxy([b1, b2]) as ctx:
        # Without the cookie, the picks alternate (least connections, ties rotating).
        firsts = [await get(ctx) for _ in range(2)]
        assert sorted(r.get("x-backend") or "" for r in firsts) == ["b1", "b2"]
        for first in firsts:
            name = first.get("x-backend")
            assert name is not None
            value = set_value(first)
            assert value == sticky_value(name)  # the first answer names its backend
            [header] = first.all("set-cookie")
            assert header == f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax"  # no Secure
            assert "127.0.0.1" not in header
            assert str(b1.port) not in header
            for _ in range(N):
                reply = await get(ctx, f"sid=abc; {COOKIE}={value}; theme=dark")
                assert (reply.status, reply.get("x-backend")) == (200, name)
                assert set_value(reply) is None  # the cookie was right: not rewritten
        # On one keep-alive connection too (the polls of one client).
        value = sticky_value("b2")
        async with http_client(port_of(ctx)) as client:
            for _ in range(N):
                reply = await client.request("GET", "/hello", [("Cookie", f"{COOKIE}={value}")])
                assert reply.get("x-backend") == "b2"
        # The backends never saw the proxy's cookie; every other one came as it was sent.
        seen = cookies_seen(b1, b2)
        assert seen
        assert all(COOKIE not in c for c in seen)
        assert set(seen) == {"sid=abc; theme=dark"}
        assert sum(1 for b in (b1, b2) for r in b.requests if r.get("cookie") is None) == (
            2 + N)  # the first two, and the keep-alive ones whose only cookie was ours


async def test_the_upgrade_follows_the_cookie_of_the_polls() -> None:
    async with two_backends() as (b1, b2), sticky_proxy([b1, b2]) as ctx:
        for backend in (b1, b2, b1, b2):
            value = sticky_value(backend.name)
            status, headers = await upgrade(ctx, f"io=xyz; {COOKIE}={value}")
            assert status == 101
            assert "set-cookie" not in headers
            # The backend records a request before it answers: its 101 came after this.
            assert upgrades(backend)[-1].get("cookie") == "io=xyz"
        assert (len(upgrades(b1)), len(upgrades(b2))) == (2, 2)
        # An upgrade without the cookie (a websocket-only client) gets one in its 101.
        status, headers = await upgrade(ctx)
        assert status == 101
        assert set_value(headers) in (sticky_value("b1"), sticky_value("b2"))
        assert headers["set-cookie"].endswith("; Path=/; HttpOnly; SameSite=Lax")


@pytest.mark.parametrize("garbage", ["garbage", "", '"0123456789abcdef"', "b1", "127.0.0.1:1"])
async def test_an_unknown_value_is_ignored_and_rewritten(garbage: str) -> None:
    async with two_backends() as (b1, b2), sticky_proxy([b1, b2]) as ctx:
        names = set()
        for _ in range(4):
            reply = await get(ctx, f"{COOKIE}={garbage}")
            name = reply.get("x-backend")
            assert reply.status == 200
            assert name is not None
            names.add(name)
            assert set_value(reply) == sticky_value(name)  # rewritten, to a real one
        assert names == {"b1", "b2"}  # normal balancing
        status, headers = await upgrade(ctx, f"{COOKIE}={garbage}")
        assert status == 101
        assert set_value(headers) in {sticky_value("b1"), sticky_value("b2")}
        assert all(COOKIE not in c for c in cookies_seen(b1, b2))


async def test_a_drained_backend_gets_no_more_requests_of_its_sessions() -> None:
    async with two_backends() as (b1, b2), sticky_proxy([b1, b2]) as ctx:
        cookie = f"{COOKIE}={sticky_value('b1')}"
        assert (await get(ctx, cookie)).get("x-backend") == "b1"
        started = await admin(ctx, "POST", "/backends/b1/drain", json_body={"spread": "1s"})
        assert started.json()["draining"] is True
        served_by_b1 = len(b1.requests)
        for _ in range(N):
            reply = await get(ctx, cookie)
            assert (reply.status, reply.get("x-backend")) == (200, "b2")
            assert set_value(reply) == sticky_value("b2")  # moved, and the cookie rewritten
        status, headers = await upgrade(ctx, cookie)
        assert status == 101
        assert set_value(headers) == sticky_value("b2")
        assert len(b1.requests) == served_by_b1  # none reached the drained one
        # With the rewritten cookie, the session stays where it moved.
        reply = await get(ctx, f"{COOKIE}={sticky_value('b2')}")
        assert reply.get("x-backend") == "b2"
        assert set_value(reply) is None
        await admin(ctx, "POST", "/backends/b1/undrain", json_body={})
        reply = await get(ctx, cookie)
        assert reply.get("x-backend") == "b1"
        assert set_value(reply) is None


async def test_a_backend_gone_from_the_config_moves_its_sessions() -> None:
    async with two_backends() as (b1, b2), sticky_proxy([b1, b2]) as ctx:
        ctx.backends.set_static(ctx.config.backends[1:])  # b1 leaves (as a reload does)
        reply = await get(ctx, f"{COOKIE}={sticky_value('b1')}")
        assert reply.get("x-backend") == "b2"
        assert set_value(reply) == sticky_value("b2")
        assert not b1.requests


async def test_two_proxies_with_the_same_backends_agree() -> None:
    async with AsyncExitStack() as stack:
        b1, b2 = await stack.enter_async_context(two_backends())
        proxies = [await stack.enter_async_context(sticky_proxy([b1, b2])) for _ in range(2)]
        named: list[dict[str, str | None]] = []
        for ctx in proxies:
            replies = [await get(ctx) for _ in range(2)]
            named.append({r.get("x-backend") or "": set_value(r) for r in replies})
        assert named[0] == named[1] == {"b1": sticky_value("b1"), "b2": sticky_value("b2")}
        # A session that began on one replica stays on its backend through the other.
        for ctx in proxies:
            for name in ("b1", "b2"):
                reply = await get(ctx, f"{COOKIE}={sticky_value(name)}")
                assert reply.get("x-backend") == name
                assert set_value(reply) is None


async def test_the_cookie_keys_shape_the_set_cookie() -> None:
    sticky = {"name": "route", "path": "/socket.io", "secure": True, "samesite": "strict"}
    async with two_backends() as (b1, b2), sticky_proxy([b1, b2], sticky_cookie=sticky) as ctx:
        reply = await get(ctx)
        name = reply.get("x-backend")
        assert name is not None
        assert reply.all("set-cookie") == [
            f"route={sticky_value(name)}; Path=/socket.io; HttpOnly; SameSite=Strict; Secure"]
        for _ in range(4):
            again = await get(ctx, f"route={sticky_value(name)}; {COOKIE}=other")
            assert again.get("x-backend") == name
            assert not again.all("set-cookie")
        # Only the configured name is the proxy's: a cookie named like the default passes.
        assert set(cookies_seen(b1, b2)) == {f"{COOKIE}=other"}
