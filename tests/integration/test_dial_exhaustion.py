"""Out of file descriptors while dialling a backend (issue 14): the proxy's own trouble.

A ``wsproxy run`` subprocess (test_exhaustion.py's launcher: ``RLIMIT_NOFILE`` 64, so
the test process's own limit is untouched) is filled until exactly one descriptor is
free: relayed connections take two each, one silent client socket fixes the parity.
The next client is accepted on that last descriptor, and dialling its backend then
fails with EMFILE. That must be answered 503 + Retry-After (an upgrade and a plain HTTP
request alike), be counted as ``out_of_descriptors``, and blame no backend: no
``upstream.failed`` line, no other backend tried. Before issue 14 it was a 502
"backend unreachable" with a warning naming a healthy backend.

Waits are on replies and log lines; the proxy's accepts, which have neither, are seen
in ``/proc/PID/fd`` by a bounded poll.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.integration.http_backend import http_backend, http_client
from tests.integration.peers import raw_exchange
from tests.integration.proxy_process import Running
from tests.integration.test_exhaustion import (
    NOFILE,
    WAIT,
    abort_all,
    descriptors,
    echoes,
    limited_proxy,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID"),
]


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll (bounded) for what has no event: the proxy's accepts and closes."""
    with anyio.fail_after(WAIT):
        while not predicate():  # noqa: ASYNC110 - /proc has nothing to wait on
            await anyio.sleep(0.01)
    assert predicate(), what


def free(proxy: Running) -> int:
    return NOFILE - descriptors(proxy.pid)


async def failures(admin: str) -> dict[str, float]:
    """wsproxy_handshake_failures_total by reason, from the admin's GET /metrics."""
    host, port = admin.rsplit(":", 1)
    assert host == "127.0.0.1"
    answer = await raw_exchange(
        int(port), b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "wsproxy_handshake_failures_total"
    }


@dataclass
class Limited:
    """A ``wsproxy run`` with few descriptors, listening, and the clients it holds."""

    proxy: Running
    address: str  # host:port of the proxy's listener
    admin: str  # host:port of its admin listener
    clients: list[ClientConnection]

    @property
    def url(self) -> str:
        return f"ws://{self.address}/"

    async def fill(self, leave: int) -> None:
        """Hold upgraded clients until at most *leave* descriptors are free."""
        for _ in range(NOFILE):
            if free(self.proxy) <= leave:
                return
            try:
                self.clients.append(await connect(self.url, open_timeout=WAIT))
            except InvalidStatus as exc:
                # A health check took a descriptor between the count and this dial: the
                # table is as full as it gets (the proxy's own trouble, not the backend's).
                if exc.response.status_code != 503:
                    raise
                return

    async def stop(self) -> int:
        """SIGTERM, and the exit status."""
        os.kill(self.proxy.pid, signal.SIGTERM)
        with anyio.fail_after(WAIT):
            return await self.proxy.process.wait()


async def limited(
    stack: AsyncExitStack, tmp_path: Path, loop: str, backends: str, *lines: str
) -> Limited:
    """Start a descriptor-limited proxy in front of *backends* (a YAML flow list), with
    more config *lines*, and wait until both its listeners are up."""
    config = (
        "listen: {host: 127.0.0.1, port: 0}\n"
        "admin: {host: 127.0.0.1, port: 0}\n"
        f"backends: {backends}\n"
        "logging: {level: info, format: json}\n"
        "drain: {spread: 0s, timeout: 5s}\n" + "".join(f"{line}\n" for line in lines)
    )
    proxy = await stack.enter_async_context(limited_proxy(config, tmp_path, loop))
    clients: list[ClientConnection] = []
    stack.callback(abort_all, clients)
    await proxy.wait_for(
        lambda: proxy.count("proxy.listening") == 1 and proxy.count("admin.listening") == 1,
        "proxy.listening and admin.listening",
    )
    [listening] = [r for r in proxy.records if r.get("event") == "proxy.listening"]
    [admin] = [r["address"] for r in proxy.records if r.get("event") == "admin.listening"]
    return Limited(proxy, listening["addresses"][0], admin, clients)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_out_of_descriptors_while_dialling_is_503_and_blames_no_backend(
    tmp_path: Path, loop: str
) -> None:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(http_backend("first"))
        second = await stack.enter_async_context(http_backend("second"))
        started = await limited(
            stack, tmp_path, loop,
            f'[{{name: first, url: "{first.url}"}}, {{name: second, url: "{second.url}"}}]',
            "balance: round_robin",
            "plain_http: proxy",
            "limits: {handshake_timeout: 60s}",  # the silent socket stays until the end
        )
        proxy, admin, clients, url = started.proxy, started.admin, started.clients, started.url
        host, port = started.address.rsplit(":", 1)

        # Leave exactly one descriptor free: the next accept takes it, its dial finds none.
        if free(proxy) % 2 == 0:
            before = free(proxy)
            await stack.enter_async_context(await anyio.connect_tcp(host, int(port)))
            await until(lambda: free(proxy) == before - 1, "the silent socket accepted")
        await started.fill(leave=1)
        assert free(proxy) == 1, descriptors(proxy.pid)
        held = len(clients)
        assert held >= 10, held

        # An upgrade: 503 + Retry-After, not 502, and the backends never heard of it.
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, open_timeout=WAIT)
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers.get("Retry-After") == "5"
        await until(lambda: free(proxy) == 1, "the refused client's socket closed")

        # A plain HTTP request: the same.
        async with http_client(int(port)) as client:
            reply = await client.request("GET", "/hello")
        assert reply.status == 503
        assert reply.get("retry-after") == "5"
        await until(lambda: free(proxy) == 1, "the plain client's socket closed")
        assert len(first.requests) + len(second.requests) == held  # the held upgrades only

        # Descriptors back (the admin listener, too, needs one to answer a scrape).
        for ws in clients[:2]:
            await ws.close()
        await until(lambda: free(proxy) >= 5, "two connections closed")
        # Counted as the proxy's trouble; logged without naming a backend.
        counted: dict[str, float] = {}
        with anyio.fail_after(WAIT):
            while counted.get("out_of_descriptors") != 1.0:  # booked as the socket closes
                counted = await failures(admin)
        assert "backend_unreachable" not in counted, counted
        assert proxy.count("upstream.failed") == 0, [
            r for r in proxy.records if r.get("event") == "upstream.failed"
        ]
        # The log thread writes a line up to BATCH_WAIT after it happened (log_buffer).
        await proxy.wait_for_line(r'"event": "http\.request"', WAIT)
        [rejected] = [r for r in proxy.records if r.get("event") == "connection.rejected"]
        assert rejected["status"] == 503
        [request] = [r for r in proxy.records if r.get("event") == "http.request"]
        assert (request["status"], request["error"]) == (503, "out_of_descriptors")

        # Both backends serve again, one each (round robin): no one was marked down.
        served = (first.websockets, second.websockets)
        for i in range(2):
            ws = await connect(url, open_timeout=WAIT)
            clients.append(ws)
            assert await echoes(ws, f"after {i}")
        assert (first.websockets, second.websockets) == (served[0] + 1, served[1] + 1)
        status = await started.stop()
    assert status == 0
    text = proxy.stderr_so_far
    assert "Traceback" not in text, text[-2000:]
    assert not [r for r in proxy.records if "exception" in r], json.dumps(proxy.records)[-2000:]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_the_admin_listener_out_of_descriptors_backs_off_and_serves_again(
    tmp_path: Path, loop: str
) -> None:
    """An admin client arriving when no descriptor is left used to end the proxy:
    anyio's serve() gave up on the failed accept, and the task group with it."""
    async with AsyncExitStack() as stack:
        b = await stack.enter_async_context(http_backend("only"))
        started = await limited(stack, tmp_path, loop, f'[{{name: only, url: "{b.url}"}}]')
        proxy, admin, clients = started.proxy, started.admin, started.clients
        admin_host, admin_port = admin.rsplit(":", 1)
        await started.fill(leave=2)
        # Admin clients until one finds no descriptor left for it.
        silent = [await stack.enter_async_context(
            await anyio.connect_tcp(admin_host, int(admin_port))) for _ in range(4)]
        await proxy.wait_for(lambda: proxy.count("accept.backoff") >= 1, "accept.backoff")
        for stream in silent:
            await stream.aclose()
        for ws in clients[:2]:
            await ws.close()
        await until(lambda: free(proxy) >= 5, "descriptors back")
        assert await failures(admin) is not None  # the admin answers again
        assert proxy.process.returncode is None
        status = await started.stop()
    assert status == 0
    text = proxy.stderr_so_far
    assert "Traceback" not in text, text[-2000:]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_a_health_check_without_a_descriptor_is_not_held_against_the_backend(
    tmp_path: Path, loop: str
) -> None:
    async with AsyncExitStack() as stack:
        b = await stack.enter_async_context(http_backend("only"))
        started = await limited(
            stack, tmp_path, loop, f'[{{name: only, url: "{b.url}"}}]',
            # A path the backend answers 200: a check that does get a descriptor passes.
            "health_check: {path: /hello, interval: 2s, timeout: 2s, unhealthy_after: 1}",
            "limits: {handshake_timeout: 60s}",  # the silent sockets stay until the end
        )
        proxy, clients = started.proxy, started.clients
        host, port = started.address.rsplit(":", 1)
        await started.fill(leave=2)
        # Silent clients take the last descriptors (the spare ones wait in the backlog).
        for _ in range(4):
            await stack.enter_async_context(await anyio.connect_tcp(host, int(port)))
        await proxy.wait_for(
            lambda: proxy.count("health_check.not_run") + proxy.count("health_check.failed") >= 1,
            "a health check with no descriptor",
        )
        assert proxy.count("health_check.failed") == 0, proxy.events("health_check.failed")
        assert proxy.count("backend.health") == 0  # still healthy: never marked down
        for ws in clients[:2]:
            await ws.close()
        status = await started.stop()
    assert status == 0
