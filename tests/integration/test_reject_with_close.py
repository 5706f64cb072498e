"""``admission.reject_with: close``: a refused upgrade a browser can see.

An upgrade refused by the upgrade-rate bucket or by the connection limits gets the
proxy's own 101 and, at once, a 1013 close whose reason says ``retry-after-ms=N``;
the backend never hears of it, auth still runs first (its 401/403 unchanged), the
refused connection holds no slot of the limits, and a draining proxy still answers
503. ``reject_with: status`` (the default) keeps the 503 + Retry-After.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.helpers import FrameReader, build_raw
from tests.integration import browser
from tests.integration.peers import (
    Backend,
    backend,
    closed_by_proxy,
    make_config,
    running_proxy,
    upgrade_request,
)
from wsproxy.config import ProxyConfig
from wsproxy.core import frames as fr
from wsproxy.core.admission import LIMIT_RETRY_MAX_MS, LIMIT_RETRY_MIN_MS
from wsproxy.core.states import SessionState
from wsproxy.io.connection import Connection
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

HINT = re.compile(r"^try again later; retry-after-ms=(\d+)$")
WAIT = 10.0
KEY = "reject-with-close-key-0123456789"


class Finished:
    """Every connection the proxy finished, as it finished them (an event per one)."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.conns: list[Connection] = []
        self._changed = anyio.Event()
        original = ctx.connection_finished

        def finished(conn: Connection) -> None:
            original(conn)
            self.conns.append(conn)
            self._changed.set()
            self._changed = anyio.Event()

        ctx.connection_finished = finished  # type: ignore[method-assign]

    async def count(self, n: int) -> list[Connection]:
        with anyio.fail_after(WAIT):
            while len(self.conns) < n:
                await self._changed.wait()
        return self.conns


@asynccontextmanager
async def proxy_with(config: ProxyConfig) -> AsyncIterator[tuple[ProxyContext, str, Finished]]:
    async with running_proxy(config) as ctx:
        host, port = ctx.addresses[0]
        yield ctx, f"ws://{host}:{port}/", Finished(ctx)


def close_config(b: Backend, **overrides: Any) -> ProxyConfig:
    admission = {"reject_with": "close", **overrides.pop("admission", {})}
    return make_config([b], admission=admission, **overrides)


async def refused_hint(url: str, **kwargs: Any) -> tuple[ClientConnection, int]:
    """Upgrade (the 101 comes), then the proxy's close: 1013 and its hint, in ms."""
    async with connect(url, open_timeout=WAIT, **kwargs) as ws:
        code, reason = await closed_by_proxy(ws)
    assert code == 1013, (code, reason)
    match = HINT.match(reason)
    assert match is not None, reason
    return ws, int(match.group(1))


async def echoes(ws: ClientConnection, text: str = "ping") -> bool:
    await ws.send(text)
    return await ws.recv() == text


# Admission (the upgrade-rate bucket)…


async def test_a_refused_upgrade_gets_101_then_1013_and_the_backend_never_hears() -> None:
    # 0.25/s: a token takes 4 s to come back, far longer than the test.
    with capture_logs() as logs:
        async with backend() as b, proxy_with(
            close_config(b, admission={"max_upgrade_rate": 0.25, "burst": 1})
        ) as (ctx, url, finished):
            async with connect(url) as ws:
                assert await echoes(ws)
                refused, hint = await refused_hint(url)
                # The close handshake completed: the client saw its own close go
                # and the proxy close TCP; the proxy's session ended CLOSED.
                assert refused.close_code == 1013
                [conn] = await finished.count(1)
                assert conn.session.state is SessionState.CLOSED
                assert conn.outcome() == ("rejected", "rate_limited")
                assert await echoes(ws, "still here")
            assert len(b.requests) == 1  # only the admitted one
            assert ctx.metrics.handshake_failures["rate_limited"] == 1
            assert ctx.metrics.connections["rejected"] == 1
    assert 1 <= hint <= 4000  # the time to the next token
    [line] = [e for e in logs if e["event"] == "connection.rejected"]
    assert (line["status"], line["close_code"], line["failure"]) == (101, 1013, "rate_limited")
    assert HINT.match(line["reason"])


async def test_the_hint_is_the_time_to_the_next_token() -> None:
    # 1 token a second: refused at once after the burst, the hint is close to 1000 ms.
    async with backend() as b, proxy_with(
        close_config(b, admission={"max_upgrade_rate": 1, "burst": 1})
    ) as (_, url, _finished), connect(url):
        _, hint = await refused_hint(url)
    assert 1 <= hint <= 1000


async def test_reject_with_status_is_still_503_with_retry_after() -> None:
    async with backend() as b, proxy_with(make_config(
        [b], admission={"max_upgrade_rate": 0.25, "burst": 1, "reject_with": "status"}
    )) as (_, url, _finished), connect(url):
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url):
                pass
    assert caught.value.response.status_code == 503
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 4
    assert len(b.requests) == 1


# The connection limits…


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_ip"])
async def test_a_connection_over_a_limit_gets_1013_with_a_jittered_hint(limit: str) -> None:
    async with backend() as b, proxy_with(close_config(b, limits={limit: 1})) as (
        ctx, url, finished
    ):
        async with connect(url) as ws:
            hints = [(await refused_hint(url))[1] for _ in range(3)]
            conns = list(await finished.count(3))
            assert await echoes(ws)
        assert len(b.requests) == 1
        assert [c.outcome() for c in conns] == [("rejected", "connection_limit")] * 3
        assert ctx.metrics.handshake_failures["connection_limit"] == 3
    assert all(LIMIT_RETRY_MIN_MS <= h <= LIMIT_RETRY_MAX_MS for h in hints), hints


async def test_a_refused_connection_holds_no_slot_while_it_closes() -> None:
    # A refused client that never answers the close lingers up to heartbeat.timeout;
    # it must not keep the next client out meanwhile.
    async with backend() as b, proxy_with(close_config(
        b, limits={"max_connections": 1}, heartbeat={"timeout": "30s"}
    )) as (ctx, url, finished):
        port = ctx.addresses[0][1]
        async with connect(url) as first:
            assert await echoes(first)
            async with await anyio.connect_tcp("127.0.0.1", port) as silent:
                await silent.send(upgrade_request())
                head, frames = await read_101_and_frames(silent, 1)
                assert head.startswith(b"HTTP/1.1 101 ")
                assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head.lower()
                assert frames[0].opcode == fr.CLOSE
                assert frames[0].close[0] == 1013
                await first.close()
                await finished.count(1)  # the first one is gone; the silent one is not
                assert [c.outcome()[0] for c in finished.conns] == ["upgraded"]
                async with connect(url) as second:
                    assert await echoes(second)
                # The silent one answers at last: its handshake completes, TCP closes.
                await silent.send(build_raw(fr.CLOSE, (1000).to_bytes(2, "big")))
                with anyio.fail_after(WAIT):
                    rest = b""
                    try:
                        while True:
                            rest += await silent.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass
                assert rest == b""  # nothing after the close: no second close, no data
        conns = await finished.count(3)
        refused = [c for c in conns if c.outcome() == ("rejected", "connection_limit")]
        assert len(refused) == 1
        assert refused[0].session.state is SessionState.CLOSED
        assert len(b.requests) == 2


async def read_101_and_frames(stream: Any, n: int) -> tuple[bytes, list[Any]]:
    """The 101 head, then *n* whole frames, from a raw client *stream*."""
    data = b""
    with anyio.fail_after(WAIT):
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, rest = data.partition(b"\r\n\r\n")
        reader = FrameReader()
        reader.feed(rest)
        while len(reader.frames) < n:
            reader.feed(await stream.receive())
    return head, list(reader.frames)


# Auth runs before any 101…


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, subject: ci}}\n")
    return path


def auth_close_config(b: Backend, keys_file: Path, **overrides: Any) -> ProxyConfig:
    auth = {"type": "api_key", "api_key": {"keys_file": str(keys_file)},
            "token_from": ["header", "subprotocol"]}
    return close_config(b, auth=auth, **overrides)


@pytest.mark.parametrize("refused_by", ["admission", "limits"])
async def test_a_client_failing_auth_still_gets_401_first(keys_file: Path, refused_by: str):
    overrides: dict[str, Any] = (
        {"admission": {"max_upgrade_rate": 0.25, "burst": 1}} if refused_by == "admission"
        else {"limits": {"max_connections": 1}}
    )
    good = {"Authorization": f"Bearer {KEY}"}
    async with backend() as b, proxy_with(auth_close_config(b, keys_file, **overrides)) as (
        _, url, _finished
    ):
        async with connect(url, additional_headers=good) as ws:
            assert await echoes(ws)
            for headers in ({}, {"Authorization": "Bearer wrong-key-zzzz"}):
                with pytest.raises(InvalidStatus) as caught:
                    async with connect(url, additional_headers=headers):
                        pass
                assert caught.value.response.status_code == 401
            # A client that passes auth is refused the browser-visible way.
            _, hint = await refused_hint(url, additional_headers=good)
            assert hint >= 1
        assert len(b.requests) == 1


async def test_the_auth_subprotocol_is_echoed_in_the_proxys_101(keys_file: Path) -> None:
    # Browsers fail a handshake whose offered subprotocols all go unanswered.
    async with backend() as b, proxy_with(auth_close_config(
        b, keys_file, admission={"max_upgrade_rate": 0.25, "burst": 1}
    )) as (_, url, _finished):
        async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}):
            ws, _ = await refused_hint(url, subprotocols=[f"bearer.{KEY}"])  # type: ignore[list-item]
            assert ws.subprotocol == f"bearer.{KEY}"
            app, _ = await refused_hint(
                url, subprotocols=["chat.v2", f"bearer.{KEY}"],  # type: ignore[list-item]
            )
            assert app.subprotocol == f"bearer.{KEY}"
        assert len(b.requests) == 1


async def test_an_app_subprotocol_offer_is_answered_with_the_first_one() -> None:
    async with backend() as b, proxy_with(
        close_config(b, admission={"max_upgrade_rate": 0.25, "burst": 1})
    ) as (_, url, _finished), connect(url):
        ws, _ = await refused_hint(
            url, subprotocols=["graphql-transport-ws", "graphql-ws"],  # type: ignore[list-item]
        )
    assert ws.subprotocol == "graphql-transport-ws"
    assert len(b.requests) == 1


# A draining proxy…


async def test_a_draining_proxy_still_answers_503_and_counts_the_refusals() -> None:
    async with backend() as b, proxy_with(close_config(
        b, admission={"max_upgrade_rate": 0.25, "burst": 1}, drain={"delay": "0s"}
    )) as (ctx, url, _finished):
        assert ctx.drain_status()["refused_upgrades"] == 0
        ctx.drain(spread=0)
        for _ in range(2):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(url):
                    pass
            assert caught.value.response.status_code == 503
            assert caught.value.response.headers["Retry-After"] == "5"
        assert ctx.drain_status()["refused_upgrades"] == 2
        ctx.undrain()
        assert ctx.drain_status()["refused_upgrades"] == 2  # kept until the next drain
        async with connect(url) as ws:  # the bucket's token was never spent on them
            assert await echoes(ws)
        ctx.drain(spread=0)
        assert ctx.drain_status()["refused_upgrades"] == 0
    assert len(b.requests) == 1


# What a browser sees…

BROWSER_SCRIPT = Path(__file__).with_name("reject_close_browser.mjs")
OFFERS: list[list[str]] = [[], ["chat.v1", "chat.v2"]]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reject_with", ["close", "status"])
async def test_a_browser_sees_1013_and_the_hint_only_with_close(reject_with: str) -> None:
    browser.skip_unless_available()
    # One token, spent by the first client; the next comes back in 100 s.
    async with backend() as b, proxy_with(make_config(
        [b], admission={"max_upgrade_rate": 0.01, "burst": 1, "reject_with": reject_with}
    )) as (ctx, url, _finished), connect(url) as first:
        assert await echoes(first)
        assert ctx.admin_address is not None
        admin_host, admin_port = ctx.admin_address
        result = await browser.run_script(BROWSER_SCRIPT, [
            f"--page=http://{admin_host}:{admin_port}/healthz", f"--ws={url}",
            f"--offers={json.dumps(OFFERS)}",
        ])
        assert len(b.requests) == 1  # the browser's upgrades never reached it
    sockets = result["sockets"]
    assert [s["offers"] for s in sockets] == OFFERS
    if reject_with == "status":
        # Why the mode exists: a 503 is a bare 1006 to a page, Retry-After unseen.
        assert [(s["opened"], s["code"], s["reason"]) for s in sockets] == [
            (False, 1006, "")] * len(OFFERS)
        return
    for s in sockets:
        assert s["opened"] is True
        assert s["error_event"] is False
        assert s["code"] == 1013
        assert s["was_clean"] is True
        match = HINT.match(s["reason"])
        assert match is not None, s
        assert 1 <= int(match.group(1)) <= 100_000
    # A browser fails a handshake whose offers all go unanswered: one was selected.
    assert [s["protocol"] for s in sockets] == ["", "chat.v1"]
    assert result["page_errors"] == []
