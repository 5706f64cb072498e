#!/usr/bin/env python3
"""Instructions per WebSocket upgrade and per plain HTTP request, counted by callgrind.

    python bench/cpu_cost.py [--tree DIR] [--what upgrades,http] [-n 400] [--level info]
                             [--annotate N] [--in-flight 10] [--main-thread]

Wall-clock figures on a shared 2-core machine swing by tens of per cent; the number
of instructions the proxy executes for one unit of work hardly moves. This runs
``DIR/.venv/bin/python -P -m wsproxy run`` with DIR first on the path (DIR
defaults to this checkout; ``--python`` another interpreter, so that two trees can
be compared on one) under
``valgrind --tool=callgrind --instr-atstart=no`` with the default config but for
the ports (INFO logs on, to a file), then:

- upgrades: against bench/bin/wsecho; a warm-up of ``-n / 4`` upgrades, then
  instrumentation on (``callgrind_control -i on``), ``-n`` upgrades (connect, the
  upgrade request, the 101, a masked close frame, the server's close, the TCP
  close; ``--in-flight``, 10, at once), instrumentation off. Reported: instructions
  per upgrade.
- http: ``plain_http: proxy`` in front of bench/bin/httpok; ``--in-flight`` keep-alive
  client connections each send GETs one after another (a warm-up, then ``-n`` measured).
  Reported: instructions per request.

The whole process is counted (the event loop, uvloop's C, the log writer thread,
the kernel's share is not: callgrind sees user space only), or with ``--main-thread``
the event loop's thread only. Counts move by ~±1 % with the machine's load (how many
events one loop pass finds); ``--in-flight 1 --main-thread`` moves ~±0.2 %, for
comparing two trees a change apart. ``--annotate N`` prints the N functions with the
most inclusive instructions (``callgrind_annotate``), which with Python's frames
shows the interpreter's C functions, not Python's: use py-spy or cProfile for where
in Python the time goes.

Every process started is stopped by its PID. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from http_run import build_httpok
from run import BIN, HOST, ROOT, Procs, build, free_port, wait_port

_CLOSE = bytes([0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2])  # masked close 1000
_UPGRADE = (
    "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Origin: http://{host}\r\nUser-Agent: cpu_cost\r\n\r\n"
)
_GET = "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cpu_cost\r\nAccept: */*\r\n\r\n"
IN_FLIGHT = 10


async def one_upgrade(port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(_UPGRADE.format(host=f"{HOST}:{port}").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no 101: {head[:80]!r}")
    writer.write(_CLOSE)
    frame = await reader.readexactly(2)
    if frame[0] != 0x88:
        raise RuntimeError(f"no close frame: {frame!r}")
    await reader.readexactly(frame[1] & 0x7F)
    if await reader.read(1) != b"":
        raise RuntimeError("bytes after the close frame")
    writer.close()
    await writer.wait_closed()


async def upgrades(port: int, n: int, in_flight: int) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one_upgrade(port)

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def requests(port: int, n: int, in_flight: int) -> None:
    per_conn = max(1, n // in_flight)
    request = _GET.format(host=f"{HOST}:{port}").encode()

    async def conn() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        for _ in range(per_conn):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"no 200: {head[:80]!r}")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length[1]) if length else 0)
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(conn() for _ in range(in_flight)))


def config(port: int, admin: int, backend: int, level: str, http: bool) -> str:
    text = (
        f"listen: {{host: {HOST}, port: {port}}}\n"
        f"admin: {{host: {HOST}, port: {admin}}}\n"
        f'backends: [{{name: b, url: "ws://{HOST}:{backend}"}}]\n'
        f"logging: {{level: {level}}}\n"
    )
    return text + ("plain_http: proxy\n" if http else "")


def total_ir(out: Path) -> int:
    """The instructions counted in a callgrind output file (its totals/summary line)."""
    for line in out.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL)


def measure(a: argparse.Namespace, what: str, procs: Procs, tmp: Path) -> float:
    http = what == "http"
    backend = free_port()
    server = BIN / ("httpok" if http else "wsecho")
    procs.start(f"{what}-backend", [str(server), "-q", "-p", str(backend)],
                log=tmp / f"{what}-backend.log")
    wait_port(backend, None, 10, server.name)
    port, admin = free_port(), free_port()
    cfg = tmp / f"{what}.yaml"
    cfg.write_text(config(port, admin, backend, a.level, http))
    out = tmp / f"{what}.callgrind"
    python = [a.python or str(Path(a.tree) / ".venv/bin/python"), "-P"]
    prof = tmp / f"{what}.prof"
    if a.cprofile:
        argv = [*python, "-m", "cProfile", "-o", str(prof)]
    else:
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--separate-threads={'yes' if a.main_thread else 'no'}",
                f"--callgrind-out-file={out}", *python]
    if a.cmd:  # the other command in place of the interpreter and its arguments
        argv = argv[: argv.index(python[0])]
        argv += shlex.split(a.cmd.format(port=port, backend=backend, config=cfg))
    else:
        argv += ["-m", "wsproxy", "run", "-c", str(cfg)]
    proc = procs.start(f"{what}-wsproxy", argv, log=tmp / f"{what}-wsproxy.log",
                       env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": a.tree})
    try:
        wait_port(port, proc, 120, "wsproxy under callgrind")
        run = requests if http else upgrades
        asyncio.run(run(port, max(a.n // 4, a.in_flight), a.in_flight))
        if not a.cprofile:
            control("-i", "on", str(proc.pid))
        started = time.monotonic()
        asyncio.run(run(port, a.n, a.in_flight))
        if a.cprofile:
            print(f"{what}: {a.n} in {time.monotonic() - started:.2f} s under cProfile",
                  file=sys.stderr)
            return 0.0
        control("-d", str(proc.pid))
        control("-i", "off", str(proc.pid))
        print(f"{what}: {a.n} in {time.monotonic() - started:.1f} s under callgrind",
              file=sys.stderr)
    finally:
        procs.stop(proc, timeout=60)
        if a.cprofile:
            stats = pstats.Stats(str(prof))
            stats.sort_stats("tottime").print_stats(a.cprofile)
            stats.sort_stats("cumulative").print_stats(a.cprofile)
            stats.dump_stats(str(Path(a.keep_profile))) if a.keep_profile else None
    dumps = sorted(tmp.glob(f"{out.name}.*"))
    if a.main_thread:  # one file per thread, the main one's name ending in -01
        dumps = [d for d in dumps if d.name.endswith("-01")]
    ir = total_ir(dumps[0])
    if a.annotate:
        report = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(dumps[0])],
                                capture_output=True, text=True, check=True).stdout
        print("\n".join(report.splitlines()[:a.annotate + 25]))
    return ir / a.n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(ROOT), help="checkout whose .venv runs wsproxy")
    p.add_argument("--python", help="the interpreter (default: the tree's .venv/bin/python)")
    p.add_argument("--what", default="upgrades,http")
    p.add_argument("-n", type=int, default=400, help="measured upgrades / requests")
    p.add_argument("--level", default="info", help="logging.level (default: info)")
    p.add_argument("--annotate", type=int, default=0)
    p.add_argument("--in-flight", type=int, default=IN_FLIGHT,
                   help=f"upgrades / keep-alive connections at once (default {IN_FLIGHT}; "
                   "1 with --main-thread moves least with the machine's load, ~±0.7k)")
    p.add_argument("--main-thread", action="store_true",
                   help="count the main thread only (the event loop: not the log writer)")
    p.add_argument("--keep-profile", help="write the cProfile stats to this file")
    p.add_argument("--cmd", help="measure this command instead of wsproxy: a Python "
                   "interpreter and its arguments, with {port}, {backend} and {config}")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="run under cProfile instead and print its top N functions")
    a = p.parse_args(argv)
    build("cc")
    build_httpok("cc")
    procs = Procs()
    results: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="wsproxy-cost-") as tmpdir:
            for what in a.what.split(","):
                results[what] = measure(a, what, procs, Path(tmpdir))
    finally:
        procs.stop_all()
    for what, ir in results.items():
        unit = "request" if what == "http" else "upgrade"
        print(f"{what}: {ir:,.0f} instructions per {unit} ({a.tree}, logging {a.level})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
