#!/usr/bin/env python3
"""Instructions per relayed message in the session's hot path, for callgrind.

    python bench/relay_cost.py --callgrind [--python .venv/bin/python] [--batch 16]
    python bench/relay_cost.py N [--batch 16]      # the workload itself

Opens one Session (sans I/O: no socket, no loop) and relays N rounds of a 64-byte
binary message each way, the way bench/run.py's figures arrive: ``--batch 16`` (the
throughput figure's window: a read carries up to 16 frames) or ``--batch 1``
(ping-pong). Each read is fed to ``receive_data`` and what comes out is taken with
``data_to_send``, as the driver (wsproxy/io/connection.py) does. Run it under
callgrind twice, with N and 2N, and divide the difference of the instruction counts
by the messages of N rounds: start-up and imports cancel out, and the figure does not
depend on how busy the machine is. ``--callgrind`` does that (valgrind must be
installed: ``apt-get install -y valgrind``) and prints instructions per message.

It uses only the Session API, so it measures any checkout: run it with that
checkout's venv (``WSPROXY_NO_SPEEDUPS=1`` for the pure-Python scanner). Where the
checkout has ``Session.relay`` (the driver's hot path), reads go through it; where it
has ``Session.relay_protocol`` (the relay protocols an OPEN connection's transports
get, wsproxy/io/direct.py), through those, with a write that does nothing.

    python bench/relay_cost.py --target wsproxy|splice [--tree DIR] [--batch 16] [-n 400]

The whole process instead, with its sockets: the target (``wsproxy run`` of DIR's
venv, default config with INFO logs, or bench/splice.py, the no-work splice: the
floor of a Python proxy on asyncio Protocols + uvloop) runs under ``valgrind
--tool=callgrind --instr-atstart=no``; this process is its client and its backend
(127.0.0.1). One connection (``--connections C``: C of them, their rounds in step,
so that the target finds several sockets ready at once, as under load); a round is
the client's one write of ``--batch`` masked 64 B frames and the backend's one write
of as many unmasked ones once it has them all. After a warm-up, instrumentation is
switched on for N rounds and dumped, then 2N rounds and dumped; the difference per
message (both directions) is what one relayed message costs the target: its Python,
the loop's C and the system calls' user-space side (callgrind sees no kernel). Set
``WSPROXY_NO_SPEEDUPS=1`` for the fallback. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from wsproxy.core import Session, SessionState, Side
from wsproxy.core.handshake import Forwarding

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, *, masked: bool) -> bytes:
    if not masked:
        return bytes((0x82, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x82, 0x80 | len(payload))) + key + bytes(
        b ^ key[i % 4] for i, b in enumerate(payload)
    )


def opened() -> Session:
    session = Session("bench")
    session.receive_data(
        Side.CLIENT,
        b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    session.accept()
    session.connect_upstream(
        target="bench", authority="127.0.0.1:1", path_prefix="", pass_extensions=False,
        forwarding=Forwarding(client_ip="127.0.0.1", forwarded_for="127.0.0.1",
                              proto="http", request_id="bench"),
    )
    request = b"".join(session.data_to_send(Side.UPSTREAM))
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    session.receive_data(
        Side.UPSTREAM,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n",
    )
    session.data_to_send(Side.CLIENT)
    assert session.state is SessionState.OPEN, (session.state, session.upstream_failure)
    return session


def instructions(python: str, rounds: int, batch: int, size: int) -> int:
    """Instructions callgrind counts for one run of the workload."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python,
             __file__, str(rounds), "--batch", str(batch), "--size", str(size)],
            check=True, capture_output=True,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no instruction count in callgrind's output")


_UPGRADE = (
    b"GET /relay HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   batch: int, size: int) -> None:
    """Accept the upgrade, then answer each batch of masked frames with as many
    unmasked ones, in one write."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    down = frame(bytes(size), masked=False) * batch
    up_len = (6 + size) * batch
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await reader.readexactly(up_len)
            writer.write(down)
    writer.close()


async def _client(port: int, batch: int, size: int, windows: list[int],
                  between: Callable[[int], None], connections: int = 1) -> None:
    """*connections* clients, each a round at a time; every window ends when all of
    them have done its rounds."""
    async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_UPGRADE)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"no 101: {head[:80]!r}")
        return reader, writer

    up = frame(bytes(size), masked=True) * batch
    down_len = (2 + size) * batch

    async def rounds_of(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        rounds: int) -> None:
        for _ in range(rounds):
            writer.write(up)
            await reader.readexactly(down_len)

    pairs = [await opened() for _ in range(connections)]
    for i, rounds in enumerate(windows):
        await asyncio.gather(*(rounds_of(r, w, rounds) for r, w in pairs))
        between(i)
    for _, writer in pairs:
        writer.close()


def live(a: argparse.Namespace) -> float:
    """Instructions per relayed message of the whole target process (see the doc)."""
    from run import ROOT, Procs, free_port, wait_port  # bench/run.py

    procs = Procs()
    loop = asyncio.new_event_loop()
    try:
        with tempfile.TemporaryDirectory(prefix="wsproxy-relay-cost-") as tmpdir:
            tmp = Path(tmpdir)
            server = loop.run_until_complete(asyncio.start_server(
                lambda r, w: _backend(r, w, a.batch, a.size), "127.0.0.1", 0))
            backend = server.sockets[0].getsockname()[1]
            port, admin = free_port(), free_port()
            tree = Path(a.tree)
            python = a.python_of_tree or str(tree / ".venv/bin/python")
            if a.target == "splice":
                argv = [python, "-P", str(ROOT / "bench" / "splice.py"), "--port", str(port),
                        "--backend", f"127.0.0.1:{backend}"]
            else:
                cfg = tmp / "wsproxy.yaml"
                cfg.write_text(
                    f"listen: {{host: 127.0.0.1, port: {port}}}\n"
                    f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
                    f'backends: [{{name: b, url: "ws://127.0.0.1:{backend}"}}]\n'
                )
                argv = [python, "-P", "-m", "wsproxy", "run", "-c", str(cfg)]
            out = tmp / "callgrind.out"
            proc = procs.start(
                a.target,
                ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={out}", *argv],
                log=tmp / "target.log",
                env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)},
            )
            loop.run_until_complete(asyncio.to_thread(
                wait_port, port, proc, 120, f"{a.target} under callgrind"))

            def between(i: int) -> None:  # after the warm-up, then after each window
                mode = ("-i", "on") if i == 0 else ("-d",)
                subprocess.run(["callgrind_control", *mode, str(proc.pid)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            n = a.n
            loop.run_until_complete(_client(port, a.batch, a.size,
                                            [max(n // 4, 10), n, 2 * n], between,
                                            a.connections))
            procs.stop(proc, timeout=60)
            server.close()
            backends = asyncio.all_tasks(loop)  # each ends at the EOF of the target's exit
            if backends:
                loop.run_until_complete(asyncio.wait(backends, timeout=10))
            counts = [total(dump) for dump in sorted(tmp.glob("callgrind.out.*"),
                                                      key=lambda p: int(p.suffix[1:]))]
            if len(counts) < 2:
                raise RuntimeError(f"expected two dumps, got {len(counts)}")
            if a.keep:  # for callgrind_annotate: the dumps of the N and 2N windows
                Path(a.keep).mkdir(parents=True, exist_ok=True)
                for dump in tmp.glob("callgrind.out.*"):
                    shutil.copy(dump, Path(a.keep) / dump.name)
            return (counts[1] - counts[0]) / (2 * n * a.batch * a.connections)
    finally:
        procs.stop_all()
        loop.close()


def total(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction count in {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("rounds", type=int, nargs="?", default=2000, help="reads relayed each way")
    p.add_argument("--batch", type=int, default=16, help="64 B messages per read")
    p.add_argument("--size", type=int, default=64, help="payload bytes (< 126)")
    p.add_argument("--callgrind", action="store_true",
                   help="measure instructions per message (runs N and 2N rounds)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the checkout")
    p.add_argument("--target", choices=("wsproxy", "splice"),
                   help="measure this process relaying on sockets instead (see the doc)")
    p.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent),
                   help="with --target: the checkout whose .venv runs it")
    p.add_argument("--python-of-tree", help="with --target: another interpreter")
    p.add_argument("-n", type=int, default=400, help="with --target: rounds measured")
    p.add_argument("--connections", type=int, default=1,
                   help="with --target: connections relaying at once (their rounds in step)")
    p.add_argument("--keep", help="with --target: copy callgrind's dumps to this directory")
    a = p.parse_args()
    if a.target:
        cost = live(a)
        print(f"{cost:,.0f} instructions per relayed {a.size} B message ({a.batch} per read; "
              f"{a.connections} connection(s); {a.target}, {a.tree}, WSPROXY_NO_SPEEDUPS="
              f"{os.environ.get('WSPROXY_NO_SPEEDUPS', '')!r})")
        return
    if a.callgrind:
        one = instructions(a.python, a.rounds, a.batch, a.size)
        two = instructions(a.python, 2 * a.rounds, a.batch, a.size)
        messages = 2 * a.rounds * a.batch  # both directions
        print(f"{(two - one) / messages:,.0f} instructions per relayed {a.size} B message "
              f"({a.batch} per read; {a.python}, "
              f"WSPROXY_NO_SPEEDUPS={os.environ.get('WSPROXY_NO_SPEEDUPS', '')!r})")
        return
    payload = bytes(range(a.size))
    up = frame(payload, masked=True) * a.batch  # what a client sends
    down = frame(payload, masked=False) * a.batch  # what the echo answers
    session = opened()
    receive, take = session.receive_data, session.data_to_send
    client, upstream = Side.CLIENT, Side.UPSTREAM
    relay = getattr(session, "relay", None)
    relay_protocol = getattr(session, "relay_protocol", None)
    if relay_protocol is not None:  # the driver's relay protocols, where the checkout has them
        sink = collections.deque(maxlen=0).append  # a transport's write that costs ~nothing

        class Driver:  # Connection.receive, for reads the relays do not take (none here)
            def __init__(self, side: Side) -> None:
                self.side = side

            def data_received(self, data: bytes) -> None:
                assert relay is not None
                if relay(self.side, data) is None:
                    take(self.side.other)

        from_client = relay_protocol(client, sink, Driver(client))
        from_upstream = relay_protocol(upstream, sink, Driver(upstream))
        for _ in range(a.rounds):
            from_client.data_received(up)
            from_upstream.data_received(down)
    elif relay is not None:  # as the driver calls it, where the checkout has it
        for _ in range(a.rounds):
            if relay(client, up) is None:
                take(upstream)
            if relay(upstream, down) is None:
                take(client)
    else:
        for _ in range(a.rounds):
            receive(client, up)
            take(upstream)
            receive(upstream, down)
            take(client)
    assert session.messages(upstream) == session.messages(client) == a.rounds * a.batch


if __name__ == "__main__":
    main()
