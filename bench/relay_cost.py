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
checkout's venv (``WSPROXY_NO_SPEEDUPS=1`` for the pure-Python scanner).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import subprocess
import sys
import tempfile
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


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("rounds", type=int, nargs="?", default=2000, help="reads relayed each way")
    p.add_argument("--batch", type=int, default=16, help="64 B messages per read")
    p.add_argument("--size", type=int, default=64, help="payload bytes (< 126)")
    p.add_argument("--callgrind", action="store_true",
                   help="measure instructions per message (runs N and 2N rounds)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the checkout")
    a = p.parse_args()
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
    if relay is not None:  # as the driver calls it, where the checkout has it
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
