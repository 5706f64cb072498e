"""``plain_http: proxy`` in a real ``wsproxy run`` process: large bodies, memory, SIGTERM.

The proxy is a subprocess (tests/integration/proxy_process.py, killed by PID if it
outlives the test) so that its memory can be read from /proc and real signals
sent; the backend (tests/integration/http_backend.py) and the clients run here.

Memory is the proxy's *peak* resident set (VmHWM) before and after a transfer, so no
sampling is needed: with one side much slower than the other, a proxy that buffered
the body would grow by most of it. The slow side is a reader that pauses between
reads (a throttle, not a synchronisation); readiness and progress come from the proxy's
JSON log lines, the backend's gates and the responses.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import h11
import pytest

from tests.integration.http_backend import (
    PATTERN,
    HttpBackend,
    http_backend,
    http_client,
    pattern_sha256,
    peak_rss,
)
from tests.integration.proxy_process import Running, proxy_process

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(90),  # a few seconds each; 48-256 MiB moved, slower when loaded
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status"),
]

MIB = 1 << 20
#: The body of the large transfers.
BIG = 48 * MIB
#: How much the proxy's peak memory may grow while moving BIG bytes.
MAX_GROWTH = 16 * MIB
#: The slow side reads this much at a time, then pauses PAUSE seconds (~60 MiB/s).
SLOW_READ = 128 * 1024
PAUSE = 0.002
#: A bound on a transfer (one normally takes about a second).
TRANSFER_TIMEOUT = 20.0


@asynccontextmanager
async def plain_proxy_process(tmp_path: Path, b: HttpBackend, *, drain: str = "{spread: 0s}"
                              ) -> AsyncIterator[tuple[Running, int]]:
    """``wsproxy run`` with ``plain_http: proxy`` in front of *b*; its port once listening."""
    config = (
        "listen: {host: 127.0.0.1, port: 0}\n"
        "admin: {host: 127.0.0.1, port: 0}\n"
        f'backends: [{{name: {b.name}, url: "{b.url}"}}]\n'
        "plain_http: proxy\n"
        "http: {max_body_size: 0}\n"
        f"drain: {drain}\n"
        "logging: {level: info, format: json}\n"
    )
    async with proxy_process(config, tmp_path) as proxy:
        yield proxy, proxy.port


async def warmed_up_peak(pid: int, port: int) -> int:
    """The proxy's peak RSS after one small request of each kind (code paths loaded)."""
    async with http_client(port) as client:
        assert (await client.request("POST", "/echo", body=b"x" * 1000)).status == 200
        assert (await client.request("POST", "/echo", body=[b"y" * 1000])).status == 200
        assert (await client.request("GET", "/bytes?n=100000")).status == 200
    return peak_rss(pid)


def assert_bounded(before: int, after: int) -> None:
    growth = after - before
    assert growth < MAX_GROWTH, (
        f"{BIG // MIB} MiB through the proxy: its peak RSS grew by {growth / MIB:.1f} MiB "
        f"({before / MIB:.1f} -> {after / MIB:.1f} MiB)"
    )


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_large_upload_to_a_slow_backend_streams_in_bounded_memory(
    tmp_path: Path, framing: str
) -> None:
    async with http_backend() as b, plain_proxy_process(tmp_path, b) as (proxy, port):
        before = await warmed_up_peak(proxy.pid, port)
        async with http_client(port) as client:
            length = [("Content-Length", str(BIG))] if framing == "length" else [
                ("Transfer-Encoding", "chunked")]
            target = f"/sink?chunk={SLOW_READ}&pause_ms={PAUSE * 1000:g}"
            with anyio.fail_after(TRANSFER_TIMEOUT):
                await client.send_head("POST", target, length)
                block = h11.Data(data=PATTERN * 16)  # 1 MiB
                for _ in range(BIG // MIB):
                    await client.send(block)
                await client.send(h11.EndOfMessage())
                reply = await client.response_head()
                reply.body = await client.read_body()
        after = peak_rss(proxy.pid)
    assert reply.status == 200
    assert json.loads(reply.body) == {"length": BIG, "sha256": pattern_sha256(BIG)}
    assert_bounded(before, after)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_large_download_to_a_slow_client_streams_in_bounded_memory(
    tmp_path: Path, framing: str
) -> None:
    async with http_backend() as b, plain_proxy_process(tmp_path, b) as (proxy, port):
        before = await warmed_up_peak(proxy.pid, port)
        received = 0
        digest = hashlib.sha256()
        async with http_client(port) as client:
            with anyio.fail_after(TRANSFER_TIMEOUT):
                await client.send_head("GET", f"/bytes?n={BIG}&framing={framing}")
                await client.send(h11.EndOfMessage())
                reply = await client.response_head()
                while (chunk := await client.body_chunk(SLOW_READ)) is not None:
                    if received // SLOW_READ != (received + len(chunk)) // SLOW_READ:
                        await anyio.sleep(PAUSE)  # a slow reader, not a synchronisation
                    received += len(chunk)
                    digest.update(chunk)
        after = peak_rss(proxy.pid)
    assert reply.status == 200
    assert received == BIG
    assert digest.hexdigest() == pattern_sha256(BIG)
    assert_bounded(before, after)


async def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(tmp_path: Path) -> None:
    async with http_backend() as b, plain_proxy_process(
        tmp_path, b, drain="{spread: 0s, timeout: 10s}"
    ) as (proxy, port):
        async with http_client(port) as client:
            done = await client.request("GET", "/hello/before?token=secret-in-query")
            gate = b.gate("term")
            await client.send_head("GET", "/gate/term")
            await client.send(h11.EndOfMessage())
            with anyio.fail_after(10):
                await gate.arrived.wait()
            proxy.signal(signal.SIGTERM)
            await proxy.wait_for_event("drain.started")
            gate.release.set()
            reply = await client.response_head()
            reply.body = await client.read_body()
        status = await proxy.wait()
        lines = await proxy.rest_of_stdout()
    assert done.status == 200
    assert (reply.status, reply.body) == (200, b"released /gate/term\n")
    assert "close" in reply.tokens("connection")
    assert status == 0
    records = [json.loads(line) for line in lines if line.startswith("{")]
    logged = [r for r in records if r.get("event") == "http.request"]
    assert [r["path"] for r in logged] == ["/hello/before", "/gate/term"], logged
    first = logged[0]
    assert first["method"] == "GET"
    assert first["status"] == 200
    assert first["backend"] == "b1"
    assert first["request_id"]
    for key in ("client", "duration_s", "bytes_in", "bytes_out"):
        assert key in first, first
    assert not any("secret-in-query" in line for line in lines)  # the query is left out
