#!/usr/bin/env python3
"""A WebSocket proxy that does no work: the ceiling of pure Python (bench/run.py `splice`).

    python bench/splice.py --port 8080 --backend 127.0.0.1:9000

It reads the client's upgrade request up to the end of its head, dials the backend,
forwards the head (and whatever followed it) unchanged, then copies bytes both ways
until either side closes. No parsing beyond the blank line that ends the head, no
frames, no limits, no heartbeats, no logs, no metrics: what is left is what any
Python proxy pays per read (the event loop's callbacks and two system calls). It runs
on asyncio Protocols with uvloop (PERF-NOTES.md: the fastest way to move bytes in
Python here), with the transports' own backpressure: when one side's write buffer
fills, the other side stops being read.

Only for measuring: it trusts both peers and listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvloop

#: A head that has not ended within this many bytes is not an upgrade request.
MAX_HEAD = 16 << 10


class Leg(asyncio.Protocol):
    """One transport of a spliced pair. ``out`` is the other leg's transport, set when
    both are up (a backend sends nothing before it has the request, so a backend leg's
    data never comes before that)."""

    transport: Any = None
    out: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.out.write(data)  # the whole of the proxy's work

    def eof_received(self) -> bool:
        if self.out is not None:
            self.out.close()  # after what is buffered for it has been written
        return False  # and close this transport too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.out is not None:
            self.out.close()

    # Backpressure: a full write buffer on this leg stops reading the other one.
    def pause_writing(self) -> None:
        if self.out is not None:
            self.out.pause_reading()

    def resume_writing(self) -> None:
        if self.out is not None:
            self.out.resume_reading()


class ClientLeg(Leg):
    """The client's side: collects the upgrade head, then dials and splices."""

    def __init__(self, backend: tuple[str, int]) -> None:
        self.backend = backend
        self.head = b""

    def data_received(self, data: bytes) -> None:
        out = self.out
        if out is not None:  # spliced: the hot path
            out.write(data)
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.pause_reading()  # nothing more until the backend is there
            asyncio.get_running_loop().create_task(self.dial())
        elif len(self.head) > MAX_HEAD:
            self.transport.close()

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, leg = await loop.create_connection(Leg, *self.backend)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():  # the client left meanwhile
            upstream.close()
            return
        self.out, leg.out = upstream, self.transport
        upstream.write(self.head)  # the request as it came, and anything after it
        self.head = b""
        self.transport.resume_reading()


async def serve(port: int, backend: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ClientLeg(backend), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()  # until SIGTERM (bench/run.py stops it by PID)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    p.add_argument("--backend", required=True, metavar="HOST:PORT")
    a = p.parse_args()
    host, _, port = a.backend.rpartition(":")
    uvloop.run(serve(a.port, (host, int(port))))


if __name__ == "__main__":
    main()
