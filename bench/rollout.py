#!/usr/bin/env python3
"""Rollout simulation: drain one of two backends under N live clients, measure the wave.

    python bench/rollout.py                     # 1000 clients, spread 10 s, + no-spread baseline
    python bench/rollout.py --quick             # 200 clients, spread 2 s (~15 s in all)
    python bench/rollout.py --clients 2000 --spread 15
    python bench/rollout.py --honor-hint        # clients wait the close reason's retry-after-ms
    python bench/rollout.py --no-baseline       # skip the spread=0 contrast run

What it does, once with ``drain.spread = S`` and once with ``S = 0`` (the baseline
that shows the stampede a plain proxy causes):

1. starts two built-in echo backends (``wsproxy echo-backend --port 0``) and
   ``wsproxy run -c FILE`` on 127.0.0.1 port 0 with both backends, ``balance:
   round_robin``, ``drain: {spread: S}``, JSON logs at info, heartbeats every 20 s;
2. opens N WebSocket clients through the proxy (asyncio tasks in two client
   processes, which are this script run with ``--_client``); each sends a text
   message ``"<client> <seq>"`` every 100-500 ms and checks every echo: same client,
   exactly the next sequence number;
3. after a short steady state, rewrites the config without backend 1 and sends the
   proxy SIGHUP: the proxy drains that backend, closing each of its connections with
   1012 at a moment spread over S;
4. each client closed with 1012 reconnects at once (with ``--honor-hint``: after the
   ``retry-after-ms=N`` of the close reason), first resends the messages whose echo
   had not come back (a backend echo that arrives after the proxy's close frame cannot
   be delivered, RFC 6455 §5.5.1) and then continues its sequence;
5. once the proxy logs ``drain.finished``, the clients stop sending, wait for their
   last echoes, close with 1000 and report.

Reported per run: the peak reconnects per second (1 s buckets, and 100 ms buckets
scaled to a rate) against the uniform rate N_drained/S; the close times of the drained
connections relative to the SIGHUP (first, last, percentiles); messages lost (sent
but never echoed, or gaps: must be 0), duplicated or out of order; abnormal closes
(1006 or any code other than 1012 from the drain and 1000 at the end: must be 0);
failed upgrades; total reconnects; and a cross-check against the proxy's own
``connection.closed`` counters (messages to the backend = messages the clients sent;
``undelivered_to_client`` = messages whose echo was cut off by the close frame).
To tell the proxy's own pauses from a busy machine it also reports echo round trips
before and during the drain, the client processes' event-loop lag, the CPU each
process used during the drain, what the rest of the machine used, and how long the
proxy and the clients were runnable but waiting for a CPU (``/proc/PID/schedstat``).
The machine is measured for 0.5 s before each run; over 0.3 busy cores is noted.

It prints a markdown table and writes ``bench/out/rollout.json``; the processes' logs
go to ``bench/out/rollout-logs/``. Exit status: 0 when every run lost nothing and had
no abnormal close, 1 otherwise, 2 when a run could not be set up.

Traffic goes to 127.0.0.1 only. Every process started is stopped by its PID (also on
errors and Ctrl-C); every wait is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
LOGS = OUT / "rollout-logs"
HOST = "127.0.0.1"
VENV_BIN = ROOT / ".venv" / "bin"
DRAINED_CODE = 1012
FINAL_CODE = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
HINT_RE = re.compile(r"retry-after-ms=(\d+)")

#: Client message pacing, seconds between two messages of one client.
SEND_INTERVAL = (0.1, 0.5)
#: Initial connections: at most this many handshakes in flight per client process.
CONNECT_CONCURRENCY = 64
#: A client gives up after this many connections (one drain needs two).
MAX_CONNECTIONS_PER_CLIENT = 50


class SetupError(Exception):
    """A run could not be set up (a process did not start or did not answer)."""


# --------------------------------------------------------------------------- processes


def _python() -> str:
    venv = VENV_BIN / "python"
    return str(venv) if venv.exists() else sys.executable


def _wsproxy() -> list[str]:
    exe = VENV_BIN / "wsproxy"
    return [str(exe)] if exe.exists() else [_python(), "-m", "wsproxy"]


class Proc:
    """One child process whose stdout and stderr go to a log file, followed by a thread.

    A file, not a pipe: a pipe that the runner reads late would block the proxy's
    logging (it writes its JSON lines synchronously) and skew what is measured.
    """

    def __init__(self, name: str, argv: list[str], log: Path, stdin: bool = False) -> None:
        self.name = name
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log.open("wb")
        self._follow: IO[bytes] = log.open("rb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # a Ctrl-C in our terminal is ours to handle
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        """Follow the log file until the process has exited and all of it is read."""
        partial = b""
        while True:
            exited = self.popen.poll() is not None
            chunk = self._follow.read(1 << 20)
            if chunk:
                *complete, partial = (partial + chunk).split(b"\n")
                with self._cond:
                    self.lines.extend(x.decode("utf-8", "replace") for x in complete)
                    self._cond.notify_all()
            elif exited:
                break
            else:
                time.sleep(0.02)
        with self._cond:
            if partial:
                self.lines.append(partial.decode("utf-8", "replace"))
            self._cond.notify_all()

    def events(self, start: int = 0) -> list[dict[str, Any]]:
        """The JSON lines of its stdout (other lines are skipped)."""
        with self._cond:
            lines = self.lines[start:]
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def wait_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, start: int = 0
    ) -> dict[str, Any] | None:
        """The first JSON line from index *start* on that *pred* accepts; None at timeout."""
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            with self._cond:
                lines = self.lines[seen:]
                seen += len(lines)
            for line in lines:
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict) and pred(obj):
                        return obj
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with self._cond:
                if len(self.lines) == seen:
                    if self.popen.poll() is not None and not self._reader.is_alive():
                        return None
                    self._cond.wait(min(left, 0.5))

    def send_line(self, text: str) -> None:
        if self.popen.stdin is not None and self.popen.poll() is None:
            with contextlib.suppress(OSError):
                self.popen.stdin.write(text + "\n")
                self.popen.stdin.flush()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (from /proc)."""
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def run_queue_seconds(self) -> float:
        """Time its main thread was runnable but waiting for a CPU (/proc/PID/schedstat)."""
        try:
            return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(
        self, sig: int = signal.SIGTERM, timeout: float = 8.0, wait_first: float = 0.0
    ) -> int | None:
        """Signal the PID, wait; a second signal, then SIGKILL. Returns the exit status.

        With *wait_first*, give it that long to exit on its own first (stdin closed).
        """
        proc = self.popen
        if wait_first and proc.poll() is None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait_first)
        for attempt in (sig, sig, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, attempt)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout if attempt != signal.SIGKILL else 5)
        self._reader.join(3)
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        self._log.close()
        self._follow.close()
        return proc.poll()

    def tail(self, n: int = 8) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal
                return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK
    return 0.0


def _other_load(window: float = 0.5) -> float:
    """Cores the machine is busy with before a run (nothing of ours is running then)."""
    b0, t0 = _busy_seconds(), time.monotonic()
    time.sleep(window)
    return (_busy_seconds() - b0) / max(time.monotonic() - t0, 1e-3)


def _raise_fd_limit(need: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of *values*; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def buckets(times: list[float], width: float) -> dict[int, int]:
    """How many of *times* (seconds from the SIGHUP) fall in each bucket of *width*."""
    out: dict[int, int] = {}
    for t in times:
        b = int(t // width)
        out[b] = out.get(b, 0) + 1
    return out


def peak_rate(times: list[float], width: float) -> float:
    """The fullest bucket of *width* seconds, as a rate per second."""
    counts = buckets(times, width)
    return max(counts.values()) / width if counts else 0.0


# --------------------------------------------------------------------------- the client process


class ClientStats:
    """Counters of one client process, reported to the runner as one JSON line."""

    def __init__(self) -> None:
        self.connected_initially = 0
        self.sent = 0  # send() calls that returned (re-sends included)
        self.resent = 0
        self.echoes = 0
        self.gaps = 0  # echoes skipped over within a connection
        self.duplicates = 0
        self.foreign = 0  # an echo of another client's message
        self.inflight_at_close = 0  # sent on a connection closed before their echo came
        self.unacked_at_end = 0
        self.closes: list[tuple[float, int, str]] = []  # (monotonic, code, reason)
        self.abnormal: list[tuple[float, int, str]] = []
        self.reconnects: list[tuple[float, float]] = []  # (attempt, opened) monotonic
        self.failed_upgrades: list[tuple[float, str]] = []
        self.hints_ms: list[int] = []
        self.gave_up = 0
        self.max_seq = 0
        #: (monotonic of the send, echo round trip in s), and event-loop lag samples.
        self.rtt: list[tuple[float, float]] = []
        self.lag: list[tuple[float, float]] = []

    def as_dict(self, windows: dict[str, tuple[float, float]]) -> dict[str, Any]:
        """Everything, with RTT and loop lag as percentiles (ms) over each window."""
        out = {k: v for k, v in vars(self).items() if k not in ("rtt", "lag")}
        for name, samples in (("rtt", self.rtt), ("lag", self.lag)):
            for wname, (lo, hi) in windows.items():
                xs = [x * 1000 for t, x in samples if lo <= t < hi]
                out[f"{name}_{wname}_ms"] = {
                    "n": len(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
                    "max": max(xs) if xs else None,
                }
        return out


class Client:
    """One simulated client: a sequence of messages over as many connections as it takes."""

    def __init__(self, cid: int, proc: ClientProc) -> None:
        self.cid = cid
        self.p = proc
        self.seq_next = 0  # the next sequence number to give out
        self.expect = 0  # the next echo expected; [expect, seq_next) is unacknowledged
        self.rng = random.Random(cid * 7919 + proc.seed)
        self.acked = asyncio.Event()
        self.sent_at: dict[int, float] = {}

    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        p, st = self.p, self.p.stats
        connections = 0
        while connections < MAX_CONNECTIONS_PER_CLIENT and time.monotonic() < p.hard_deadline:
            if p.stopping.is_set() and self.expect == self.seq_next and connections:
                break  # stopped between two connections with nothing left to confirm
            initial = connections == 0
            attempt_at = time.monotonic()
            try:
                if initial:
                    async with p.connect_slots:
                        ws = await connect(p.url, open_timeout=15, ping_interval=None,
                                           close_timeout=10, max_queue=None, compression=None)
                else:
                    ws = await connect(p.url, open_timeout=15, ping_interval=None,
                                       close_timeout=10, max_queue=None, compression=None)
            except Exception as exc:  # OSError, TimeoutError, InvalidStatus (a 503)…
                st.failed_upgrades.append((attempt_at, f"{type(exc).__name__}: {exc}"[:200]))
                await asyncio.sleep(0.2 + self.rng.random() * 0.3)
                continue
            opened_at = time.monotonic()
            connections += 1
            if initial:
                st.connected_initially += 1
                p.initial_done()
            else:
                st.reconnects.append((attempt_at, opened_at))
            sent_here = [0]
            echoed_here = 0
            sender = asyncio.create_task(self._sender(ws, sent_here))
            close_code, close_reason = 1006, ""
            try:
                while True:
                    msg = await ws.recv()
                    echoed_here += 1
                    self._echo(msg)
            except ConnectionClosed as exc:
                if exc.rcvd is not None:
                    close_code, close_reason = exc.rcvd.code, exc.rcvd.reason
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            closed_at = time.monotonic()
            st.inflight_at_close += max(0, sent_here[0] - echoed_here)
            if close_code == FINAL_CODE and p.stopping.is_set():
                break  # our own close at the end
            st.closes.append((closed_at, close_code, close_reason))
            if close_code != DRAINED_CODE:
                st.abnormal.append((closed_at, close_code, close_reason))
                await asyncio.sleep(0.2)
                continue
            match = HINT_RE.search(close_reason)
            if match:
                st.hints_ms.append(int(match.group(1)))
                if p.honor_hint:
                    await asyncio.sleep(int(match.group(1)) / 1000)
        else:
            st.gave_up += 1
        st.unacked_at_end += self.seq_next - self.expect
        st.max_seq = max(st.max_seq, self.seq_next)

    def _echo(self, msg: str | bytes) -> None:
        st = self.p.stats
        text = msg.decode() if isinstance(msg, bytes) else msg
        cid, _, seq_text = text.partition(" ")
        if cid != str(self.cid):
            st.foreign += 1
            return
        seq = int(seq_text)
        st.echoes += 1
        sent_at = self.sent_at.pop(seq, None)
        if sent_at is not None:
            st.rtt.append((sent_at, time.monotonic() - sent_at))
        if seq == self.expect:
            self.expect += 1
        elif seq < self.expect:
            st.duplicates += 1
        else:
            st.gaps += seq - self.expect
            self.expect = seq + 1
        if self.expect == self.seq_next:
            self.acked.set()

    async def _sender(self, ws: Any, sent_here: list[int]) -> None:
        """The send loop; a failure of ours is recorded and ends the connection (1011)."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._send_loop(ws, sent_here)
        except ConnectionClosed:
            pass  # the receiving side sees the close and records it
        except Exception as exc:
            self.p.stats.abnormal.append((time.monotonic(), -1, f"client sender: {exc!r}"[:200]))
            await ws.close(1011, "client error")

    async def _send_loop(self, ws: Any, sent_here: list[int]) -> None:
        p, st = self.p, self.p.stats
        # Whatever has not come back yet goes again, first and in order.
        for seq in range(self.expect, self.seq_next):
            self.sent_at[seq] = time.monotonic()
            await ws.send(f"{self.cid} {seq}")
            sent_here[0] += 1
            st.sent += 1
            st.resent += 1
        lo, hi = SEND_INTERVAL
        while not p.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.stopping.wait(), lo + self.rng.random() * (hi - lo))
            if p.stopping.is_set():
                break
            seq = self.seq_next
            self.seq_next += 1
            self.acked.clear()
            self.sent_at[seq] = time.monotonic()
            await ws.send(f"{self.cid} {seq}")
            sent_here[0] += 1
            st.sent += 1
        # Stopping: wait for the last echoes, then close normally.
        if self.expect != self.seq_next:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acked.wait(), max(0.1, p.hard_deadline
                                                               - time.monotonic() - 1))
        await ws.close(FINAL_CODE, "done")


class ClientProc:
    """One client process: many Clients on one event loop, driven by lines on stdin."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url
        self.first = args.first
        self.count = args.count
        self.seed = args.seed
        self.honor_hint = args.honor_hint
        self.hard_deadline = time.monotonic() + args.max_seconds
        self.stats = ClientStats()
        self.stopping = asyncio.Event()
        self.connect_slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self._all_connected = asyncio.Event()
        self.windows: dict[str, tuple[float, float]] = {}

    def initial_done(self) -> None:
        if self.stats.connected_initially == self.count:
            self._all_connected.set()

    def _watch_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        for line in sys.stdin:
            words = line.split()
            if words and words[0] == "stop":
                # "stop T0 T1 T2": the steady window [T0, T1) and the drain's [T1, T2).
                with contextlib.suppress(ValueError):
                    t0, t1, t2 = (float(w) for w in words[1:4])
                    self.windows = {"steady": (t0, t1), "drain": (t1, t2)}
                break
        loop.call_soon_threadsafe(self.stopping.set)  # "stop", or the runner went away

    async def _measure_lag(self) -> None:
        """How late this process's event loop wakes up (a busy client skews the times)."""
        while not self.stopping.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            self.stats.lag.append((before, time.monotonic() - before - 0.01))

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._watch_stdin, args=(loop,), daemon=True).start()
        clients = [Client(self.first + i, self) for i in range(self.count)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        lag = asyncio.create_task(self._measure_lag())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_connected.wait(), 60)
        _emit({"event": "connected", "clients": self.stats.connected_initially,
               "of": self.count})
        left = max(1.0, self.hard_deadline - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), left)
        self.stopping.set()
        done, pending = await asyncio.wait(tasks, timeout=max(
            1.0, self.hard_deadline - time.monotonic()))
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                self.stats.abnormal.append((time.monotonic(), -1, repr(task.exception())[:200]))
        lag.cancel()
        _emit({"event": "result", "unfinished": len(pending),
               **self.stats.as_dict(self.windows)})


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def client_main(args: argparse.Namespace) -> int:
    _raise_fd_limit(args.count + 256)
    asyncio.run(ClientProc(args).main())
    return 0


# --------------------------------------------------------------------------- one run


def _config(backends: list[tuple[str, str]], spread: float, clients: int) -> str:
    # JSON is YAML: no YAML writer needed by the runner.
    cfg = {
        "listen": {"host": HOST, "port": 0},
        "admin": {"host": HOST, "port": 0},
        "backends": [{"name": n, "url": u} for n, u in backends],
        "balance": "round_robin",
        "drain": {"spread": f"{spread:g}s", "timeout": f"{max(25.0, spread + 10):g}s"},
        "logging": {"level": "info", "format": "json"},
        "heartbeat": {"interval": "20s"},
        "limits": {"max_connections": max(10000, 2 * clients)},
    }
    return json.dumps(cfg, indent=2) + "\n"


def run_once(args: argparse.Namespace, label: str, spread: float) -> dict[str, Any]:
    """One simulation: fresh backends, proxy and clients; the figures of its drain."""
    logs = LOGS / label
    procs: list[Proc] = []
    clients: list[Proc] = []
    proxy: Proc | None = None
    cfg_path = logs / "rollout.yaml"
    result: dict[str, Any] = {"label": label, "spread_s": spread, "clients": args.clients,
                              "honor_hint": args.honor_hint}
    try:
        backends = []
        for i in (1, 2):
            b = Proc(f"backend-{i}", [*_wsproxy(), "echo-backend", "--port", "0"],
                     logs / f"backend-{i}.log")
            procs.append(b)
            ev = b.wait_event(lambda e: e.get("event") == "echo.listening", 15)
            if ev is None:
                raise SetupError(f"backend-{i} did not start:\n{b.tail()}")
            backends.append((f"backend-{i}", f"ws://{ev['address']}"))
        cfg_path.write_text(_config(backends, spread, args.clients))
        proxy = Proc("proxy", [*_wsproxy(), "run", "-c", str(cfg_path)], logs / "proxy.log")
        procs.append(proxy)
        ev = proxy.wait_event(lambda e: e.get("event") == "proxy.listening", 15)
        if ev is None:
            raise SetupError(f"the proxy did not start:\n{proxy.tail()}")
        port = int(str(ev["addresses"][0]).rsplit(":", 1)[1])
        url = f"ws://{HOST}:{port}/"

        n_procs = 1 if args.clients < 400 else 2
        per = [args.clients // n_procs + (1 if i < args.clients % n_procs else 0)
               for i in range(n_procs)]
        budget = args.steady + spread + 60  # a client process's own hard limit
        first = 0
        for i, count in enumerate(per):
            argv = [_python(), str(Path(__file__).resolve()), "--_client", "--url", url,
                    "--first", str(first), "--count", str(count), "--seed", str(args.seed + i),
                    "--max-seconds", f"{budget:g}"]
            if args.honor_hint:
                argv.append("--honor-hint")
            c = Proc(f"clients-{i + 1}", argv, logs / f"clients-{i + 1}.log", stdin=True)
            procs.append(c)
            clients.append(c)
            first += count
        t_connect = time.monotonic()
        for c in clients:
            ev = c.wait_event(lambda e: e.get("event") == "connected", 75)
            if ev is None or ev["clients"] != ev["of"]:
                raise SetupError(f"{c.name}: not every client connected: {ev}\n{c.tail()}")
        result["connect_s"] = round(time.monotonic() - t_connect, 2)
        t_steady = time.monotonic()
        time.sleep(args.steady)

        # The rollout: backend-1 vanishes from the file; SIGHUP.
        mark = len(proxy.lines)
        cfg_path.write_text(_config(backends[1:], spread, args.clients))
        cpu0 = {p.name: p.cpu_seconds() for p in procs}
        wait0 = {p.name: p.run_queue_seconds() for p in procs}
        busy0 = _busy_seconds()
        t0 = time.monotonic()
        os.kill(proxy.pid, signal.SIGHUP)
        closing = proxy.wait_event(lambda e: e.get("event") == "drain.closing", 10, mark)
        finished = proxy.wait_event(lambda e: e.get("event") == "drain.finished",
                                    spread + 30, mark)
        t_finished = time.monotonic()
        result["drain_finished_after_s"] = round(t_finished - t0, 3) if finished else None
        result["cpu_cores_during_drain"] = {
            p.name: round((p.cpu_seconds() - cpu0[p.name]) / max(t_finished - t0, 0.05), 2)
            for p in procs
        }
        result["run_queue_wait_s_during_drain"] = {
            p.name: round(p.run_queue_seconds() - wait0[p.name], 3) for p in procs
        }
        # The machine may be shared: what everything else used meanwhile, in cores.
        machine = (_busy_seconds() - busy0) / max(t_finished - t0, 0.05)
        ours = sum(result["cpu_cores_during_drain"].values())
        result["other_cpu_cores_during_drain"] = round(max(0.0, machine - ours), 2)
        # Clients closed last may still be reconnecting (or waiting for their hint).
        time.sleep(args.settle + (1.0 if args.honor_hint else 0.0))
        for c in clients:
            c.send_line(f"stop {t_steady} {t0} {t_finished + 0.5}")
        reports = []
        for c in clients:
            ev = c.wait_event(lambda e: e.get("event") == "result", 30)
            if ev is None:
                raise SetupError(f"{c.name} did not report:\n{c.tail()}")
            reports.append(ev)
        for c in clients:
            c.stop(timeout=5, wait_first=5)
        # Give the proxy a moment to log the last connection.closed lines.
        _wait_until(lambda: _open_connections(proxy) <= 0, 5)
        result.update(_analyse(t0, spread, reports, proxy, mark, closing, finished))
        return result
    finally:
        statuses = {}
        for p in reversed(procs):
            statuses[p.name] = p.stop()
        result["exit_status"] = statuses


def _wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _open_connections(proxy: Proc) -> int:
    opened = closed = 0
    for e in proxy.events():
        if e.get("event") == "connection.opened":
            opened += 1
        elif e.get("event") == "connection.closed":
            closed += 1
    return opened - closed


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _analyse(
    t0: float, spread: float, reports: list[dict[str, Any]], proxy: Proc, mark: int,
    closing: dict[str, Any] | None, finished: dict[str, Any] | None,
) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(int(r[key]) for r in reports)

    def joined(key: str) -> list[Any]:
        return [x for r in reports for x in r[key]]

    closes = joined("closes")
    drained = [c for c in closes if c[1] == DRAINED_CODE]
    close_t = sorted(c[0] - t0 for c in drained)
    reconnects = joined("reconnects")
    attempt_t = sorted(a - t0 for a, _ in reconnects)
    open_t = sorted(o - t0 for _, o in reconnects)
    upgrade_ms = [(o - a) * 1000 for a, o in reconnects]
    n_drained = len(drained)
    uniform = n_drained / spread if spread > 0 else None
    failed = joined("failed_upgrades")

    # The proxy's own view, from its connection.closed lines.
    events = proxy.events()
    after = proxy.events(mark)
    conn_closed = [e for e in events if e.get("event") == "connection.closed"]
    px = {
        "connections_opened": sum(1 for e in events if e.get("event") == "connection.opened"),
        "connections_closed": len(conn_closed),
        "messages_to_backend": sum(int(e.get("messages_to_backend") or 0) for e in conn_closed),
        "messages_to_client": sum(int(e.get("messages_to_client") or 0) for e in conn_closed),
        "undelivered_to_client": sum(int(e.get("undelivered_to_client") or 0)
                                     for e in conn_closed),
        "undelivered_to_backend": sum(int(e.get("undelivered_to_backend") or 0)
                                      for e in conn_closed),
        "closed_by_proxy": sum(1 for e in conn_closed if e.get("initiator") == "proxy"),
        "drain_closing": closing,
        "drain_finished": finished,
        "warnings": [e for e in after if e.get("level") in ("warning", "error", "critical")
                     and e.get("event") != "drain.closing"][:20],
        "rejected": sum(1 for e in events if e.get("event") == "connection.rejected"),
    }
    def worst(key: str) -> dict[str, Any]:
        """Percentiles of the client processes merged: the worst process's figure."""
        parts = [r.get(key) or {} for r in reports]
        out: dict[str, Any] = {"n": sum(int(p.get("n") or 0) for p in parts)}
        for q in ("p50", "p99", "max"):
            vals = [float(p[q]) for p in parts if p.get(q) is not None]
            out[q] = round(max(vals), 2) if vals else None
        return out

    sent, echoes = total("sent"), total("echoes")
    inflight = total("inflight_at_close")
    lost = total("gaps") + total("unacked_at_end")
    checks = {
        "to_backend_equals_sent": px["messages_to_backend"] == sent,
        "to_client_equals_echoes": px["messages_to_client"] == echoes,
        "undelivered_equals_inflight": px["undelivered_to_client"] == inflight,
    }
    return {
        "drained": n_drained,
        "proxy_drain_connections": (closing or {}).get("connections"),
        "proxy_drain_window_s": (closing or {}).get("window_s"),
        "uniform_rate_per_s": _r(uniform, 1),
        "peak_reconnects_per_s_1s": peak_rate(attempt_t, 1.0),
        "peak_reconnects_per_s_100ms": peak_rate(attempt_t, 0.1),
        "peak_opened_per_s_100ms": peak_rate(open_t, 0.1),
        "peak_closes_per_s_100ms": peak_rate(close_t, 0.1),
        "reconnects_per_1s_bucket": {str(k): v for k, v in sorted(buckets(attempt_t, 1.0)
                                                                    .items())},
        "close_first_s": _r(close_t[0] if close_t else None),
        "close_last_s": _r(close_t[-1] if close_t else None),
        "close_p10_s": _r(percentile(close_t, 10)),
        "close_p50_s": _r(percentile(close_t, 50)),
        "close_p90_s": _r(percentile(close_t, 90)),
        "reconnect_upgrade_ms_p50": _r(percentile(upgrade_ms, 50), 1),
        "reconnect_upgrade_ms_p99": _r(percentile(upgrade_ms, 99), 1),
        "reconnect_upgrade_ms_max": _r(max(upgrade_ms) if upgrade_ms else None, 1),
        "reconnects": len(reconnects),
        "reconnected_all_after_s": _r(open_t[-1] if open_t else None),
        "failed_upgrades": len(failed),
        "failed_upgrade_samples": [f for _, f in failed][:5],
        "messages_sent": sent,
        "messages_resent": total("resent"),
        "echoes": echoes,
        "messages_lost": lost,
        "gaps": total("gaps"),
        "unacked_at_end": total("unacked_at_end"),
        "duplicates": total("duplicates"),
        "foreign_echoes": total("foreign"),
        "inflight_at_close": inflight,
        "abnormal_closes": len(joined("abnormal")),
        "abnormal_samples": [[c, r] for _, c, r in joined("abnormal")][:5],
        "close_codes": _count_codes(closes),
        "hints_ms_p50": percentile([float(h) for h in joined("hints_ms")], 50),
        "hints_seen": len(joined("hints_ms")),
        "clients_gave_up": total("gave_up"),
        "echo_rtt_steady_ms": worst("rtt_steady_ms"),
        "echo_rtt_drain_ms": worst("rtt_drain_ms"),
        "client_loop_lag_steady_ms": worst("lag_steady_ms"),
        "client_loop_lag_drain_ms": worst("lag_drain_ms"),
        "clients_unfinished": total("unfinished"),
        "proxy": px,
        "checks": checks,
        "ok": lost == 0 and not joined("abnormal") and total("duplicates") == 0
        and total("foreign") == 0 and all(checks.values()),
    }


def _count_codes(closes: list[list[Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, code, _ in closes:
        out[str(code)] = out.get(str(code), 0) + 1
    return out


# --------------------------------------------------------------------------- report


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}".rstrip("0").rstrip(".")
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def table(runs: list[dict[str, Any]]) -> str:
    def rate(run: dict[str, Any]) -> str:
        u = run.get("uniform_rate_per_s")
        return "∞ (all at once)" if u is None else f"{_fmt(u)}/s"

    def closes(run: dict[str, Any]) -> str:
        return (f"{_fmt(run.get('close_first_s'))} / {_fmt(run.get('close_last_s'))} s")

    def pcts(run: dict[str, Any]) -> str:
        return " / ".join(_fmt(run.get(f"close_p{p}_s")) for p in (10, 50, 90)) + " s"

    def upg(run: dict[str, Any]) -> str:
        return (f"{_fmt(run.get('reconnect_upgrade_ms_p50'))} / "
                f"{_fmt(run.get('reconnect_upgrade_ms_p99'))} / "
                f"{_fmt(run.get('reconnect_upgrade_ms_max'))} ms")

    def xcheck(run: dict[str, Any]) -> str:
        px = run.get("proxy", {})
        return (f"{_fmt(run.get('inflight_at_close'))} / "
                f"{_fmt(px.get('undelivered_to_client'))}")

    def pct3(key: str) -> Callable[[dict[str, Any]], str]:
        def fmt(run: dict[str, Any]) -> str:
            d = run.get(key) or {}
            return " / ".join(_fmt(d.get(q)) for q in ("p50", "p99", "max")) + " ms"
        return fmt

    def cpu(run: dict[str, Any]) -> str:
        c = run.get("cpu_cores_during_drain") or {}
        clients = sum(v for k, v in c.items() if k.startswith("clients"))
        backends = sum(v for k, v in c.items() if k.startswith("backend"))
        return (f"{_fmt(c.get('proxy'))} / {_fmt(clients)} / {_fmt(backends)} / "
                f"{_fmt(run.get('other_cpu_cores_during_drain'))}")

    def waited(run: dict[str, Any]) -> str:
        w = run.get("run_queue_wait_s_during_drain") or {}
        clients = max((v for k, v in w.items() if k.startswith("clients")), default=None)
        return f"{_fmt(w.get('proxy'))} / {_fmt(clients)} s"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("clients / drained (1012)", lambda r: f"{_fmt(r['clients'])} / {_fmt(r['drained'])}"),
        ("drain.spread S", lambda r: f"{_fmt(r['spread_s'])} s"),
        ("uniform rate N_drained/S", rate),
        ("**peak reconnects/s, 1 s buckets**",
         lambda r: f"**{_fmt(r['peak_reconnects_per_s_1s'])}**"),
        ("**peak reconnects/s, 100 ms buckets x10**",
         lambda r: f"**{_fmt(r['peak_reconnects_per_s_100ms'])}**"),
        ("closes first / last after SIGHUP", closes),
        ("closes p10 / p50 / p90", pcts),
        ("reconnect upgrade p50 / p99 / max", upg),
        ("echo RTT p50 / p99 / max, before the drain", pct3("echo_rtt_steady_ms")),
        ("echo RTT p50 / p99 / max, during the drain", pct3("echo_rtt_drain_ms")),
        ("client loop lag p50 / p99 / max, during the drain",
         pct3("client_loop_lag_drain_ms")),
        ("CPU cores during the drain: proxy / clients / backends / rest of machine", cpu),
        ("waiting for a CPU during the drain: proxy / busiest client process", waited),
        ("retry-after-ms hints seen / p50",
         lambda r: f"{_fmt(r['hints_seen'])} / {_fmt(r['hints_ms_p50'])} ms"
         + (" (honoured)" if r.get("honor_hint") else " (ignored)")),
        ("reconnects (total) / failed upgrades",
         lambda r: f"{_fmt(r['reconnects'])} / {_fmt(r['failed_upgrades'])}"),
        ("messages sent / echoed", lambda r: f"{_fmt(r['messages_sent'])} / "
         f"{_fmt(r['echoes'])}"),
        ("**messages lost** (gaps + never echoed)", lambda r: f"**{_fmt(r['messages_lost'])}**"),
        ("duplicated / foreign echoes",
         lambda r: f"{_fmt(r['duplicates'])} / {_fmt(r['foreign_echoes'])}"),
        ("**abnormal closes** (1006, other codes)",
         lambda r: f"**{_fmt(r['abnormal_closes'])}**"),
        ("echo cut off by close (client / proxy count)", xcheck),
        ("proxy: to backend = sent, to client = echoed",
         lambda r: "yes" if r["checks"]["to_backend_equals_sent"]
         and r["checks"]["to_client_equals_echoes"] else "**no**"),
        ("verdict", lambda r: "ok" if r.get("ok") else "**FAIL**"),
    ]
    head = "| | " + " | ".join(r["label"] for r in runs) + " |"
    sep = "|---|" + "---|" * len(runs)
    lines = [head, sep]
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(fn(r) if "drained" in r else "-" for r in runs)
                     + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=None, help="N clients (1000; --quick: 200)")
    ap.add_argument("--spread", type=float, default=None,
                    help="drain.spread S in seconds (10; --quick: 2)")
    ap.add_argument("--honor-hint", action="store_true",
                    help="reconnect after the close reason's retry-after-ms, not at once")
    ap.add_argument("--quick", action="store_true", help="200 clients, 2 s spread")
    ap.add_argument("--no-baseline", action="store_true", help="skip the spread=0 run")
    ap.add_argument("--steady", type=float, default=None,
                    help="seconds of traffic before the drain (2; --quick: 1)")
    ap.add_argument("--settle", type=float, default=1.5,
                    help="seconds after drain.finished before the clients stop (1.5)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT / "rollout.json")
    # The client process (this script, started by the runner).
    ap.add_argument("--_client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--max-seconds", type=float, default=60, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.clients is None:
        args.clients = 200 if args.quick else 1000
    if args.spread is None:
        args.spread = 2.0 if args.quick else 10.0
    if args.steady is None:
        args.steady = 1.0 if args.quick else 2.0
    if not args._client:
        if not 2 <= args.clients <= 5000:
            ap.error("--clients: 2 to 5000")
        if not 0 <= args.spread <= 60:
            ap.error("--spread: 0 to 60 seconds")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _show(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._client:
        return client_main(args)
    limit = _raise_fd_limit(4 * args.clients + 512)  # children inherit it
    plan = [(f"spread {args.spread:g} s", args.spread)]
    if not args.no_baseline and args.spread > 0:
        plan.append(("no spread (S=0)", 0.0))
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    status = 0
    # Ctrl-C or SIGTERM: unwind through the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for label, spread in plan:
            other = _other_load()
            note = f" (machine busy: {other:.1f} cores in use by others)" if other > 0.3 else ""
            print(f"# {label}: {args.clients} clients ...{note}", file=sys.stderr, flush=True)
            try:
                runs.append(run_once(args, label, spread))
                runs[-1]["other_cpu_cores_before"] = round(other, 2)
            except SetupError as exc:
                print(f"rollout: {label}: {exc}", file=sys.stderr)
                runs.append({"label": label, "spread_s": spread, "error": str(exc)})
                status = 2
    except KeyboardInterrupt:
        print("rollout: interrupted", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "elapsed_s": round(elapsed, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "nofile": list(limit)},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if not k.startswith("_") and k not in ("url", "first", "count",
                                                           "max_seconds")},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(runs))
    print(f"\n{elapsed:.0f} s; details in {_show(args.out)}, logs in {_show(LOGS)}/")
    for run in runs:
        for w in run.get("proxy", {}).get("warnings", []):
            print(f"proxy warning ({run['label']}): {json.dumps(w)}", file=sys.stderr)
    if status == 0 and not all(r.get("ok") for r in runs):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
