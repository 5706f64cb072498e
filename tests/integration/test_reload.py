"""A reload against the config's rule (wsproxy.config, "When a value is read").

What runs for a while keeps the config it started with: an open connection (WebSocket
or plain HTTP, and one that goes from one to the other), a drain in progress. Only
what starts after the reload obeys the new file. Each test reloads in process
(``ctx.apply_config``, what SIGHUP and ``POST /reload`` call after reading the file)
and shows both sides: the connection opened before keeps its settings, a new one gets
the new ones.

Every wait is on an event (a close, an answer), bounded; the time-based settings are
short for the side that must trip them and long for the side that must not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from tests.helpers import FrameReader, build_raw
from tests.integration.http_backend import http_backend, http_client
from tests.integration.peers import (
    backend,
    closed_by_proxy,
    make_config,
    running_proxy,
    upgrade_request,
)
from wsproxy.core import frames as fr
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

WAIT = 10.0
BIG = "x" * 4096
KEY = "reload-api-key-0123456789abcdef"


def url_of(ctx: ProxyContext) -> str:
    host, port = ctx.addresses[0]
    return f"ws://{host}:{port}"


async def echoes(ws: Any, text: str = "still here") -> bool:
    with anyio.fail_after(WAIT):
        await ws.send(text)
        return bool(await ws.recv() == text)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, subject: ci}}\n")
    return path


async def test_a_lower_max_message_size_spares_open_connections_not_new_ones() -> None:
    async with backend("b1") as b1, running_proxy(make_config([b1])) as ctx, \
            connect(url_of(ctx), compression=None) as old:
        assert await echoes(old)
        ctx.apply_config(make_config([b1], limits={"max_message_size": "1KiB"}))
        assert await echoes(old, BIG)  # accepted under the old file: 1 MiB
        async with connect(url_of(ctx), compression=None) as new:
            assert await echoes(new)
            await new.send(BIG)
            assert (await closed_by_proxy(new))[0] == 1009
        assert await echoes(old, BIG)


async def test_the_age_limit_close_keeps_the_connections_code_and_hint() -> None:
    """The age limit, its close code and its reconnect hint are the connection's."""
    calm = {"interval": "200ms", "timeout": "20s"}
    async with backend("b1") as b1:
        first = make_config([b1], heartbeat=calm, limits={"max_connection_age": "1s"},
                            drain={"reconnect_hint": False})
        async with running_proxy(first) as ctx, connect(url_of(ctx)) as old:
            assert await echoes(old)
            ctx.apply_config(make_config(
                [b1], heartbeat=calm, limits={"max_connection_age": "60s"},
                drain={"reconnect_hint": True, "backend_close_code": 4000},
            ))
            async with connect(url_of(ctx)) as new:
                assert await closed_by_proxy(old) == (1012, "connection age limit")
                assert await echoes(new)  # 60 s to live


async def test_a_drain_keeps_the_drain_settings_it_started_with() -> None:
    """A reload during a drain's delay changes neither its close code nor its hint."""
    async with backend("b1") as b1, running_proxy(make_config(
        [b1], drain={"delay": "300ms", "reconnect_hint": False},
    )) as ctx, connect(url_of(ctx)) as ws:
        assert await echoes(ws)
        drain = ctx.drain(spread=0)
        ctx.apply_config(make_config(
            [b1], drain={"reconnect_hint": True, "shutdown_close_code": 4001, "spread": "0s",
                  "timeout": "1s"},
        ))
        assert await closed_by_proxy(ws) == (1001, "proxy draining")
        assert (drain.settings.reconnect_hint, drain.code) == (False, 1001)


async def test_a_keep_alive_plain_connection_keeps_its_http_limits_and_auth(
    keys_file: Path,
) -> None:
    async with http_backend() as b:
        entry = {"name": b.name, "url": b.url}
        async with running_proxy(make_config([entry], plain_http="proxy")) as ctx, \
                http_client(ctx.addresses[0][1]) as old:
            assert (await old.request("POST", "/hello/1", body=b"x" * 100)).status == 200
            ctx.apply_config(make_config(
                [entry], plain_http="proxy", http={"max_body_size": "10B"},
                auth={"type": "api_key", "api_key": {"keys_file": str(keys_file)}},
            ))
            # Accepted before the reload: no auth, 10 MiB bodies, on every request.
            assert (await old.request("POST", "/hello/2", body=b"x" * 100)).status == 200
            assert (await old.request("GET", "/hello/3")).status == 200
            async with http_client(ctx.addresses[0][1]) as new:
                assert (await new.request("GET", "/hello/4")).status == 401
            async with http_client(ctx.addresses[0][1]) as new:
                bearer = [("Authorization", f"Bearer {KEY}")]
                reply = await new.request("POST", "/hello/5", bearer, body=b"x" * 100)
                assert reply.status == 413
            assert (await old.request("GET", "/hello/6")).status == 200
        assert [r.target for r in b.requests] == ["/hello/1", "/hello/2", "/hello/3", "/hello/6"]


async def test_an_upgrade_after_plain_requests_keeps_the_connections_settings() -> None:
    """The fresh Connection a keep-alive client goes back to keeps its settings."""
    async with http_backend() as b:
        entry = {"name": b.name, "url": b.url}
        async with running_proxy(make_config([entry], plain_http="proxy")) as ctx:
            port = ctx.addresses[0][1]
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"GET /hello/1 HTTP/1.1\r\nHost: test\r\n\r\n")
                data = b""
                with anyio.fail_after(WAIT):
                    while b"hello /hello/1\n" not in data:
                        data += await stream.receive()
                ctx.apply_config(make_config(
                    [entry], plain_http="proxy", limits={"max_message_size": "1KiB"},
                ))
                await stream.send(upgrade_request("/ws"))
                data = b""
                with anyio.fail_after(WAIT):
                    while b"\r\n\r\n" not in data:
                        data += await stream.receive()
                head, rest = data.split(b"\r\n\r\n", 1)
                assert head.startswith(b"HTTP/1.1 101"), head
                reader = FrameReader()
                reader.feed(rest)
                await stream.send(build_raw(fr.BINARY, BIG.encode()))
                with anyio.fail_after(WAIT):
                    while not reader.frames:
                        reader.feed(await stream.receive())
                frame = reader.frames[0]
                assert (frame.opcode, len(frame.payload)) == (fr.BINARY, len(BIG))


async def test_restart_needed_names_the_startup_only_sections_not_the_admin_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """listen, admin.host/port, discovery and logging need a restart (and each reload
    that still differs from the startup file says so); admin.token is live."""
    async with backend("b1") as b1, running_proxy(make_config([b1])) as ctx:
        capsys.readouterr()
        ctx.apply_config(make_config([b1], admin={"token": "rotated-token-0123456789"}))
        assert "config.restart_needed" not in capsys.readouterr().out
        assert ctx.config.admin.token == "rotated-token-0123456789"
        changed = make_config([b1], logging={"level": "debug"})
        for _ in range(2):
            ctx.apply_config(changed)
            out = capsys.readouterr().out
            assert [line for line in out.splitlines() if "config.restart_needed" in line]
            assert "key=logging" in out
