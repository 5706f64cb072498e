#!/usr/bin/env python3
"""Soak: many WebSocket connections held through wsproxy for minutes, with heartbeats.

    python bench/soak.py                        # 10,000 connections (or what fits), 10 min
    python bench/soak.py --minutes 2 --conns 2000 --rate 200

Starts bench/bin/wsecho (built as bench/run.py builds it) and ``wsproxy run`` in front
of it (``heartbeat.interval`` 20 s, so the proxy pings both legs of every connection),
opens N connections through the proxy, holds them for D minutes with light traffic
(``--rate`` messages per second in total, round-robin over all connections, each echo
checked byte for byte and in order) and answers every ping. Every 10 s it samples the
proxy's RSS (``/proc/PID/statm``) and CPU time (``/proc/PID/stat``) and scrapes its
``/metrics`` (open connections, heartbeat round trips per leg).

At the end it sends one more message on every connection and waits for every echo:
a connection is alive when that echo came back and it never saw a close or an EOF.
The run passes when every connection is alive, with no unexpected close and no error.

It reports the memory per connection (RSS held - RSS before, / connections), whether
RSS grows while the connections are held (a least-squares slope over the samples), and
the proxy's CPU use. It prints a table and writes bench/out/soak.json.

The client is this script (asyncio, uvloop where installed): wsload holds connections
for at most 60 s, too short for a soak. A proxy holding N clients has 2 N sockets; where
the descriptor limit cannot be raised to fit (a hard limit of 20,000 here), it holds
(limit - 200) / 2 = 9,900 connections instead and says so, as bench/run.py does.

Every process it starts is stopped by its PID at the end, also on Ctrl-C or an error.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import struct
import sys
import tempfile
import time
import typing
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = base64.b64encode(b"wsproxy-soak-key").decode()
ACCEPT = base64.b64encode(hashlib.sha1(KEY.encode() + GUID).digest()).decode()
REQUEST = (
    f"GET /soak HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
PING, PONG, CLOSE, TEXT, BINARY = 0x9, 0xA, 0x8, 0x1, 0x2
SAMPLE_EVERY = 10.0
#: An echo slower than this is listed with its time, to tell stalls from noise.
SLOW = 0.05
#: Bounds: opening every connection, the final echo sweep, the closing handshakes.
OPEN_BUDGET = 120.0
SWEEP_BUDGET = 60.0
CLOSE_BUDGET = 30.0


def load_runner() -> ModuleType:
    """bench/run.py, for its process helpers (build, Procs, /proc sampling)."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the client


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads here are under 126 bytes)."""
    assert len(payload) < 126
    key = random.getrandbits(32).to_bytes(4, "big")
    n = len(payload)
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return bytes((0x80 | opcode, 0x80 | n)) + key + (masked if n else b"")


class Stats:
    """What every connection of the pool adds up to."""

    def __init__(self) -> None:
        self.sent = 0
        self.echoed = 0
        self.pings = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.unexpected_closes: collections.Counter[str] = collections.Counter()
        self.rtts: list[float] = []
        #: (when, round trip) of every echo slower than SLOW, to find stalls.
        self.slow: list[tuple[float, float]] = []
        #: Round trips are kept while the connections are held, not for the final sweep.
        self.timing = True


class Conn(asyncio.Protocol):
    """One client connection: the upgrade, then echoes checked in order, pings answered."""

    def __init__(self, stats: Stats, opened: asyncio.Future[None]) -> None:
        self.stats = stats
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.gone: str | None = None  # why it ended, if it did
        self.closing = False  # we sent our close: its answer is expected
        self.outstanding: collections.deque[tuple[bytes, float]] = collections.deque()
        self.seq = 0
        self.swept = False

    # asyncio callbacks…

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = typing.cast(asyncio.Transport, transport)
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    self._fail("error", "response head too large")
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            accept = [v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
                      if k.strip().lower() == "sec-websocket-accept"]
            if lines[0].split(" ")[1:2] != ["101"] or accept != [ACCEPT]:
                self._fail("error", f"bad upgrade answer: {lines[0]!r}")
                return
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        self._frames()

    def eof_received(self) -> bool:
        self._lost("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("reset" if exc else "eof")

    # frames…

    def _frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if b1 & 0x80:
                self._fail("error", "masked frame from the server")
                return
            if n >= 126:
                size = 2 if n == 126 else 8
                if len(buf) < 2 + size:
                    return
                n, pos = int.from_bytes(buf[2 : 2 + size], "big"), 2 + size
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            self._frame(b0 & 0x0F, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self.stats.pings += 1
            self._write(frame(PONG, payload))
        elif opcode in (TEXT, BINARY):
            self._echo(payload)
        elif opcode == CLOSE:
            code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "none"
            if self.closing:
                self.gone = "closed"
            else:
                self._fail("close", code)
        elif opcode != PONG:
            self._fail("error", f"unexpected opcode {opcode}")

    def _echo(self, payload: bytes) -> None:
        if not self.outstanding:
            self._fail("error", "an echo nobody asked for")
            return
        expected, sent_at = self.outstanding.popleft()
        if payload != expected:
            self._fail("error", "echo out of order or corrupted")
            return
        self.stats.echoed += 1
        if self.stats.timing:
            rtt = time.monotonic() - sent_at
            self.stats.rtts.append(rtt)
            if rtt > SLOW:
                self.stats.slow.append((sent_at, rtt))

    # sending…

    def send_message(self) -> bool:
        if self.gone is not None or not self.upgraded or self.closing:
            return False
        payload = struct.pack("!IQ", self.seq, time.monotonic_ns())
        self.seq += 1
        self.outstanding.append((payload, time.monotonic()))
        self.stats.sent += 1
        self._write(frame(BINARY, payload))
        return True

    def close(self) -> None:
        if self.gone is None and self.upgraded and not self.closing:
            self.closing = True
            self._write(frame(CLOSE, struct.pack("!H", 1000)))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # endings…

    def _lost(self, how: str) -> None:
        if self.gone is None:
            if self.closing:
                self.gone = "closed"
            else:
                self._fail("close", how)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost before the upgrade ({how})"))

    def _fail(self, kind: str, what: str) -> None:
        if self.gone is not None:
            return
        self.gone = f"{kind}: {what}"
        counter = self.stats.unexpected_closes if kind == "close" else self.stats.errors
        counter[what] += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(self.gone))
        if self.transport is not None:
            self.transport.abort()

    @property
    def alive(self) -> bool:
        return self.gone is None and self.upgraded


async def open_pool(port: int, n: int, stats: Stats, log: Any) -> list[Conn]:
    """Open *n* connections, at most 200 handshakes at a time."""
    loop = asyncio.get_running_loop()
    conns: list[Conn] = []
    gate = asyncio.Semaphore(200)
    failures: collections.Counter[str] = collections.Counter()

    async def one() -> None:
        async with gate:
            opened: asyncio.Future[None] = loop.create_future()
            conn = Conn(stats, opened)
            try:
                await loop.create_connection(lambda: conn, HOST, port)
                await asyncio.wait_for(opened, 15)
            except (OSError, TimeoutError, ConnectionError) as exc:
                failures[type(exc).__name__] += 1
                if conn.transport is not None:
                    conn.transport.abort()
                return
            conns.append(conn)
            if len(conns) % 1000 == 0:
                log(f"  {len(conns):,} connections open")

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), OPEN_BUDGET)
    for name, count in failures.items():
        stats.errors[f"connect: {name}"] += count
    return conns


async def traffic(conns: list[Conn], rate: float, stop: asyncio.Event) -> None:
    """*rate* messages a second in total, round-robin over the connections."""
    tick, credit, i = 0.05, 0.0, 0
    last = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
        now = time.monotonic()
        credit += rate * (now - last)
        last = now
        tries = 0
        while credit >= 1 and tries < len(conns):
            conn = conns[i % len(conns)]
            i += 1
            tries += 1
            if conn.send_message():
                credit -= 1
        credit = min(credit, rate)  # no catching up after a stall


async def wait_until(predicate: Any, budget: float) -> bool:
    deadline = time.monotonic() + budget
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --------------------------------------------------------------------------- sampling


def scrape(admin_port: int) -> dict[str, float]:
    """A few figures from the proxy's /metrics (sums over labels)."""
    wanted = {
        "wsproxy_connections_active": "active",
        'wsproxy_ping_rtt_seconds_count{leg="client"}': "pongs_client",
        'wsproxy_ping_rtt_seconds_count{leg="upstream"}': "pongs_upstream",
    }
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        for prefix, key in wanted.items():
            if name == prefix or (name.startswith(prefix + "{") and "{" not in prefix):
                out[key] = out.get(key, 0.0) + float(value)
    return out


class Sampler:
    def __init__(self, runner: ModuleType, pid: int, admin_port: int, echo_pid: int) -> None:
        self.runner, self.pid, self.admin_port, self.echo_pid = runner, pid, admin_port, echo_pid
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def pids(self) -> list[int]:
        return list(self.runner.descendants(self.pid))

    async def sample(self, phase: str, stats: Stats, conns: list[Conn]) -> dict[str, Any]:
        r = self.runner
        t = time.monotonic()
        metrics = await asyncio.to_thread(scrape, self.admin_port)
        s = {
            "t": round(t - self.t0, 1),
            "scrape_ms": round((time.monotonic() - t) * 1e3, 1),
            "phase": phase,
            "rss": r.rss_bytes(self.pids()),
            "cpu_ticks": r.cpu_ticks(self.pids()),
            "echo_cpu_ticks": r.cpu_ticks([self.echo_pid]),
            "client_cpu": round(sum(os.times()[:2]), 2),
            "alive": sum(1 for c in conns if c.alive),
            "sent": stats.sent,
            "echoed": stats.echoed,
            "pings": stats.pings,
            "unexpected_closes": sum(stats.unexpected_closes.values()),
            "errors": sum(stats.errors.values()),
            **metrics,
        }
        self.samples.append(s)
        return s


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


# --------------------------------------------------------------------------- the run


def write_config(path: Path, port: int, admin: int, echo_port: int, heartbeat: str) -> None:
    path.write_text(
        "# generated by bench/soak.py\n"
        f"listen: {{host: {HOST}, port: {port}}}\n"
        f"admin: {{host: {HOST}, port: {admin}}}\n"
        f'backends: [{{name: echo, url: "ws://{HOST}:{echo_port}"}}]\n'
        "logging: {level: warning}\n"
        "limits: {max_connections: 20000}\n"
        f"heartbeat: {{interval: {heartbeat}, timeout: 10s}}\n"
        "drain: {spread: 1s, timeout: 5s}\n"
    )


async def soak(
    a: argparse.Namespace, runner: ModuleType, procs: Any, workdir: Path
) -> dict[str, Any]:
    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    logs = runner.OUT / "logs"
    echo_port, port, admin = runner.free_port(), runner.free_port(), runner.free_port()
    echo_argv = [str(runner.BIN / "wsecho"), "-q", "-p", str(echo_port)]
    echo = procs.start("wsecho", (["taskset", "-c", "1"] if pin else []) + echo_argv,
                       log=logs / "soak-wsecho.log")
    runner.wait_port(echo_port, echo, 10, "wsecho")
    config = workdir / "wsproxy.yaml"
    write_config(config, port, admin, echo_port, a.heartbeat)
    argv = shlex.split(a.wsproxy_cmd.format(root=ROOT, config=config))
    proxy = procs.start("wsproxy", (["taskset", "-c", "0"] if pin else []) + argv,
                        log=logs / "soak-wsproxy.log")
    runner.wait_port(port, proxy, 20, "wsproxy")
    if pin:
        os.sched_setaffinity(0, {1})  # this client beside the echo server, as wsload is
    sampler = Sampler(runner, proxy.pid, admin, echo.pid)
    stats = Stats()
    conns: list[Conn] = []
    before = await sampler.sample("before", stats, conns)
    log(f"proxy RSS before: {before['rss'] / 2**20:.1f} MiB; opening {a.conns:,} connections")

    t_open = time.monotonic()
    conns = await open_pool(port, a.conns, stats, log)
    open_s = time.monotonic() - t_open
    log(f"{len(conns):,} connections open in {open_s:.1f} s; holding for {a.minutes} min")

    stop = asyncio.Event()
    sender = asyncio.create_task(traffic(conns, a.rate, stop))
    hold_start = time.monotonic()
    hold_end = hold_start + a.minutes * 60
    samples = [await sampler.sample("hold", stats, conns)]
    print_row(samples[-1], header=True)
    while time.monotonic() < hold_end:
        await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, hold_end - time.monotonic())))
        samples.append(await sampler.sample("hold", stats, conns))
        print_row(samples[-1])
    stop.set()
    await sender
    hold_s = time.monotonic() - hold_start

    # Every connection once more: alive means this echo came back.
    await wait_until(lambda: all(not c.outstanding or c.gone for c in conns), SWEEP_BUDGET)
    stats.timing = False
    swept = [c for c in conns if c.send_message()]
    await wait_until(lambda: all(not c.outstanding or c.gone for c in swept), SWEEP_BUDGET)
    alive = sum(1 for c in conns if c.alive and not c.outstanding)
    lost_echoes = sum(len(c.outstanding) for c in conns if c.gone is None)
    end = await sampler.sample("end", stats, conns)

    for c in conns:
        c.close()
    await wait_until(lambda: all(c.gone is not None for c in conns), CLOSE_BUDGET)
    closed_cleanly = sum(1 for c in conns if c.gone == "closed")

    summary = summarize(a, before, samples, end, stats, conns, alive, lost_echoes,
                        closed_cleanly, open_s, hold_s, pin)
    summary["slow_echo_clusters"] = clusters(stats.slow, sampler.t0)
    return {"summary": summary, "samples": sampler.samples}


def clusters(slow: list[tuple[float, float]], t0: float) -> list[dict[str, float]]:
    """Slow echoes grouped by when they were sent (a gap of 1 s starts a new group)."""
    out: list[dict[str, float]] = []
    for sent_at, rtt in sorted(slow):
        t = sent_at - t0
        if out and t - out[-1]["last"] <= 1.0:
            group = out[-1]
            group["count"] += 1
            group["last"] = t
            group["max_ms"] = max(group["max_ms"], round(rtt * 1e3, 1))
        else:
            out.append({"t": round(t, 2), "last": t, "count": 1, "max_ms": round(rtt * 1e3, 1)})
    for group in out:
        group["last"] = round(group["last"], 2)
    return out


def summarize(a: argparse.Namespace, before: dict[str, Any], samples: list[dict[str, Any]],
              end: dict[str, Any], stats: Stats, conns: list[Conn], alive: int,
              lost_echoes: int, closed_cleanly: int, open_s: float, hold_s: float,
              pin: bool) -> dict[str, Any]:
    held = len(conns)
    first, last = samples[0], samples[-1]
    per_conn = (first["rss"] - before["rss"]) / held if held else 0.0
    rss_slope = slope([(s["t"] / 60, s["rss"]) for s in samples])  # bytes per minute
    # the second half alone: growth that is still going on, not a warm-up
    late_slope = slope([(s["t"] / 60, s["rss"]) for s in samples[len(samples) // 2 :]])
    growth = last["rss"] - first["rss"]
    cpu_s = (last["cpu_ticks"] - first["cpu_ticks"]) / CLK_TCK
    wall = max(last["t"] - first["t"], 1e-6)
    echo_cpu_s = (last["echo_cpu_ticks"] - first["echo_cpu_ticks"]) / CLK_TCK
    rtts = sorted(stats.rtts)

    def pct(p: float) -> float | None:
        return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1e3, 3) if rtts else None

    ok = (alive == held == a.conns and not stats.unexpected_closes and not stats.errors
          and lost_echoes == 0)
    return {
        "ok": ok,
        "conns_requested": a.requested,
        "conns": held,
        "minutes": round(hold_s / 60, 2),
        "open_seconds": round(open_s, 1),
        "alive_at_end": alive,
        "unexpected_closes": sum(stats.unexpected_closes.values()),
        "unexpected_closes_by_kind": dict(stats.unexpected_closes),
        "errors": sum(stats.errors.values()),
        "errors_by_kind": dict(stats.errors),
        "echoes_missing_at_end": lost_echoes,
        "closed_cleanly": closed_cleanly,
        "messages_sent": stats.sent,
        "messages_echoed": stats.echoed,
        "rate_msg_s": a.rate,
        "pings_answered": stats.pings,
        "heartbeat_interval": a.heartbeat,
        "proxy_pongs": {k: end.get(k) for k in ("pongs_client", "pongs_upstream")},
        "rtt_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "rss_before_bytes": before["rss"],
        "rss_held_start_bytes": first["rss"],
        "rss_held_end_bytes": last["rss"],
        "rss_per_conn_bytes": round(per_conn),
        "rss_growth_bytes": growth,
        "rss_growth_pct": round(100 * growth / first["rss"], 2) if first["rss"] else None,
        "rss_slope_bytes_per_min": round(rss_slope),
        "rss_slope_second_half_bytes_per_min": round(late_slope),
        "rss_slope_per_conn_bytes_per_hour": round(rss_slope * 60 / held, 1) if held else None,
        "proxy_cpu_pct": round(100 * cpu_s / wall, 2),
        "echo_cpu_pct": round(100 * echo_cpu_s / wall, 2),
        "client_cpu_pct": round(100 * (last["client_cpu"] - first["client_cpu"]) / wall, 2),
        "pinned": pin,
    }


CLK_TCK = os.sysconf("SC_CLK_TCK")
_last_row: dict[str, Any] = {}


def print_row(s: dict[str, Any], header: bool = False) -> None:
    global _last_row
    if header:
        print("| t (s) | alive | RSS MiB | proxy CPU % | msgs echoed | pings | unexpected closes "
              "| errors |", file=sys.stderr)
        print("|---:|---:|---:|---:|---:|---:|---:|---:|", file=sys.stderr)
    cpu = ""
    if _last_row:
        dt = max(s["t"] - _last_row["t"], 1e-6)
        cpu = f"{100 * (s['cpu_ticks'] - _last_row['cpu_ticks']) / CLK_TCK / dt:.1f}"
    print(f"| {s['t']:.0f} | {s['alive']:,} | {s['rss'] / 2**20:.1f} | {cpu} | "
          f"{s['echoed']:,} | {s['pings']:,} | {s['unexpected_closes']} | {s['errors']} |",
          file=sys.stderr, flush=True)
    _last_row = s


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    mib = 2**20
    late = s["rss_slope_second_half_bytes_per_min"]
    bursts = s["slow_echo_clusters"]
    rows = [
        ("connections held", f"{s['conns']:,} (requested {s['conns_requested']:,})"),
        ("held for", f"{s['minutes']} min (opened in {s['open_seconds']} s)"),
        ("alive at the end", f"{s['alive_at_end']:,} / {s['conns']:,}"),
        ("unexpected closes / errors", f"{s['unexpected_closes']} / {s['errors']}"),
        ("messages echoed (checked)", f"{s['messages_echoed']:,} of {s['messages_sent']:,} "
                                      f"at {s['rate_msg_s']:g} msg/s"),
        ("pings answered (heartbeat)", f"{s['pings_answered']:,} "
                                       f"(interval {s['heartbeat_interval']})"),
        ("echo round trip p50 / p99", f"{s['rtt_ms']['p50']} / {s['rtt_ms']['p99']} ms"),
        (f"echoes over {SLOW * 1e3:.0f} ms", f"{sum(int(g['count']) for g in bursts)} in "
                                   f"{len(bursts)} bursts, max "
                                   f"{max((g['max_ms'] for g in bursts), default=0)} ms"),
        ("proxy RSS before / held", f"{s['rss_before_bytes'] / mib:.1f} / "
                                    f"{s['rss_held_start_bytes'] / mib:.1f} MiB"),
        ("RSS per connection", f"{s['rss_per_conn_bytes'] / 1024:.2f} KiB"),
        ("RSS growth while held", f"{s['rss_growth_bytes'] / mib:+.2f} MiB "
                                  f"({s['rss_growth_pct']:+.2f} %); slope "
                                  f"{s['rss_slope_bytes_per_min'] / 1024:+.1f} KiB/min "
                                  f"(second half {late / 1024:+.1f})"),
        ("proxy CPU", f"{s['proxy_cpu_pct']:.1f} % of a core"),
        ("verdict", "PASS" if s["ok"] else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=10000, help="connections (default 10000)")
    p.add_argument("--minutes", type=float, default=10.0, help="hold time (default 10)")
    p.add_argument("--rate", type=float, default=300.0,
                   help="messages per second in total (default 300)")
    p.add_argument("--heartbeat", default="20s", help="heartbeat.interval (default 20s)")
    p.add_argument("--wsproxy-cmd", default="{root}/.venv/bin/wsproxy run -c {config}",
                   help="the proxy's command; {config} is the YAML file, {root} the repo")
    p.add_argument("--cc", default="cc")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "soak.json")
    a = p.parse_args(argv)
    if not 1 <= a.conns <= 20000:
        p.error("--conns must be in 1..20000")
    if not a.minutes > 0:
        p.error("--minutes must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    runner = load_runner()
    runner.build(a.cc)
    nofile = runner.raise_nofile()
    a.requested = a.conns
    fit = (nofile - 200) // 2
    if a.conns > fit:
        print(f"note: the file-descriptor limit is {nofile} and cannot be raised here; the "
              f"soak holds {fit:,} connections instead of {a.conns:,}", file=sys.stderr)
        a.conns = fit
    runner.OUT.mkdir(parents=True, exist_ok=True)
    procs = runner.Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wsproxy-soak-"))
    use_uvloop = importlib.util.find_spec("uvloop") is not None
    started = time.time()
    outcome: dict[str, Any] | None = None
    try:
        if use_uvloop:
            import uvloop

            outcome = uvloop.run(soak(a, runner, procs, workdir))
        else:
            outcome = asyncio.run(soak(a, runner, procs, workdir))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if outcome is None:
        return 130
    summary = outcome["summary"]
    result = {
        "summary": summary,
        "samples": outcome["samples"],
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "fd_limit": nofile,
            "python": platform.python_version(),
            "client_loop": "uvloop" if use_uvloop else "asyncio",
            "cpus": os.cpu_count(),
            "wsproxy_cmd": a.wsproxy_cmd,
            "argv": sys.argv[1:],
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\n(results: {a.out})", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
