#!/usr/bin/env python3
"""The proxy's memory for held resumable sessions (README "Resumable sessions").

    python bench/resume_memory.py [--sessions 1000] [--messages 8] [--size 4096] [--runs 3]

Starts an echo backend (in this process) and ``python -m wsproxy run`` with
``resume: {enabled: true, buffer: 64KiB}``; opens N sessions with
``?wsproxy_resume=1``, sends each --messages messages of --size bytes (echoed back, so
each session keeps messages x size bytes for replay), then resets every client's TCP
connection (SO_LINGER 0, close) and waits until the proxy holds all N. It reports the
proxy's RSS growth per session, attached and held, next to the same connections and
traffic without the opt-in, as medians of --runs runs (a fresh proxy each); the
fixed overhead of a held session is its RSS growth less the bytes it keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from wsproxy.echo import start_echo_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metric(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


async def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"port {port} never opened")


async def one_run(a: argparse.Namespace, echo_port: int, opt_in: bool) -> dict[str, float]:
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "wsproxy.yaml"
        config.write_text(
            f"listen: {{host: 127.0.0.1, port: {port}}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
            f"backends: [{{name: echo, url: 'ws://127.0.0.1:{echo_port}'}}]\n"
            "resume: {enabled: true, window: 120s, buffer: 64KiB}\n"
            "heartbeat: {interval: 600s, timeout: 600s}\n"
            "logging: {level: warning}\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wsproxy", "run", "--config", str(config),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            await wait_port(port, time.monotonic() + 30)
            # Warm up: one session through, so imports and first-use caches are paid.
            async with connect(f"ws://127.0.0.1:{port}/?wsproxy_resume=1") as ws:
                await ws.recv()
            await asyncio.sleep(0.5)
            base = rss(proc.pid)
            suffix = "/?wsproxy_resume=1" if opt_in else "/"
            clients: list[ClientConnection] = []
            payload = b"m" * a.size
            for _ in range(a.sessions):
                ws = await connect(f"ws://127.0.0.1:{port}{suffix}", max_size=None)
                if opt_in:
                    await ws.recv()  # the session message
                clients.append(ws)
            for ws in clients:
                for _ in range(a.messages):
                    await ws.send(payload)
            for ws in clients:
                got = 0
                while got < a.messages:  # echoed (and acks, text, for the opted-in)
                    message = await ws.recv()
                    if not opt_in or message[:1] == b"\x00":
                        got += 1
            await asyncio.sleep(0.5)
            attached = rss(proc.pid)
            held = attached
            buffered = 0.0
            if opt_in:
                for ws in clients:
                    sock = ws.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    ws.transport.abort()
                deadline = time.monotonic() + 60
                while metric(admin, "wsproxy_resume_sessions_held") < a.sessions:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the proxy never held every session")
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.5)
                held = rss(proc.pid)
                buffered = metric(admin, "wsproxy_resume_buffered_bytes")
            else:
                for ws in clients:
                    ws.transport.abort()
            return {"attached": (attached - base) / a.sessions,
                    "held": (held - base) / a.sessions,
                    "buffered": buffered / a.sessions}
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--messages", type=int, default=8)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    server = await start_echo_server()
    echo_port = server.sockets[0].getsockname()[1]
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(a.runs):
        for opt_in in (False, True):
            results[opt_in].append(await one_run(a, echo_port, opt_in))
    server.close()

    def med(opt_in: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[opt_in])

    kept = a.messages * (a.size + 1 + 4)  # the prefix byte, a 4-byte frame header
    print(f"python bench/resume_memory.py --sessions {a.sessions} --messages {a.messages} "
          f"--size {a.size} --runs {a.runs}   (pid {os.getpid()}; medians)")
    print("| proxy RSS growth per connection | bytes |")
    print("|---|---|")
    print(f"| not opted in, open | {med(False, 'attached'):,.0f} |")
    print(f"| opted in, attached | {med(True, 'attached'):,.0f} |")
    print(f"| opted in, held (client reset) | {med(True, 'held'):,.0f} |")
    print(f"| of which kept for replay (wsproxy_resume_buffered_bytes / N) "
          f"| {med(True, 'buffered'):,.0f} (expected {kept:,}) |")
    print(f"| held, less the bytes kept: fixed overhead | "
          f"{med(True, 'held') - med(True, 'buffered'):,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
