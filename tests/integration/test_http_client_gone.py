"""A plain HTTP client that leaves mid-request is seen (issue 16).

Before issue 16 the relay stopped reading its client once a request was whole, so a
client that closed its socket during a long-poll went unnoticed: the backend request
stayed open until the backend answered, its connection then went back to the pool,
the access log said 200, and a SIGTERM waited the whole ``drain.timeout`` for it. An
exchange the proxy cut itself at the drain's deadline was logged ``client_gone``.

The backend is the real h11 server of http_backend.py, whose ``/gate/NAME`` notices
its connection ending while it waits (``gate.gone``); the SIGTERM test runs a real
``wsproxy run`` (proxy_process.py). Every wait is on an event with a generous ceiling;
time is checked only against the long ``drain.timeout`` the proxy must not wait for.
"""

from __future__ import annotations

import signal
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from structlog.testing import capture_logs

from tests.integration.http_backend import (
    at_eof,
    http_backend,
    http_client,
    parse_responses,
)
from tests.integration.proxy_process import proxy_process
from tests.integration.test_plain_http import plain_proxy, port_of, send_request_head

pytestmark = pytest.mark.anyio

#: A ceiling on waits that normally take milliseconds.
CEILING = 20.0


async def logged(logs: Sequence[MutableMapping[str, Any]], event: str = "http.request"
                 ) -> MutableMapping[str, Any]:
    """The first *event* record in *logs* (captured), once there (bounded)."""
    with anyio.fail_after(CEILING):
        while True:
            found = [e for e in logs if e["event"] == event]
            if found:
                return found[0]
            await anyio.sleep(0.01)  # the record is written by the proxy's callbacks


async def long_poll(port: int, name: str) -> SocketStream:
    """A connection that sent ``GET /gate/NAME`` (a long-poll the backend parks)."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    await stream.send(f"GET /gate/{name} HTTP/1.1\r\nHost: app.example\r\n\r\n".encode())
    return stream


async def test_a_client_that_closes_mid_long_poll_ends_the_backend_request() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        gate = b.gate("poll")
        with capture_logs() as logs:
            stream = await long_poll(port_of(ctx), "poll")
            with anyio.fail_after(CEILING):
                await gate.arrived.wait()
            await stream.aclose()
            with anyio.fail_after(CEILING):
                await gate.gone.wait()  # the backend saw its connection end
            line = await logged(logs)
        assert ctx.http.active == 0
    assert line["error"] == "client_gone"
    assert line["status"] is None
    assert line["backend"] == "b1"


async def test_a_client_that_half_closes_after_its_request_is_taken_as_gone() -> None:
    # HTTP/1.1 allows it, hardly any client does it; nginx takes it as gone too.
    async with http_backend() as b, plain_proxy([b]) as ctx:
        gate = b.gate("half")
        with capture_logs() as logs:
            stream = await long_poll(port_of(ctx), "half")
            with anyio.fail_after(CEILING):
                await gate.arrived.wait()
            await stream.send_eof()
            assert await at_eof(stream, CEILING)  # closed, no answer
            with anyio.fail_after(CEILING):
                await gate.gone.wait()
            line = await logged(logs)
            await stream.aclose()
    assert (line["status"], line["error"]) == (None, "client_gone")


async def test_a_gone_clients_backend_connection_is_not_pooled() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        gate = b.gate("pooled")
        with capture_logs() as logs:
            stream = await long_poll(port_of(ctx), "pooled")
            with anyio.fail_after(CEILING):
                await gate.arrived.wait()
            await stream.aclose()
            await logged(logs)  # the proxy has seen the client go
        gate.release.set()  # what a backend that did not notice would answer: no one hears
        async with http_client(port_of(ctx)) as client:
            reply = await client.request("GET", "/hello/next")
    assert reply.status == 200
    assert len(b.connections) == 2  # the next request had a fresh backend connection
    assert [r.target for r in b.requests] == ["/gate/pooled", "/hello/next"]


async def test_a_request_cut_by_response_timeout_is_logged_as_the_timeout() -> None:
    async with http_backend() as b, plain_proxy(
        [b], http={"response_timeout": "300ms"}
    ) as ctx, http_client(port_of(ctx)) as client:
        with capture_logs() as logs:
            reply = await client.request("GET", "/gate/slow")
            line = await logged(logs)
        b.gate("slow").release.set()
    assert reply.status == 504
    assert (line["status"], line["error"]) == (504, "response_timeout")


async def test_a_request_cut_at_the_drain_timeout_is_logged_as_the_proxys() -> None:
    async with http_backend() as b, plain_proxy(
        [b], drain={"timeout": "500ms", "spread": "0s"}
    ) as ctx, http_client(port_of(ctx)) as client:
        gate = b.gate("held")
        with capture_logs() as logs:
            await send_request_head(client, "GET", "/gate/held")
            with anyio.fail_after(CEILING):
                await gate.arrived.wait()
            drain = ctx.drain(spread=0)
            with anyio.fail_after(CEILING):
                await drain.done.wait()
            assert await client.closed_by_server()
            line = await logged(logs)
        gate.release.set()
    assert (line["status"], line["error"]) == (None, "drain_timeout")


async def test_sigterm_does_not_wait_for_long_polls_whose_clients_left(tmp_path: Path) -> None:
    timeout, spread, polls = 15.0, 1.0, 4
    async with http_backend() as b:
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "backends": [{"name": b.name, "url": b.url}],
            "plain_http": "proxy",
            "drain": {"spread": f"{spread}s", "timeout": f"{timeout}s", "delay": "0s"},
            "logging": {"level": "info", "format": "json"},
        }
        async with proxy_process(config, tmp_path) as proxy:
            streams = [await long_poll(proxy.port, f"p{i}") for i in range(polls)]
            with anyio.fail_after(CEILING):
                for i in range(polls):
                    await b.gate(f"p{i}").arrived.wait()
            # Half leave before the signal, half during the drain.
            for stream in streams[: polls // 2]:
                await stream.aclose()
            started = anyio.current_time()
            proxy.signal(signal.SIGTERM)
            for stream in streams[polls // 2 :]:
                await stream.aclose()
            assert await proxy.wait(timeout + 10) == 0
            elapsed = anyio.current_time() - started
            gone = [r for r in proxy.records if r.get("event") == "http.request"]
        for i in range(polls):
            b.gate(f"p{i}").release.set()
    assert elapsed < timeout  # spread + a moment, not the drain's timeout
    assert len(gone) == polls
    assert {(r["status"], r["error"]) for r in gone} == {(None, "client_gone")}


async def test_a_client_still_there_keeps_its_long_poll_and_its_answer() -> None:
    # Reading the client during the exchange changes nothing for one that stays.
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        gate = b.gate("stay")
        await send_request_head(client, "GET", "/gate/stay")
        with anyio.fail_after(CEILING):
            await gate.arrived.wait()
        gate.release.set()
        reply = await client.response_head()
        reply.body = await client.read_body()
        again = await client.request("GET", "/hello/again")
    assert (reply.status, reply.body) == (200, b"released /gate/stay\n")
    assert again.status == 200
    assert len(b.connections) == 1  # pooled as before


async def test_a_pipelined_request_behind_a_long_poll_is_still_answered() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        gate = b.gate("first")
        async with await anyio.connect_tcp("127.0.0.1", port_of(ctx)) as stream:
            await stream.send(b"GET /gate/first HTTP/1.1\r\nHost: a\r\n\r\n"
                              b"GET /hello/second HTTP/1.1\r\nHost: a\r\n\r\n")
            with anyio.fail_after(CEILING):
                await gate.arrived.wait()
            gate.release.set()
            data = b""
            with anyio.fail_after(CEILING):
                while b"hello /hello/second\n" not in data:
                    data += await stream.receive()
    replies = parse_responses(data, ["GET", "GET"], closed=False)
    assert [(r.status, r.body) for r in replies] == [
        (200, b"released /gate/first\n"), (200, b"hello /hello/second\n")]
