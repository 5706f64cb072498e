#!/usr/bin/env python3
"""The ceiling of issue 18's next step: the usual upgrade in C, Python twice an upgrade.

    python bench/engine_probe.py --port 8080 --backend 127.0.0.1:9000 [--python-us 25]

``bench/engine_probe.c`` (built here into bench/bin with ``cc`` and this Python's
headers, when missing or older than its source) accepts, reads the upgrade head,
calls Python with it (the verdict), dials, writes the request and the backend's 101,
copies bytes both ways and, at the end, calls Python again (the bookkeeping): one C
object per connection that reads and writes its own sockets, with Python for policy,
as README "Benchmarks" proposes. ``--python-us`` is the Python work of an upgrade, in
microseconds of this process's time, half in each call (0: two calls that do
nothing): how much policy an upgrade can afford at a given ratio to nginx. It is
bench/run.py's ``probe`` target (the upgrade figure only):

    python bench/run.py --targets nginx,probe --figures upgrades --reps 3 --probe-python-us 25

Only for measuring, like bench/splice.py: no WebSocket frame is read, both peers are
trusted, it listens on 127.0.0.1 and runs until a signal stops it.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH / "engine_probe.c"
BUILT = BENCH / "bin" / ("_engine_probe" + str(sysconfig.get_config_var("EXT_SUFFIX")))


def load(cc: str = "cc") -> ModuleType:
    """The compiled probe, built first where it is missing or stale."""
    if not BUILT.exists() or BUILT.stat().st_mtime < SOURCE.stat().st_mtime:
        BUILT.parent.mkdir(parents=True, exist_ok=True)
        cmd = [cc, "-O2", "-Wall", "-Wextra", "-shared", "-fPIC",
               f"-I{sysconfig.get_path('include')}", "-o", str(BUILT), str(SOURCE)]
        print(f"building: {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True)
    spec = importlib.util.spec_from_file_location("_engine_probe", BUILT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spin(seconds: float) -> None:
    """Python work for *seconds* of this process's time (a stand-in for policy)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    p.add_argument("--backend", required=True, metavar="127.0.0.1:PORT")
    p.add_argument("--python-us", type=float, default=0.0,
                   help="Python work an upgrade, in µs, half at each call (default 0)")
    a = p.parse_args()
    half = a.python_us / 2e6
    probe = load()

    def on_request(head: bytes) -> bytes:
        if half:
            spin(half)
        return head  # forwarded as it came

    def on_end() -> None:
        if half:
            spin(half)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", a.port))
    listener.listen(4096)
    listener.setblocking(False)
    probe.serve(listener.fileno(), int(a.backend.rpartition(":")[2]), on_request, on_end)


if __name__ == "__main__":
    main()
