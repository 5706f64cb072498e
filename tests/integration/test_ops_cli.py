"""The ops commands (``wsproxy drain | undrain | status | connections``) as subprocesses
against a proxy running in this event loop on 127.0.0.1 port 0.

tests/integration/proxy_process.py's ``run_cli_async`` kills the child if a test is
cancelled or times out.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from subprocess import CompletedProcess

import anyio
import pytest
from anyio.abc import SocketStream
from websockets.asyncio.client import ClientConnection

from tests.integration.peers import Backend, make_config, running_proxy
from tests.integration.proxy_process import run_cli_async
from tests.integration.test_admin import (
    TOKEN,
    WAIT,
    admin,
    backend_of,
    closed_with,
    open_clients,
    two_backends,
)
from wsproxy.supervisor import ProxyContext

# Up to four `wsproxy` CLI processes a test, each a Python start: seconds each on a
# loaded machine (22 s in all beside a parallel run), too close to the suite's 30 s.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

async def wsproxy(*args: str, env_token: str | None = None) -> CompletedProcess[bytes]:
    """Run ``wsproxy ARGS``; the token comes from *env_token* or the arguments only."""
    env = {k: v for k, v in os.environ.items() if k != "WSPROXY_ADMIN_TOKEN"}
    if env_token is not None:
        env["WSPROXY_ADMIN_TOKEN"] = env_token
    return await run_cli_async(*args, env=env, bound=3 * WAIT)


def admin_url(ctx: ProxyContext) -> str:
    assert ctx.admin_address is not None
    host, port = ctx.admin_address
    return f"http://{host}:{port}"


def out(result: CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


@asynccontextmanager
async def proxy_with_clients(count: int) -> AsyncIterator[
        tuple[ProxyContext, tuple[Backend, Backend], list[ClientConnection]]]:
    """Two backends, a token, and *count* clients spread round robin."""
    async with (
        two_backends() as (b1, b2),
        running_proxy(make_config([b1, b2], balance="round_robin",
                                  admin={"token": TOKEN})) as ctx,
        AsyncExitStack() as stack,
    ):
        clients = await open_clients(ctx, count, stack)
        yield ctx, (b1, b2), clients


# The commands --------------------------------------------------------------------------


async def test_status_prints_a_table_of_both_backends() -> None:
    async with proxy_with_clients(3) as (ctx, (b1, b2), clients):
        names = [await backend_of(ws) for ws in clients]
        result = await wsproxy("status", "--admin", admin_url(ctx), "--token", TOKEN)
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert lines[0].split() == ["BACKEND", "STATE", "ACTIVE", "URL"]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    for b in (b1, b2):
        assert rows[b.name] == [b.name, "healthy", str(names.count(b.name)), b.url]
    assert "proxy: ready, 3 connections" in out(result)


async def test_connections_lists_them_and_top_by_traffic() -> None:
    async with proxy_with_clients(3) as (ctx, (b1, b2), clients):
        ids = {h["X-Request-Id"] for b in (b1, b2) for _, h in b.requests}
        busy = clients[2]
        for _ in range(3):
            await busy.send("traffic")
            await busy.recv()
        rows = (await admin(ctx, "GET", "/connections?sort=traffic&top=1", token=TOKEN)
                ).json()["connections"]
        every = await wsproxy("connections", "--admin", admin_url(ctx), env_token=TOKEN)
        top = await wsproxy("connections", "--admin", admin_url(ctx), "--top", "1",
                            "--sort", "traffic", env_token=TOKEN)
    assert every.returncode == 0, err(every)
    lines = out(every).splitlines()
    assert lines[0].split()[:4] == ["ID", "CLIENT", "BACKEND", "SUBJECT"]
    assert {line.split()[0] for line in lines[1:]} == ids
    assert top.returncode == 0, err(top)
    [row] = out(top).splitlines()[1:]
    assert row.split()[:3] == [rows[0]["id"], "127.0.0.1", rows[0]["backend"]]
    assert row.split()[5] == "4/4"  # "who" and three "traffic", each way


async def test_drain_backend_wait_closes_its_clients_with_1012_then_undrain() -> None:
    async with proxy_with_clients(4) as (ctx, _, clients):
        names = [await backend_of(ws) for ws in clients]
        url = admin_url(ctx)
        result = await wsproxy("drain", "--backend", "b1", "--spread", "1s", "--wait",
                               "--admin", url, "--token", TOKEN)
        assert result.returncode == 0, err(result)
        assert out(result).strip() == "drained backend b1: 2 connections closed"
        for ws, name in zip(clients, names, strict=True):
            if name == "b1":
                assert await closed_with(ws) == 1012
            else:
                assert await backend_of(ws) == "b2"
        status = await wsproxy("status", "--admin", url, "--token", TOKEN)
        assert ["b1", "draining", "0"] in [line.split()[:3] for line in out(status).splitlines()]

        undrain = await wsproxy("undrain", "--backend", "b1", "--admin", url, "--token", TOKEN)
        assert undrain.returncode == 0, err(undrain)
        assert out(undrain).strip() == "backend b1: drain ended"
        rows = (await admin(ctx, "GET", "/backends", token=TOKEN)).json()["backends"]
        assert {r["name"]: r["draining"] for r in rows} == {"b1": False, "b2": False}


async def test_drain_and_undrain_the_proxy_with_the_address_from_the_config(
    tmp_path: Path,
) -> None:
    async with proxy_with_clients(0) as (ctx, (b1, _), _clients):
        assert ctx.admin_address is not None
        config = tmp_path / "wsproxy.yaml"
        config.write_text(json.dumps({
            "admin": {"host": "127.0.0.1", "port": ctx.admin_address[1], "token": TOKEN},
            "backends": [{"name": b1.name, "url": b1.url}],
        }))
        drain = await wsproxy("drain", "--spread", "0s", "-c", str(config), env_token=TOKEN)
        assert drain.returncode == 0, err(drain)
        assert out(drain).strip() == "draining the proxy over 0.0s"
        assert not ctx.ready
        status = await wsproxy("status", "-c", str(config), env_token=TOKEN)
        assert "proxy: draining, 0 connections" in out(status)
        undrain = await wsproxy("undrain", "-c", str(config), env_token=TOKEN)
        assert undrain.returncode == 0, err(undrain)
        assert out(undrain).strip() == "the proxy: drain ended"
        assert ctx.ready
        empty = await wsproxy("connections", "-c", str(config), env_token=TOKEN)
        assert out(empty).strip() == "no connections"


# Errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["wrong", None], ids=["wrong", "missing"])
async def test_a_bad_token_is_one_clear_line_and_exit_1(token: str | None) -> None:
    async with proxy_with_clients(0) as (ctx, _, _clients):
        args = ["--token", token] if token else []
        for command in (["status"], ["drain", "--spread", "1s"], ["connections"]):
            result = await wsproxy(*command, "--admin", admin_url(ctx), *args)
            assert result.returncode == 1, command
            assert out(result) == ""
            [line] = err(result).splitlines()
            assert line.startswith("wsproxy: ")
            assert "401" in line
            assert "token" in line.lower()
            assert "Traceback" not in line
        assert ctx.ready  # nothing was drained


async def test_no_proxy_at_the_url_is_exit_1() -> None:
    # A bound socket that never listens: the port is ours, and connecting is refused.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        for command in (["status"], ["undrain"], ["drain", "--wait"], ["connections"]):
            result = await wsproxy(*command, "--admin", url)
            assert result.returncode == 1, command
            [line] = err(result).splitlines()
            assert line.startswith(f"wsproxy: no proxy answering at {url}")


async def test_a_bad_spread_is_exit_2_and_drains_nothing() -> None:
    async with proxy_with_clients(0) as (ctx, _, _clients):
        for spread in ("soon", "-1s", "10 fortnights"):  # "=" keeps "-1s" a value
            result = await wsproxy("drain", f"--spread={spread}", "--admin", admin_url(ctx),
                                   "--token", TOKEN)
            assert result.returncode == 2, spread
            [line] = err(result).splitlines()
            assert line.startswith("wsproxy: --spread: ")
        assert ctx.ready
        assert not ctx.drains


async def test_a_server_that_is_not_wsproxy_is_exit_1() -> None:
    page = b"<html>not wsproxy</html>"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
              + str(len(page)).encode() + b"\r\nConnection: close\r\n\r\n" + page)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            await stream.send(answer)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:  # serve() does not close it
        tg.start_soon(listener.serve, handle)
        result = await wsproxy("status", "--admin", f"http://127.0.0.1:{port}")
        tg.cancel_scope.cancel()
    assert result.returncode == 1, err(result)
    assert "--spread" not in err(result)
