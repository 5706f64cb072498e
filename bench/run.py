#!/usr/bin/env python3
"""Side-by-side WebSocket proxy benchmark: direct / nginx / nginx-64k / splice / wsproxy.

    python bench/run.py [--quick] [--reps 3] [--seconds 5] [--targets direct,nginx,...]
                        [--wsproxy-cmd "..."] [--splice-cmd "..."]

Builds bench/bin/wsload and bench/bin/wsecho (C, epoll) when missing or stale,
starts the echo backend on core 1 (beside the load generator) and each proxy on
core 0, measures every figure for every target in the same run (targets
interleaved, repetitions outermost), prints a markdown table with ratios vs
direct, vs nginx and vs splice (bench/splice.py: a Python proxy that only copies
bytes), and writes bench/out/results.json.  See bench/README.md.

Every process it starts is stopped by its PID when it ends, also on Ctrl-C,
SIGTERM or an error.  Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = BENCH / "bin"
OUT = BENCH / "out"
HOST = "127.0.0.1"
PROXY_CORE = "0"
LOAD_CORE = "1"
ALL_TARGETS = ["direct", "nginx", "nginx-64k", "splice", "wsproxy"]
#: Targets run only when named: the engine probe (bench/engine_probe.py: the usual
#: upgrade in C, --probe-python-us of Python an upgrade), for the upgrade figure only
#: (it knows no WebSocket frame, and ends a connection whose write does not go whole).
EXTRA_TARGETS = {"probe": {"upgrades"}}
DEFAULT_WSPROXY_CMD = "{root}/.venv/bin/wsproxy run -c {config}"
#: The no-work ceiling: a Python byte splice on asyncio Protocols + uvloop, run by the
#: repo's venv (which has uvloop).
DEFAULT_SPLICE_CMD = (
    "{root}/.venv/bin/python {root}/bench/splice.py --port {port} --backend {backend}"
)
PROBE_CMD = (
    "{root}/.venv/bin/python {root}/bench/engine_probe.py --port {port} --backend {backend}"
    " --python-us {python_us}"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A failure that ends one measurement or one target, with a message for people."""


# --------------------------------------------------------------------------- processes


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    st = _stat(pid)
    return st[19] if st else None


def descendants(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st:
            children.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for p in pids:
        st = _stat(p)
        if st:
            total += int(st[11]) + int(st[12])  # utime + stime
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
    return total


def cpu_busy_ticks() -> int:
    """Busy ticks of the whole machine (all CPUs), from /proc/stat."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal ...
                return v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return 0


def machine_load(window: float = 0.3) -> float:
    """CPU in use on the whole machine over `window` seconds, in cores."""
    b0, t0 = cpu_busy_ticks(), time.monotonic()
    time.sleep(window)
    return (cpu_busy_ticks() - b0) / CLK_TCK / max(time.monotonic() - t0, 1e-6)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> tuple[float, float]:
    """The machine is shared: wait (at most max_wait s) until nothing else is using more
    than `threshold` of a core.  Returns (seconds waited, last load seen, in cores)."""
    start = time.monotonic()
    load = machine_load()
    while load > threshold and time.monotonic() - start < max_wait:
        load = machine_load(0.5)
    return time.monotonic() - start, load


class Procs:
    """Every process the runner starts, so that each is stopped by its PID."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as fh:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=ROOT,
                    **kw,
                )
        else:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT, **kw
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 8.0) -> None:
        """SIGTERM the PID, then SIGKILL it; then any of its children still alive."""
        if proc.poll() is None:
            kids = [(p, _start_time(p)) for p in descendants(proc.pid) if p != proc.pid]
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
            deadline = time.monotonic() + 3
            for pid, started in kids:
                while _start_time(pid) == started and started is not None:
                    if time.monotonic() > deadline:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        break
                    time.sleep(0.02)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float, what: str) -> None:
    """Wait until 127.0.0.1:port accepts a connection (no blind sleeping)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect((HOST, port))
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what} did not accept connections on port {port} within {timeout:.0f} s"
            )
        time.sleep(0.02)


def tail(path: Path, n: int = 12) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


# --------------------------------------------------------------------------- build


def build(cc: str) -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    for name in ("wsload", "wsecho"):
        src, exe = BENCH / f"{name}.c", BIN / name
        if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
            continue
        cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src)]
        print(f"building: {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True)


# --------------------------------------------------------------------------- targets


@dataclass
class Instance:
    target: str
    url: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []


@dataclass
class Ctx:
    args: argparse.Namespace
    procs: Procs
    workdir: Path
    echo_port: int
    echo_proc: subprocess.Popen[bytes]
    nginx: str | None
    serial: int = 0
    quiet_misses: int = 0
    last_raw: dict[str, Any] = field(default_factory=dict)

    def scratch(self, name: str) -> Path:
        self.serial += 1
        d = self.workdir / f"{name}-{self.serial}"
        d.mkdir(parents=True)
        return d


def start_nginx(ctx: Ctx, target: str) -> Instance:
    if not ctx.nginx:
        raise BenchError("nginx is not installed (apt-get install -y nginx)")
    tmp = ctx.scratch(target)
    port = free_port()
    # proxy_buffer_size is the tunnel's buffer; proxy_buffers and proxy_busy_buffers_size
    # only have to stay consistent with it (nginx refuses the config otherwise)
    buf = (
        "proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;"
        if target == "nginx-64k"
        else ""
    )
    conf = (BENCH / "nginx.conf.tmpl").read_text()
    for key, value in {
        "TMPDIR": str(tmp),
        "PORT": str(port),
        "BACKEND_PORT": str(ctx.echo_port),
        "PROXY_BUFFER": buf,
        "NOFILE": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    }.items():
        conf = conf.replace("{{" + key + "}}", value)
    (tmp / "nginx.conf").write_text(conf)
    log = OUT / "logs" / f"{target}.log"
    argv = [
        "taskset",
        "-c",
        PROXY_CORE,
        ctx.nginx,
        "-p",
        str(tmp),
        "-c",
        str(tmp / "nginx.conf"),
        "-e",
        str(tmp / "error.log"),
    ]
    proc = ctx.procs.start(target, argv, log=log)
    inst = Instance(target, f"ws://{HOST}:{port}/", proc, tmp / "error.log")
    try:
        wait_port(port, proc, 10, target)
    except BenchError as exc:
        ctx.procs.stop(proc)
        raise BenchError(f"{exc}\n{tail(log)}\n{tail(tmp / 'error.log')}") from None
    return inst


def start_command(ctx: Ctx, target: str, cmd: str, port: int) -> Instance:
    """Run *cmd* on the proxy's core, and wait until it listens on *port*."""
    argv = shlex.split(cmd)
    exe = shutil.which(argv[0]) if argv else None
    if not exe:
        raise BenchError(f"cannot run {argv[0] if argv else '(empty command)'!r}: not found")
    log = OUT / "logs" / f"{target}.log"
    proc = ctx.procs.start(target, ["taskset", "-c", PROXY_CORE, *argv], log=log)
    try:
        wait_port(port, proc, 20, target)
    except BenchError as exc:
        ctx.procs.stop(proc)
        raise BenchError(f"{exc} (command: {cmd})\n{tail(log)}") from None
    return Instance(target, f"ws://{HOST}:{port}/", proc, log)


def start_wsproxy(ctx: Ctx, target: str) -> Instance:
    tmp = ctx.scratch(target)
    port, admin = free_port(), free_port()
    config = tmp / "wsproxy.yaml"
    config.write_text(
        "# generated by bench/run.py\n"
        f"listen: {{host: {HOST}, port: {port}}}\n"
        f"admin: {{host: {HOST}, port: {admin}}}\n"
        f'backends: [{{name: echo, url: "ws://{HOST}:{ctx.echo_port}"}}]\n'
        f"logging: {{level: {ctx.args.wsproxy_level}}}\n"
        "limits: {max_connections: 20000}\n"
        "drain: {spread: 1s, timeout: 2s}\n"
    )
    cmd = ctx.args.wsproxy_cmd.format(root=ROOT, config=config)
    return start_command(ctx, target, cmd, port)


def start_splice(ctx: Ctx, target: str, template: str) -> Instance:
    """A Python proxy of the bench's own (splice, probe) from its command *template*."""
    port = free_port()
    cmd = template.format(
        root=ROOT, port=port, backend=f"{HOST}:{ctx.echo_port}",
        python_us=ctx.args.probe_python_us,
    )
    return start_command(ctx, target, cmd, port)


def start_target(ctx: Ctx, target: str) -> Instance:
    if target == "direct":
        return Instance(target, f"ws://{HOST}:{ctx.echo_port}/")
    if target.startswith("nginx"):
        return start_nginx(ctx, target)
    if target == "wsproxy":
        return start_wsproxy(ctx, target)
    if target == "splice":
        return start_splice(ctx, target, ctx.args.splice_cmd)
    if target == "probe":
        return start_splice(ctx, target, PROBE_CMD)
    raise BenchError(f"unknown target {target}")


def stop_instance(ctx: Ctx, inst: Instance) -> None:
    if inst.proc is not None:
        ctx.procs.stop(inst.proc)


# --------------------------------------------------------------------------- wsload


@dataclass
class LoadRun:
    result: dict[str, Any]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU share over the measured window
    rss: dict[str, int] = field(default_factory=dict)


def run_wsload(
    ctx: Ctx,
    inst: Instance,
    wsload_args: list[str],
    *,
    on_ready: Callable[[], dict[str, int]] | None = None,
    budget: float = 60.0,
) -> LoadRun:
    """Run the load generator on the load core, sampling the CPU time of the proxy and
    the echo backend over exactly its measured interval (it prints MEASURE START/END)."""
    argv = ["taskset", "-c", LOAD_CORE, str(BIN / "wsload"), *wsload_args, inst.url]
    watched = {"proxy": inst.pids, "echo": lambda: [ctx.echo_proc.pid]}
    marks: dict[str, tuple[float, dict[str, int]]] = {}
    ready = threading.Event()
    err_lines: list[str] = []
    out_chunks: list[bytes] = []

    def sample() -> tuple[float, dict[str, int]]:
        ticks = {k: cpu_ticks(f()) for k, f in watched.items()}
        ticks["machine"] = cpu_busy_ticks()
        return time.monotonic(), ticks

    proc = ctx.procs.start("wsload", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read_err() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line == "MEASURE START":
                marks["start"] = sample()
            elif line == "MEASURE END":
                marks["end"] = sample()
            elif line.startswith("READY"):
                ready.set()
            else:
                err_lines.append(line)

    def read_out() -> None:
        assert proc.stdout is not None
        out_chunks.append(proc.stdout.read())

    threads = [
        threading.Thread(target=read_err, daemon=True),
        threading.Thread(target=read_out, daemon=True),
    ]
    for t in threads:
        t.start()
    rss: dict[str, int] = {}
    try:
        if on_ready is not None:
            deadline = time.monotonic() + budget
            while not ready.wait(0.1):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
            if ready.is_set():
                rss = on_ready()
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        ctx.procs.stop(proc)
        raise BenchError(f"wsload did not finish within {budget:.0f} s") from None
    finally:
        for t in threads:
            t.join(5)
        ctx.procs.stop(proc)
    text = b"".join(out_chunks).decode(errors="replace").strip()
    try:
        result = json.loads(text.splitlines()[-1]) if text else {}
    except json.JSONDecodeError:
        result = {}
    if not result or "error" in result:
        why = result.get("error") if result else f"no result (exit {proc.returncode})"
        raise BenchError(f"wsload {' '.join(wsload_args)}: {why}; " + "; ".join(err_lines[-3:]))
    cpu: dict[str, float] = {"loadgen": float(result.get("cpu_util", 0.0))}
    if "start" in marks and "end" in marks:
        (t0, c0), (t1, c1) = marks["start"], marks["end"]
        wall = max(t1 - t0, 1e-6)
        for k in watched:
            cpu[k] = (c1[k] - c0[k]) / CLK_TCK / wall
        # whatever else ran on the machine meanwhile (other users' jobs), in cores
        machine = (c1["machine"] - c0["machine"]) / CLK_TCK / wall
        cpu["other"] = max(0.0, machine - cpu["loadgen"] - cpu["proxy"] - cpu["echo"])
    if err_lines:
        result["stderr"] = err_lines[-5:]
    return LoadRun(result, cpu, rss)


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    key: str
    title: str
    wsload: Callable[[argparse.Namespace], list[str]]
    metrics: Callable[[LoadRun], dict[str, float]]
    fresh_instance: bool = False  # measured on a newly started proxy (RSS)
    skip_direct: bool = False


def _common(a: argparse.Namespace) -> list[str]:
    return ["-d", str(a.seconds), "-w", str(a.warmup)]


def _rate_metrics(run: LoadRun) -> dict[str, float]:
    r = run.result
    m = {"msg_per_s": float(r["msg_per_s"]), "errors": float(r.get("errors", 0))}
    m.update({f"cpu_{k}": v for k, v in run.cpu.items()})
    return m


def _latency_metrics(run: LoadRun) -> dict[str, float]:
    r = run.result
    lat = r.get("latency_us", {})
    m = {
        "p50_us": float(lat.get("p50", 0)),
        "p90_us": float(lat.get("p90", 0)),
        "p99_us": float(lat.get("p99", 0)),
        "max_us": float(lat.get("max", 0)),
        "samples": float(r.get("samples", 0)),
        "errors": float(r.get("errors", 0)),
    }
    m.update({f"cpu_{k}": v for k, v in run.cpu.items()})
    return m


def _idle_metrics(run: LoadRun) -> dict[str, float]:
    r = run.result
    held = int(r.get("held", 0)) or int(r.get("connections", 0))
    before, during = run.rss.get("before", 0), run.rss.get("during", 0)
    if not during or not held:
        raise BenchError("idle test: no RSS sample while the connections were held")
    return {
        "rss_per_conn_bytes": (during - before) / held,
        "held": float(held),
        "rss_before_bytes": float(before),
        "rss_during_bytes": float(during),
        "errors": float(r.get("errors", 0)),
        "setup_s": float(r.get("setup_s", 0)),
    }


def _upgrade_metrics(run: LoadRun) -> dict[str, float]:
    r = run.result
    m = {
        "upgrades_per_s": float(r["upgrades_per_s"]),
        "errors": float(r.get("errors", 0)),
        "close_timeouts": float(r.get("close_timeouts", 0)),
    }
    m.update({f"cpu_{k}": v for k, v in run.cpu.items()})
    return m


FIGURES = [
    Figure(
        "tp64",
        "msg/s, 100 conns, 64 B",
        lambda a: ["-m", "throughput", "-c", "100", "-s", "64", "-W", "16", *_common(a)],
        _rate_metrics,
    ),
    Figure(
        "tp4k",
        "msg/s, 100 conns, 4 KiB",
        lambda a: ["-m", "throughput", "-c", "100", "-s", "4096", "-W", "16", *_common(a)],
        _rate_metrics,
    ),
    Figure(
        "pingpong",
        "ping-pong msg/s, 100 conns",
        lambda a: ["-m", "pingpong", "-c", "100", "-s", "64", *_common(a)],
        _rate_metrics,
    ),
    Figure(
        "latency",
        "latency p50 / p99 µs (2k msg/s)",
        lambda a: ["-m", "latency", "-c", "100", "-s", "64", "-r", "2000", *_common(a)],
        _latency_metrics,
    ),
    Figure(
        "idle_rss",
        "RSS per idle conn",
        lambda a: [
            "-m",
            "idle",
            "-c",
            str(a.idle_conns),
            "-d",
            str(a.idle_hold + 1),
            "-T",
            "60",
            "-S",
            "100",
        ],
        _idle_metrics,
        fresh_instance=True,
        skip_direct=True,
    ),
    Figure(
        "upgrades",
        "upgrades/s",
        lambda a: ["-m", "upgrades", "-C", "50", *_common(a)],
        _upgrade_metrics,
    ),
]


def measure(ctx: Ctx, fig: Figure, inst: Instance) -> dict[str, float]:
    a = ctx.args
    args = fig.wsload(a)
    budget = a.seconds + a.warmup + 90
    if ctx.quiet_misses >= 2:  # not quiet lately: don't wait, just record the load
        waited, load = 0.0, machine_load()
        if load <= 0.15:
            ctx.quiet_misses = 0  # quiet again: wait before the next figures
    elif a.quiet_wait > 0:
        waited, load = wait_quiet(a.quiet_wait)
        ctx.quiet_misses = ctx.quiet_misses + 1 if load > 0.15 else 0
        if ctx.quiet_misses == 2:
            print(
                f"warning: other processes keep {load:.0%} of a core busy; measuring "
                "without waiting until it is quiet again (see 'other' in the CPU table)",
                file=sys.stderr,
            )
    else:
        waited, load = 0.0, machine_load()
    extra = {"quiet_wait_s": waited, "load_before": load}
    if fig.key != "idle_rss":
        run = run_wsload(ctx, inst, args, budget=budget)
    else:
        before = rss_bytes(inst.pids())

        def on_ready() -> dict[str, int]:
            time.sleep(a.idle_hold / 2)  # let the proxy settle with everything open
            return {"before": before, "during": rss_bytes(inst.pids())}

        run = run_wsload(ctx, inst, args, on_ready=on_ready, budget=budget)
    ctx.last_raw = run.result  # the load generator's own report, kept in results.json
    for k in ("connect_errors", "unexpected_closes", "size_errors"):
        extra[k] = float(run.result.get(k, 0))
    return {**fig.metrics(run), **extra}


# --------------------------------------------------------------------------- report


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 10_000:
        return f"{x / 1000:,.0f} k"
    if x >= 1000:
        return f"{x / 1000:.1f} k"
    return f"{x:,.0f}"


def fmt_ratio(x: float | None, ref: float | None) -> str:
    if x is None or not ref:
        return "—"
    return f"{x / ref:.2f}\N{MULTIPLICATION SIGN}"


def med(results: dict[str, Any], target: str, fig: str, metric: str) -> float | None:
    value = (
        results["targets"]
        .get(target, {})
        .get("figures", {})
        .get(fig, {})
        .get("median", {})
        .get(metric)
    )
    return None if value is None else float(value)


def render(results: dict[str, Any], targets: list[str]) -> str:
    cols = [f.title for f in FIGURES]
    rate_cols = [("tp64", "msg_per_s"), ("tp4k", "msg_per_s"), ("pingpong", "msg_per_s")]
    live = [t for t in targets if results["targets"][t]["status"] == "ok"]
    names = {
        "direct": "direct (no proxy)",
        "nginx": f"nginx {results['meta']['nginx']}",
        "nginx-64k": "nginx, proxy_buffer_size 64k",
        "splice": "splice (Python, no work)",
        "wsproxy": "wsproxy",
        "probe": f"engine probe (C, {results['meta'].get('probe_python_us', 0):g} µs Python)",
    }

    def row(t: str) -> list[str]:
        cells = [fmt_rate(med(results, t, f, m)) for f, m in rate_cols]
        p50, p99 = med(results, t, "latency", "p50_us"), med(results, t, "latency", "p99_us")
        cells.append("—" if p50 is None or p99 is None else f"{p50:,.0f} / {p99:,.0f}")
        rss = med(results, t, "idle_rss", "rss_per_conn_bytes")
        cells.append("—" if rss is None else f"{rss / 1024:.1f} KiB")
        cells.append(fmt_rate(med(results, t, "upgrades", "upgrades_per_s")))
        return cells

    def ratio_row(t: str, ref: str) -> list[str]:
        cells = [fmt_ratio(med(results, t, f, m), med(results, ref, f, m)) for f, m in rate_cols]
        p50, p99 = (
            fmt_ratio(med(results, t, "latency", k), med(results, ref, "latency", k))
            for k in ("p50_us", "p99_us")
        )
        cells.append(f"{p50} / {p99}")
        cells.append(
            fmt_ratio(
                med(results, t, "idle_rss", "rss_per_conn_bytes"),
                med(results, ref, "idle_rss", "rss_per_conn_bytes"),
            )
        )
        cells.append(
            fmt_ratio(
                med(results, t, "upgrades", "upgrades_per_s"),
                med(results, ref, "upgrades", "upgrades_per_s"),
            )
        )
        return cells

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return out

    meta = results["meta"]
    lines = [
        f"### wsproxy bench — {meta['date']}, {meta['reps']} rep(s) of {meta['seconds']} s "
        f"per figure, medians; idle test holds {meta['idle_conns']:,} connections",
        "",
    ]
    lines += table(["target", *cols], [[names[t], *row(t)] for t in live])
    for ref in ("direct", "nginx", "splice"):
        if ref in live and len(live) > 1:
            lines += [
                "",
                f"Ratio vs {ref} (msg/s and upgrades/s: higher is better; "
                "latency and RSS: lower is better)",
                "",
            ]
            lines += table(
                ["target", *cols], [[names[t], *ratio_row(t, ref)] for t in live if t != ref]
            )

    # Is the load side saturated?  Core 1 = wsload + wsecho; core 0 = the proxy.
    lines += [
        "",
        "CPU use over each measured interval (medians): load core = wsload + wsecho "
        "(core 1), proxy = the proxy's processes (core 0). 100% = one core.",
        "",
    ]
    cpu_figs = [f for f in FIGURES if f.key in ("tp64", "tp4k", "pingpong", "upgrades")]
    cpu_rows = []
    for t in live:
        cells = []
        for f in cpu_figs:
            lg, ec = med(results, t, f.key, "cpu_loadgen"), med(results, t, f.key, "cpu_echo")
            px = med(results, t, f.key, "cpu_proxy")
            if lg is None or ec is None:
                cells.append("—")
                continue
            proxy = "—" if t == "direct" or px is None else f"{px:.0%}"
            other = med(results, t, f.key, "cpu_other") or 0.0
            note = f" (other {other:.0%})" if other >= 0.05 else ""
            cells.append(f"{lg:.0%} + {ec:.0%} = {lg + ec:.0%} / {proxy}{note}")
        cpu_rows.append([names[t], *cells])
    lines += table(["target (load core / proxy)", *[f.title for f in cpu_figs]], cpu_rows)
    lines += [
        "",
        '"other" is CPU used by processes not started by this run (the machine '
        "is shared); figures measured while it was high are not trustworthy.",
    ]

    verdicts = []
    for t in live:
        if t == "direct":
            continue
        for f in cpu_figs:
            lg, ec = med(results, t, f.key, "cpu_loadgen"), med(results, t, f.key, "cpu_echo")
            px = med(results, t, f.key, "cpu_proxy")
            if lg is None or ec is None or px is None:
                continue
            if px >= 0.9:
                continue
            if lg + ec >= 0.9:
                verdicts.append(
                    f"- {names[t]}, {f.title}: the load core is busy "
                    f"({lg + ec:.0%}) and the proxy is not ({px:.0%}); this "
                    "figure is bounded by the load side, a floor for the proxy."
                )
    if verdicts:
        lines += ["", "Figures not bounded by the proxy:", *verdicts]

    problems = []
    for t in live:
        for f in FIGURES:
            errs = med(results, t, f.key, "errors")
            if errs:
                problems.append(f"- {names[t]}, {f.title}: {errs:.0f} errors (median)")
            reps = results["targets"][t]["figures"].get(f.key, {}).get("reps", [])
            noisy = [r.get("cpu_other", r.get("load_before", 0.0)) for r in reps]
            noisy = [x for x in noisy if x >= 0.15]
            if noisy:
                problems.append(
                    f"- {names[t]}, {f.title}: {len(noisy)} of {len(reps)} rep(s) "
                    f"ran beside other load (up to {max(noisy):.0%} of a core)"
                )
        for f, why in results["targets"][t].get("failures", {}).items():
            problems.append(f"- {names[t]}, {f}: not measured: {why}")
    skipped = [t for t in targets if results["targets"][t]["status"] != "ok"]
    for t in skipped:
        problems.append(f"- {names[t]}: skipped: {results['targets'][t]['reason']}")
    if problems:
        lines += ["", "Errors and skips:", *problems]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def raise_nofile() -> int:
    """10,000 idle clients through a proxy need ~20,000 descriptors in it; the children
    inherit this limit.  Returns the soft limit now in force."""
    want = 65536
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):  # raising the hard limit needs CAP_SYS_RESOURCE
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 rep, 2 s per figure, 2000 idle connections",
    )
    p.add_argument("--reps", type=int, help="repetitions, median reported (default 3)")
    p.add_argument("--seconds", type=float, help="measured seconds per figure (default 5)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each figure (default 1)")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma list out of {','.join([*ALL_TARGETS, *EXTRA_TARGETS])} (default: "
        f"{','.join(ALL_TARGETS)})",
    )
    p.add_argument(
        "--figures",
        default=",".join(f.key for f in FIGURES),
        help=f"comma list out of {','.join(f.key for f in FIGURES)} (default: all)",
    )
    p.add_argument("--idle-conns", type=int, help="connections held for RSS (default 10000)")
    p.add_argument(
        "--wsproxy-cmd",
        default=DEFAULT_WSPROXY_CMD,
        help="command that runs wsproxy; {config} is the generated YAML file and "
        "{root} the repo (default: %(default)s)",
    )
    p.add_argument(
        "--wsproxy-level",
        default="info",
        help="wsproxy's logging.level (default %(default)s, the default config's: a "
        "connection.opened and a connection.closed line per upgrade)",
    )
    p.add_argument(
        "--splice-cmd",
        default=DEFAULT_SPLICE_CMD,
        help="command that runs the splice target; {port} is its port, {backend} the "
        "echo server's HOST:PORT, {root} the repo (default: %(default)s)",
    )
    p.add_argument(
        "--probe-python-us",
        type=float,
        default=35.0,
        help="the probe target's Python work an upgrade, in µs (default %(default)s: "
        "what leaves it at half of nginx's upgrades on the machine of issue 18)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each figure, wait up to this many seconds for other "
        "processes on this shared machine to go quiet (0: don't wait; "
        "default %(default)s)",
    )
    p.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler")
    p.add_argument("--out", type=Path, default=OUT / "results.json")
    a = p.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    a.seconds = a.seconds or (2.0 if a.quick else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 1.0)
    a.idle_conns = a.idle_conns or (2000 if a.quick else 10000)
    a.idle_hold = 2.0
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    a.figures = [f.strip() for f in a.figures.split(",") if f.strip()]
    bad = [t for t in a.targets if t not in ALL_TARGETS and t not in EXTRA_TARGETS]
    bad += [f for f in a.figures if f not in {x.key for x in FIGURES}]
    if bad:
        p.error(f"unknown target or figure: {', '.join(bad)}")
    if not 0 < a.seconds <= 60:
        p.error("--seconds must be in (0, 60]")
    if not 0 <= a.warmup <= 10:
        p.error("--warmup must be in [0, 10]")
    if not 1 <= a.idle_conns <= 10000:
        p.error("--idle-conns must be in 1..10000")
    if not 1 <= a.reps <= 20:
        p.error("--reps must be in 1..20")
    return a


def environment(nginx: str | None) -> dict[str, Any]:
    def run(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return (r.stdout + r.stderr).strip()

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = run([nginx, "-v"]).rsplit("/", 1)[-1] if nginx else ""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "nginx": version or "(none)",
        "git": run(["git", "rev-parse", "--short", "HEAD"]),
        "proxy_core": PROXY_CORE,
        "load_core": LOAD_CORE,
    }


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    # also when started with SIGINT ignored (a background job of a script)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print(
            "warning: fewer than 2 CPUs; pinning proxy and load apart is impossible",
            file=sys.stderr,
        )
    build(a.cc)
    nofile = raise_nofile()
    # A proxy holding N idle clients has 2 N sockets; where the hard limit cannot be raised
    # (no CAP_SYS_RESOURCE), hold fewer rather than have the last ones fail.
    fit = (nofile - 200) // 2
    if a.idle_conns > fit:
        print(
            f"note: the file-descriptor limit is {nofile} and cannot be raised here; the "
            f"idle test holds {fit} connections instead of {a.idle_conns}",
            file=sys.stderr,
        )
        a.idle_conns = fit
    OUT.mkdir(parents=True, exist_ok=True)
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    figures = [f for f in FIGURES if f.key in a.figures]
    results: dict[str, Any] = {
        "meta": {
            **environment(nginx),
            "reps": a.reps,
            "seconds": a.seconds,
            "warmup": a.warmup,
            "idle_conns": a.idle_conns,
            "probe_python_us": a.probe_python_us,
            "fd_limit": nofile,
            "argv": sys.argv[1:],
        },
        "targets": {t: {"status": "pending", "figures": {}} for t in a.targets},
    }
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wsproxy-bench-"))
    raw: dict[str, dict[str, list[dict[str, float]]]] = {t: {} for t in a.targets}
    loadgen: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in a.targets}
    interrupted = False
    with sigterm_as_interrupt():
        try:
            echo_port = free_port()
            echo = procs.start(
                "wsecho",
                ["taskset", "-c", LOAD_CORE, str(BIN / "wsecho"), "-q", "-p", str(echo_port)],
                log=OUT / "logs" / "wsecho.log",
            )
            wait_port(echo_port, echo, 10, "wsecho")
            ctx = Ctx(a, procs, workdir, echo_port, echo, nginx)

            instances: dict[str, Instance] = {}
            for t in a.targets:
                try:
                    inst = start_target(ctx, t)
                    # one real WebSocket round trip before trusting the target
                    pre = run_wsload(
                        ctx,
                        inst,
                        ["-m", "pingpong", "-c", "2", "-d", "0.3", "-w", "0", "-T", "5"],
                        budget=20,
                    )
                    if pre.result.get("errors") or not pre.result.get("messages"):
                        stop_instance(ctx, inst)
                        raise BenchError(
                            "started, but failed a WebSocket echo check: " + json.dumps(pre.result)
                        )
                    instances[t] = inst
                    results["targets"][t]["status"] = "ok"
                except BenchError as exc:
                    results["targets"][t].update(status="skipped", reason=str(exc))
                    print(f"[{t}] skipped: {exc}", file=sys.stderr)

            for rep in range(a.reps):
                for fig in figures:
                    for t, inst in instances.items():
                        if fig.skip_direct and t == "direct":
                            continue
                        if fig.key not in EXTRA_TARGETS.get(t, {fig.key}):
                            continue
                        label = f"rep {rep + 1}/{a.reps} {fig.key:9} {t:10}"
                        fresh = None
                        try:
                            if fig.fresh_instance:
                                fresh = start_target(ctx, t)
                            m = measure(ctx, fig, fresh or inst)
                        except BenchError as exc:
                            results["targets"][t].setdefault("failures", {})[fig.key] = str(exc)
                            print(f"{label} FAILED: {exc}", file=sys.stderr)
                            continue
                        finally:
                            if fresh is not None:
                                stop_instance(ctx, fresh)
                        raw[t].setdefault(fig.key, []).append(m)
                        loadgen[t].setdefault(fig.key, []).append(ctx.last_raw)
                        shown = {
                            k: round(v, 3) if isinstance(v, float) else v
                            for k, v in m.items()
                            if not k.startswith("cpu_")
                        }
                        cpu = {k[4:]: f"{v:.0%}" for k, v in m.items() if k.startswith("cpu_")}
                        print(f"{label} {shown} cpu={cpu}", file=sys.stderr)
        except KeyboardInterrupt:
            interrupted = True
            print(
                "\ninterrupted: stopping everything and reporting what was measured",
                file=sys.stderr,
            )
        finally:
            procs.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)

    for t in a.targets:
        for key, runs in raw[t].items():
            metrics = sorted({k for r in runs for k in r})
            results["targets"][t]["figures"][key] = {
                "median": {k: statistics.median(r[k] for r in runs if k in r) for k in metrics},
                "reps": runs,
                "loadgen": loadgen[t].get(key, []),
            }
    results["meta"]["interrupted"] = interrupted
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    report = render(results, a.targets)
    print(report)
    (a.out.parent / "results.md").write_text(report + "\n")
    print(f"\n(results: {a.out})", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
