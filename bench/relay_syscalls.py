"""System calls and CPU time per relayed message, by process, under bench/run.py's 64 B load.

    python bench/relay_syscalls.py [--targets wsproxy,nginx] [--tree T] [--seconds 4]
                                   [--size 64] [--window 16] [--connections 100]
                                   [--record PREFIX]

Starts the echo backend (core 1), each target (core 0: nginx, or wsproxy from --tree's
venv, as bench/run.py does) and the load generator's throughput run (core 1) against it;
over the load generator's measured interval, `perf stat` counts each side's system calls
(tracepoints: no hardware counters needed) and CPU time. Prints them per echoed message
(each message crosses the proxy twice: a message here is one round trip). The load core
(wsload + wsecho) is saturated in this run, so what the proxy makes *it* do (how many
messages come per read there) bounds the figure as much as the proxy's own cost.
The host's TCP counters (segments, ACKs) over the same interval, and how much CPU other
processes took meanwhile (this machine is shared: CPU per message moves a few per cent
with it, system calls per message do not). perf's tracepoints slow every system call a
little, for every target alike. ``--window 1`` is the ping-pong figure's load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py: its process handling and targets

EVENTS = [
    "raw_syscalls:sys_enter", "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_ctl", "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_read",
    "syscalls:sys_enter_readv", "syscalls:sys_enter_sendto", "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev", "syscalls:sys_enter_futex", "task-clock",
    "context-switches",
]


def short(event: str) -> str:
    name = event.split(":")[-1]
    return "syscalls" if name == "sys_enter" else name.removeprefix("sys_enter_")


def perf_stat(pids: list[int], seconds: float) -> dict[str, float]:
    argv = ["perf", "stat", "-x", ",", "-e", ",".join(EVENTS),
            "-p", ",".join(map(str, pids)), "--", "sleep", str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    counts: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in EVENTS:
            with contextlib.suppress(ValueError):
                counts[short(parts[2])] = float(parts[0])
    return counts


def snmp() -> dict[str, float]:
    """The host's TCP counters (segments, ACKs: loopback traffic is all ours but for
    the other helpers' few connections)."""
    wanted = {"OutSegs", "InSegs", "DelayedACKs", "TCPHPAcks", "TCPPureAcks",
              "TCPHPHits", "TCPBacklogCoalesce", "TCPRcvCoalesce", "TCPAutoCorking"}
    found: dict[str, float] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = Path(path).read_text().splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            for name, value in zip(head.split()[1:], values.split()[1:], strict=False):
                if name in wanted:
                    found[name] = float(value)
    return found


def measure(ctx: run.Ctx, inst: run.Instance, a: argparse.Namespace) -> dict[str, object]:
    argv = ["taskset", "-c", run.LOAD_CORE, str(run.BIN / "wsload"), "-m", "throughput",
            "-c", str(a.connections), "-s", str(a.size), "-W", str(a.window),
            "-d", str(a.seconds), "-w", "1", "-T", "30", inst.url]
    proc = ctx.procs.start("wsload", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    window = a.seconds - 0.5
    counted: dict[str, dict[str, float]] = {}

    def count() -> None:
        before = run.cpu_busy_ticks(), snmp(), time.monotonic()
        groups = {"proxy": inst.pids(), "echo": [ctx.echo_proc.pid], "load": [proc.pid]}
        if not groups["proxy"]:  # the direct target: no proxy between
            del groups["proxy"]
        threads = []
        for name, pids in groups.items():
            def one(name: str = name, pids: list[int] = pids) -> None:
                counted[name] = perf_stat(pids, window)
            threads.append(threading.Thread(target=one))
        if a.record:
            for name, pids in groups.items():
                out = f"{a.record}-{inst.target}-{name}.data"
                threads.append(threading.Thread(target=subprocess.run, args=(
                    ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-o", out,
                     "-p", ",".join(map(str, pids)), "--", "sleep", str(window)],),
                    kwargs={"capture_output": True}))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy, net, elapsed = run.cpu_busy_ticks(), snmp(), time.monotonic() - before[2]
        ours = sum(c.get("task-clock", 0.0) for c in counted.values()) / 1e3
        counted["machine"] = {
            "others-cores": (busy - before[0]) / run.CLK_TCK / elapsed - ours / elapsed,
        }
        counted["tcp"] = {k: v - before[1].get(k, 0) for k, v in net.items()}

    counter = None
    assert proc.stderr is not None
    assert proc.stdout is not None
    for raw in proc.stderr:
        if raw.decode(errors="replace").strip() == "MEASURE START":
            counter = threading.Thread(target=count)
            counter.start()
            break
    out = proc.stdout.read()
    proc.wait(timeout=a.seconds + 60)
    if counter is not None:
        counter.join()
    result = json.loads(out.decode().strip().splitlines()[-1])
    rate = float(result["msg_per_s"])
    messages = rate * window
    others = counted.pop("machine")
    per = {side: {k: v / messages for k, v in c.items()} for side, c in counted.items()}
    per["machine"] = others
    return {"msg_per_s": rate, "per_message": per}


def per_side(got: dict[str, object]) -> None:
    """Print each side's counts per message."""
    per = got["per_message"]
    assert isinstance(per, dict)
    rate = float(got["msg_per_s"])  # type: ignore[arg-type]
    per.pop("machine")
    for side, counts in per.items():
        parts = [f"{k} {v:.4f}" for k, v in counts.items() if v and k != "task-clock"]
        cpu = counts.get("task-clock", 0.0)  # ms a message
        if cpu:
            parts.append(f"CPU {cpu * 1e6:.0f} ns ({cpu * rate / 1e3:.0%} of a core)")
        print(f"  {side:5} per message: " + ", ".join(parts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="wsproxy,nginx",
                   help="out of direct,nginx,nginx-64k,splice,wsproxy (bench/run.py's)")
    p.add_argument("--tree", default=str(run.ROOT), help="wsproxy's tree (its .venv)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--wsproxy-level", default="info",
                   help="wsproxy's logging.level (default: info, the default config's)")
    p.add_argument("--record", metavar="PREFIX",
                   help="also `perf record` (cpu-clock) each side to PREFIX-TARGET-SIDE.data")
    a = p.parse_args()
    run.build("cc")
    a.wsproxy_cmd = run.DEFAULT_WSPROXY_CMD.replace("{root}", a.tree)
    a.splice_cmd = run.DEFAULT_SPLICE_CMD.replace("{root}", a.tree)
    procs = run.Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wsproxy-syscalls-"))
    try:
        echo_port = run.free_port()
        echo = procs.start("wsecho", ["taskset", "-c", run.LOAD_CORE, str(run.BIN / "wsecho"),
                                      "-q", "-p", str(echo_port)],
                           log=run.OUT / "logs" / "wsecho.log")
        run.wait_port(echo_port, echo, 10, "wsecho")
        ctx = run.Ctx(a, procs, workdir, echo_port, echo, run.shutil.which("nginx"))
        for target in a.targets.split(","):
            inst = run.start_target(ctx, target)
            try:
                time.sleep(0.5)
                got = measure(ctx, inst, a)
            finally:
                run.stop_instance(ctx, inst)
            machine = got["per_message"]["machine"]  # type: ignore[index]
            print(f"{target}: {got['msg_per_s'] / 1000:,.0f}k msg/s; other processes used "
                  f"{machine['others-cores']:.2f} cores meanwhile")
            per_side(got)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
