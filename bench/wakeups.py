#!/usr/bin/env python3
"""What an upgrade costs around the proxy: its user and system CPU, and the wake-ups of
the peers' CPU it causes.

    python bench/wakeups.py [--targets nginx,wsproxy] [--seconds 6] [--reps 2]
                            [--wsproxy-cmd "..."]

Under bench/run.py's upgrade load (wsload -m upgrades -C 50 against wsecho, both on the
load core, each proxy alone on the other core), per upgrade: the proxy's user and
system CPU (/proc/PID/stat over the measured interval), and, system-wide over the same
interval, the inter-processor interrupts sent and the tasks woken (``perf stat -a -e
ipi:ipi_send_cpu,sched:sched_wakeup``; needs perf and root). In a virtual machine an IPI
is a trip through the hypervisor for the CPU that sends it: a proxy that wakes a
sleeping peer with each write pays for it in system time (README "Benchmarks", round
11). Each repetition starts each target afresh; figures are printed per repetition
(wall-clock figures on a shared machine: compare targets within one run).

Every process started is stopped by its PID. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import (
    BIN,
    CLK_TCK,
    LOAD_CORE,
    OUT,
    BenchError,
    Ctx,
    Procs,
    build,
    descendants,
    free_port,
    parse_args,
    start_target,
    stop_instance,
    wait_port,
)

EVENTS = ("ipi:ipi_send_cpu", "sched:sched_wakeup")


def user_system_ticks(pids: list[int]) -> tuple[int, int]:
    """The user and system clock ticks *pids* have used so far (gone ones count 0)."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def perf_counts(out: Path) -> dict[str, int]:
    """The counts of ``perf stat -x,`` output, by event."""
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in EVENTS and parts[0].isdigit():
            counts[parts[2]] = int(parts[0])
    return counts


def one(ctx: Ctx, target: str, seconds: float, workdir: Path) -> dict[str, float]:
    inst = start_target(ctx, target)
    try:
        load = ctx.procs.start("wsload", [
            "taskset", "-c", LOAD_CORE, str(BIN / "wsload"), "-m", "upgrades", "-C", "50",
            "-d", str(seconds + 2), "-w", "1", inst.url,
        ], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # wsload's warm-up (-w 1), and a little more
        stat = workdir / f"{target}.perf"
        pids = descendants(inst.proc.pid) if inst.proc else []
        before = user_system_ticks(pids)
        started = time.monotonic()
        subprocess.run(["perf", "stat", "-a", "-x,", "-o", str(stat), "-e", ",".join(EVENTS),
                        "--", "sleep", str(seconds)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=seconds + 30)
        wall = time.monotonic() - started
        after = user_system_ticks(pids)
        out, _ = load.communicate(timeout=seconds + 30)
        result = json.loads(out.decode().strip().splitlines()[-1])
        if result.get("errors") or not result.get("upgrades"):
            raise BenchError(f"{target}: wsload: {result}")
        upgrades = float(result["upgrades_per_s"]) * wall  # those of perf's interval
        counts = perf_counts(stat)
        return {
            "upgrades_per_s": float(result["upgrades_per_s"]),
            "user_us": (after[0] - before[0]) / CLK_TCK / upgrades * 1e6,
            "system_us": (after[1] - before[1]) / CLK_TCK / upgrades * 1e6,
            "ipis": counts.get(EVENTS[0], 0) / upgrades,
            "wakeups": counts.get(EVENTS[1], 0) / upgrades,
        }
    finally:
        stop_instance(ctx, inst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="nginx,wsproxy")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--wsproxy-cmd", help="as bench/run.py's")
    a = p.parse_args(argv)
    if not shutil.which("perf"):
        print("wakeups: perf is not installed (apt-get install linux-perf)", file=sys.stderr)
        return 2
    run_argv = ["--targets", a.targets, "--figures", "upgrades"]
    if a.wsproxy_cmd:
        run_argv += ["--wsproxy-cmd", a.wsproxy_cmd]
    args = parse_args(run_argv)
    build(args.cc)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wsproxy-wakeups-"))
    try:
        echo_port = free_port()
        echo = procs.start("wsecho", ["taskset", "-c", LOAD_CORE, str(BIN / "wsecho"), "-q",
                                      "-p", str(echo_port)], log=OUT / "logs" / "wsecho.log")
        wait_port(echo_port, echo, 10, "wsecho")
        ctx = Ctx(args, procs, workdir, echo_port, echo, nginx)
        print("| rep | target | upgrades/s | user / system µs an upgrade "
              "| IPIs / wake-ups an upgrade |\n|---|---|---|---|---|")
        for rep in range(a.reps):
            for target in args.targets:
                m = one(ctx, target, a.seconds, workdir)
                print(f"| {rep + 1} | {target} | {m['upgrades_per_s']:,.0f} "
                      f"| {m['user_us']:.0f} / {m['system_us']:.0f} "
                      f"| {m['ipis']:.2f} / {m['wakeups']:.2f} |", flush=True)
    except BenchError as exc:
        print(f"wakeups: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
