"""Draining and reloading a real ``wsproxy run`` process with real signals.

The proxy is a subprocess (tests/integration/proxy_process.py, which kills it by PID
if it outlives the test); its backends are `websockets` servers in
this process, and its clients `websockets` clients. Readiness and progress come from
the proxy's JSON log lines and from the clients' close frames, never from a sleep.
Timing checks are lower bounds, which a loaded machine cannot break: a drain spreads
N closes over its window in N equal slots (wsproxy/core/schedule.py), one close in
each, so the k-th close seen comes no earlier than k slots after the signal.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.peers import Backend, backend, closed_by_proxy, raw_exchange
from tests.integration.proxy_process import Running, proxy_process

pytestmark = pytest.mark.anyio

#: Bound on waits for what normally takes milliseconds.
WAIT = 10.0
#: drain.spread of the spread test: 30 closes, one per 100 ms slot.
SPREAD = 3.0
REASON = re.compile(r"^(proxy|backend) draining; retry-after-ms=(\d+)$")


def write_config(path: Path, backends: Sequence[Backend], *, spread: str,
                 timeout: str = "10s") -> Path:
    """Write the config atomically (the proxy may read it at any SIGHUP)."""
    lines = [
        "listen: {host: 127.0.0.1, port: 0}",
        "admin: {host: 127.0.0.1, port: 0}",
        "backends:",
        *(f'  - {{name: {b.name}, url: "{b.url}"}}' for b in backends),
        f"drain: {{spread: {spread}, timeout: {timeout}}}",
        "logging: {level: info, format: json}",
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


@asynccontextmanager
async def running(config: Path) -> AsyncIterator[tuple[Running, str]]:
    """``wsproxy run -c config``, once it listens; its process and its ws:// URL."""
    async with proxy_process(config, config.parent) as proxy:
        [address] = proxy.addresses
        yield proxy, f"ws://{address}"


async def echoes(ws: ClientConnection, text: str = "ping?") -> bool:
    with anyio.fail_after(WAIT):
        await ws.send(text)
        return await ws.recv() == text


async def open_clients(stack: AsyncExitStack, url: str, paths: Sequence[str]
                       ) -> list[ClientConnection]:
    clients = []
    for path in paths:
        ws = await stack.enter_async_context(connect(url + path, ping_interval=None))
        assert await echoes(ws)
        clients.append(ws)
    return clients


async def test_sigterm_spreads_1001_closes_over_the_window_and_exits_0(
    tmp_path: Path,
) -> None:
    async with backend() as b, running(
        write_config(tmp_path / "wsproxy.yaml", [b], spread=f"{SPREAD}s")
    ) as (proxy, url), AsyncExitStack() as stack:
        clients = await open_clients(stack, url, [f"/{i}" for i in range(30)])
        closes: list[tuple[float, int, str]] = []

        async def watch(ws: ClientConnection) -> None:
            code, reason = await closed_by_proxy(ws, within=SPREAD + 2 * WAIT)
            closes.append((anyio.current_time(), code, reason))

        async with anyio.create_task_group() as tg:
            for ws in clients:
                tg.start_soon(watch, ws)
            signalled = anyio.current_time()
            os.kill(proxy.pid, signal.SIGTERM)
        assert await proxy.wait() == 0
        events = [line for line in await proxy.rest_of_stdout() if '"event"' in line]
        for ws in b.connections:
            with anyio.fail_after(WAIT):
                await ws.wait_closed()

    assert len(closes) == 30
    assert {code for _, code, _ in closes} == {1001}
    for _, _, reason in closes:
        match = REASON.match(reason)
        assert match is not None, reason
        assert match.group(1) == "proxy"
        assert 0 <= int(match.group(2)) <= 1000
    times = sorted(t - signalled for t, _, _ in closes)
    # Spread over the window, one per slot: the k-th close no earlier than its slot's
    # start (less the 1 ms of uvloop's clock resolution). A drain that closed all at
    # once, or in bunches, breaks this; a slow machine only makes closes later.
    slot = SPREAD / len(times)
    early = [(k, t) for k, t in enumerate(times) if t < k * slot - 0.005]
    assert not early, (early, times)
    assert {ws.close_code for ws in b.connections} == {1001}  # the replies, relayed
    assert any('"drain.closing"' in e and '"connections": 30' in e for e in events), events
    assert any('"proxy.stopped"' in e for e in events)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_second_signal_skips_the_rest_of_a_long_spread(
    tmp_path: Path, signum: signal.Signals
) -> None:
    async with backend() as b, running(
        write_config(tmp_path / "wsproxy.yaml", [b], spread="20s", timeout="25s")
    ) as (proxy, url), AsyncExitStack() as stack:
        clients = await open_clients(stack, url, [f"/{i}" for i in range(10)])
        os.kill(proxy.pid, signum)
        closing = await proxy.wait_for_event("drain.closing")
        assert closing["connections"] == 10
        assert closing["window_s"] == 20
        os.kill(proxy.pid, signum)
        with anyio.fail_after(WAIT):  # half the 20 s spread: the rest was skipped
            results = [await closed_by_proxy(ws) for ws in clients]
            status = await proxy.wait()
    assert status == 0
    assert [code for code, _ in results] == [1001] * 10


async def test_sighup_drains_a_removed_backend_and_keeps_the_other(tmp_path: Path) -> None:
    async with backend("b1") as b1, backend("b2") as b2:
        config = write_config(tmp_path / "wsproxy.yaml", [b1, b2], spread="500ms")
        async with running(config) as (proxy, url), AsyncExitStack() as stack:
            paths = [f"/c{i}" for i in range(4)]
            by_path = dict(zip(paths, await open_clients(stack, url, paths), strict=True))
            on_b1 = [by_path[p] for p, _ in b1.requests]
            on_b2 = [by_path[p] for p, _ in b2.requests]
            assert len(on_b1) == len(on_b2) == 2

            write_config(config, [b1], spread="500ms")
            os.kill(proxy.pid, signal.SIGHUP)
            reloaded = await proxy.wait_for_event("config.reloaded")
            assert reloaded["backends"] == ["b1"]
            for ws in on_b2:
                code, reason = await closed_by_proxy(ws)
                assert code == 1012
                match = REASON.match(reason)
                assert match is not None, reason
                assert match.group(1) == "backend"
            for ws in on_b1:
                assert await echoes(ws)  # untouched
            async with connect(url + "/new") as ws:
                assert await echoes(ws)
            assert b1.requests[-1][0] == "/new"
            assert len(b2.requests) == 2

            os.kill(proxy.pid, signal.SIGTERM)
            for ws in on_b1:
                assert (await closed_by_proxy(ws))[0] == 1001
            assert await proxy.wait() == 0


async def test_sighup_with_an_invalid_file_is_refused_and_the_proxy_keeps_working(
    tmp_path: Path,
) -> None:
    async with backend("b1") as b1:
        config = write_config(tmp_path / "wsproxy.yaml", [b1], spread="0s")
        async with running(config) as (proxy, url), connect(url + "/old") as old:
            assert await echoes(old)
            config.write_text(
                f'backends:\n  - {{name: b1, url: "{b1.url}"}}\nheartbeat: {{interval: soon}}\n',
                encoding="utf-8",
            )
            os.kill(proxy.pid, signal.SIGHUP)
            refused = await proxy.wait_for_event("config.reload_refused")
            assert any("heartbeat.interval" in error for error in refused["errors"]), refused
            assert await echoes(old)
            async with connect(url + "/new") as new:
                assert await echoes(new)
            port = int(url.rsplit(":", 1)[1])
            answer = await raw_exchange(port, b"GET /readyz HTTP/1.1\r\nHost: pod\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ")
            # The old config is still in force: its listener, its backend, its drain.
            os.kill(proxy.pid, signal.SIGTERM)
            assert (await closed_by_proxy(old))[0] == 1001
            assert await proxy.wait() == 0
        assert [p for p, _ in b1.requests] == ["/old", "/new"]
