"""A stdout nobody reads does not stall relaying (issue 14): lines are dropped and counted.

``wsproxy run`` runs as a subprocess whose stdout is a pipe made here, shrunk to one
page (``F_SETPIPE_SZ``). After reading its start-up lines the test stops reading it and
makes the proxy log more than the pipe and the proxy's buffer (10,000 lines) hold:
6,000 plain HTTP requests without credentials (32 connections at a time), which the
proxy answers 401 itself, with an ``auth.failed`` and an ``http.request`` line each. Before issue 14
the proxy's event loop blocked in the write of a log line once the pipe was full, and
every connection stalled with it. Now the requests are all answered, a WebSocket
client still gets every one of its messages back, ``/metrics`` counts the dropped
lines, and once the test reads the pipe again every line in it is whole and the last
one is ``proxy.stopped``.

Every wait is on a reply or on the pipe, bounded by ``WAIT``; the process is stopped
by its PID.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from websockets.asyncio.client import connect

from tests.integration.http_backend import http_backend
from tests.integration.peers import raw_exchange

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ"),
]

WAIT = 30.0
#: The flood takes 3-6 s on an idle 2-core machine; a ceiling far above that.
FLOOD_CEILING = 120.0
#: Requests flooded, two log lines each: more than the buffer (10,000) and the pipe hold.
FLOOD = 6_000
KEY = "log-backpressure-key"
MESSAGES = 1_000
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Pipe:
    """The read end of the proxy's stdout, read only when the test asks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.records: list[dict[str, Any]] = []
        self.torn: list[bytes] = []
        self._partial = b""

    async def read_some(self) -> bool:
        """Read what is there (waiting for something); False at EOF."""
        await anyio.wait_readable(self.fd)
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            try:
                self.records.append(json.loads(line))
            except ValueError:
                self.torn.append(line)
        return True

    async def until(self, done: Callable[[], bool], what: str) -> None:
        with anyio.fail_after(WAIT):
            while not done():
                assert await self.read_some(), f"EOF before {what}"

    async def to_eof(self) -> None:
        with anyio.fail_after(WAIT):
            while await self.read_some():
                pass
        assert self._partial == b"", self._partial[-200:]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == name]


@asynccontextmanager
async def proxy_with_stdout_pipe(config: Path, stderr: Path) -> AsyncIterator[
    tuple[Process, Pipe]
]:
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)  # one page: full after a dozen lines
    with stderr.open("wb") as err:
        process = await anyio.open_process(
            [sys.executable, "-m", "wsproxy", "run", "-c", str(config)], stdout=w, stderr=err
        )
    os.close(w)
    try:
        yield process, Pipe(r)
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
        with anyio.fail_after(WAIT, shield=True):
            await process.aclose()
        os.close(r)


async def flood(port: int, n: int, parallel: int = 32) -> int:
    """*n* GET /hello without credentials, one per connection, *parallel* at a time: the
    401s received. The proxy answers them itself and logs two lines each
    (``auth.failed``, ``http.request``)."""
    answers = 0

    async def one() -> None:
        nonlocal answers
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n" not in head:
                head += await stream.receive()
        answers += head.startswith(b"HTTP/1.1 401 ")

    async def worker(share: int) -> None:
        for _ in range(share):
            await one()

    with anyio.fail_after(FLOOD_CEILING):
        async with anyio.create_task_group() as tg:
            for i in range(parallel):
                tg.start_soon(worker, n // parallel + (i < n % parallel))
    return answers


async def scrape_dropped(admin: str) -> float:
    port = int(admin.rsplit(":", 1)[1])
    answer = await raw_exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    for line in answer.decode().splitlines():
        if line.startswith("wsproxy_log_lines_dropped_total "):
            return float(line.split()[1])
    raise AssertionError(answer.decode()[-2000:])


# Its own bounds (the flood, then the waits), not the suite's 30 s: the flood is CPU work.
@pytest.mark.timeout(FLOOD_CEILING + 3 * WAIT)
async def test_a_stdout_nobody_reads_costs_dropped_lines_not_relaying(tmp_path: Path) -> None:
    async with http_backend() as b:
        keys = tmp_path / "keys.yaml"
        digest = hashlib.sha256(KEY.encode()).hexdigest()
        keys.write_text(f"- {{sha256: {digest}, subject: test}}\n", encoding="utf-8")
        config = tmp_path / "wsproxy.yaml"
        config.write_text(
            "listen: {host: 127.0.0.1, port: 0}\n"
            f'auth: {{type: api_key, api_key: {{keys_file: "{keys}"}}}}\n'
            "admin: {host: 127.0.0.1, port: 0}\n"
            f'backends: [{{name: app, url: "{b.url}"}}]\n'
            "plain_http: proxy\n"
            "logging: {level: info, format: json}\n"
            "drain: {spread: 0s, timeout: 5s}\n",
            encoding="utf-8",
        )
        async with proxy_with_stdout_pipe(config, tmp_path / "stderr") as (process, pipe):
            await pipe.until(
                lambda: bool(pipe.events("proxy.listening") and pipe.events("admin.listening")),
                "proxy.listening and admin.listening",
            )
            address = pipe.events("proxy.listening")[0]["addresses"][0]
            admin = pipe.events("admin.listening")[0]["address"]
            port = int(address.rsplit(":", 1)[1])
            assert not pipe.events("http.request")

            # Nobody reads stdout from here on.
            assert await flood(port, FLOOD) == FLOOD
            bearer = {"Authorization": f"Bearer {KEY}"}
            async with connect(f"ws://{address}/", additional_headers=bearer) as ws:
                with anyio.fail_after(WAIT):
                    for i in range(MESSAGES):
                        await ws.send(f"message {i}")
                        assert await ws.recv() == f"message {i}"
                dropped = await scrape_dropped(admin)
            assert dropped > 0

            # Read again: whole lines, in order, up to proxy.stopped.
            os.kill(process.pid, signal.SIGTERM)
            await pipe.to_eof()
            with anyio.fail_after(WAIT):
                status = await process.wait()

    assert status == 0
    assert pipe.torn == []
    assert pipe.records[-1]["event"] == "proxy.stopped"
    requests = pipe.events("http.request")
    # The oldest lines went; the newest are all there, to the end of the flood and past.
    failed = pipe.events("auth.failed")
    assert len(requests) + len(failed) + dropped <= 2 * FLOOD, (len(requests), dropped)
    assert requests[-1]["status"] == 401  # the newest request lines are there
    assert len(pipe.events("connection.opened")) == len(pipe.events("connection.closed")) == 1
    assert "Traceback" not in (tmp_path / "stderr").read_text()
