#!/usr/bin/env python3
"""Drain wave: N reconnecting clients drained off one backend, three client timings.

    python bench/drain_wave.py                  # 2,000 clients, spread 10 s, 3 reps (~4 min)
    python bench/drain_wave.py --quick          # 300 clients, 3 s spread, 1 rep (~1 min)
    python bench/drain_wave.py --spread 10,0    # + the same drain with no spread (a burst)
    python bench/drain_wave.py --timings js,rws --reps 5 --plot bench/results/drain_wave.png

One run, for each client timing and repetition (repetitions outermost, so slow drift
of a shared machine hits every timing alike):

1. two echo backends (bench/bin/wsecho, the compiled one bench/run.py builds; or
   ``--backend python``: ``wsproxy echo-backend``) and a fresh ``wsproxy run`` (the
   repo's .venv) with both, ``drain: {spread: S, reconnect_hint: true}``;
2. ``POST /backends/backend-2/drain`` while nothing is connected, so that every client
   lands on backend-1; N clients in a few Node processes (bench/wave_clients.mjs,
   hundreds each) connect; ``GET /backends`` must show all N on backend-1; then
   ``POST /backends/backend-2/undrain``;
3. ``POST /backends/backend-1/drain``: the proxy closes the N sockets with 1012 over S,
   each with ``retry-after-ms=N`` in the reason; each client reconnects as its timing
   says (to backend-2, the only one left);
4. every socket's attempt, open and close are recorded in the Node processes (on the
   clock of ``time.monotonic()``) and sent back as JSON lines once all clients are open
   again (bounded: S + 45 s).

Reported per timing (medians over the repetitions): reconnects (sockets opened after
the drain request), the mean and the max per 100 ms bucket over the wave (from the
bucket of the first reconnect to that of the last, empty buckets included), max/mean,
the p99 bucket, the time from the first to the last reconnect, failed attempts
(sockets opened after the drain request that never opened: a refused or failed
upgrade, retried), and whether max ≤ 1.5 x mean (issue 17's criterion for clients/js).
Table on stdout and in ``bench/out/drain_wave.md``, everything in
``bench/out/drain_wave.json``, the plot in ``bench/out/drain_wave.png`` (``--plot``
elsewhere), logs in ``bench/out/drain-wave-logs/``.

Needs node (≥ 20) and npm: ``ws`` and ``reconnecting-websocket`` (pinned below) are
installed by this script into bench/out/node (git-ignored) unless ``--node-modules``
names a directory that has them; matplotlib for the plot (``pip install -e '.[bench]'``;
without it the plot is skipped, not the run). The clients/js timing needs
clients/js/wsproxy-client.js. Every process is stopped by its PID (also on Ctrl-C);
every wait is bounded; traffic goes to 127.0.0.1 only. The file-descriptor soft limit
is raised to 4 x N + 1,024 (children inherit it): the proxy holds two sockets per
client, plus the reconnects that overlap the closes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from rollout import (  # noqa: E402  (bench/ is not a package)
    Proc,
    SetupError,
    _busy_seconds,
    _other_load,
    _raise_fd_limit,
    percentile,
)

ROOT = BENCH.parent
OUT = BENCH / "out"
LOGS = OUT / "drain-wave-logs"
BIN = BENCH / "bin"
HOST = "127.0.0.1"
VENV_BIN = ROOT / ".venv" / "bin"
CLIENT_MODULE = ROOT / "clients" / "js" / "wsproxy-client.js"
HOST_SCRIPT = BENCH / "wave_clients.mjs"
#: npm packages for the Node processes, pinned.
NPM_PINS = {"ws": "8.18.3", "reconnecting-websocket": "4.4.0"}
BUCKET = 0.1
CRITERION = 1.5
DRAINED_CODE = 1012  # drain.backend_close_code
PROXY_DRAINED_CODE = 1001  # drain.shutdown_close_code

TIMINGS: dict[str, str] = {
    "js": "clients/js (waits the hint)",
    "immediate": "at once (Phoenix: 10 ms)",
    "rws": "reconnecting-websocket defaults",
}


# --------------------------------------------------------------------------- setup


def _wsproxy() -> list[str]:
    exe = VENV_BIN / "wsproxy"
    if exe.exists():
        return [str(exe)]
    python = VENV_BIN / "python"
    return [str(python) if python.exists() else sys.executable, "-m", "wsproxy"]


def _nice(args: argparse.Namespace) -> list[str]:
    """The prefix that runs a child at --nice (nice(1) execs: the PID stays the child's)."""
    return ["nice", "-n", str(args.nice)] if args.nice else []


def _prioritize(proc: Proc, args: argparse.Namespace) -> Proc:
    """Also the nice of the child's autogroup (Linux, sched_autogroup_enabled).

    Each child has a session of its own, hence an autogroup of its own, and the
    scheduler shares CPU between autogroups before it looks at a process's nice: without
    this, nice(1) alone would change nothing against the rest of a shared machine.
    """
    if args.nice:
        with contextlib.suppress(OSError):
            Path(f"/proc/{proc.pid}/autogroup").write_text(f"{args.nice}\n")
    return proc


def ensure_node_modules(requested: Path | None) -> Path:
    """A node_modules directory with the pinned ws and reconnecting-websocket."""
    def has_pins(nm: Path) -> bool:
        for name, version in NPM_PINS.items():
            try:
                meta = json.loads((nm / name / "package.json").read_text())
            except (OSError, ValueError):
                return False
            if meta.get("version") != version:
                return False
        return True

    if requested is not None:
        if not has_pins(requested):
            raise SetupError(f"{requested} lacks {NPM_PINS} (exact versions)")
        return requested
    prefix = OUT / "node"
    nm = prefix / "node_modules"
    if has_pins(nm):
        return nm
    npm = shutil.which("npm")
    if npm is None:
        raise SetupError("npm not found (apt-get install -y nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
           *(f"{n}@{v}" for n, v in NPM_PINS.items())]
    print(f"installing: {' '.join(cmd[1:])}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not has_pins(nm):
        raise SetupError(f"npm install failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return nm


def build_wsecho() -> Path:
    exe, src = BIN / "wsecho", BENCH / "wsecho.c"
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SetupError("no C compiler for bench/wsecho.c (or use --backend python)")
    BIN.mkdir(parents=True, exist_ok=True)
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src)], check=True,
                   timeout=120)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise SetupError(f"{proc.name} exited:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.05)
    raise SetupError(f"{proc.name} did not listen on {port} within {timeout:g} s")


def admin(base: str, method: str, path: str, timeout: float = 15) -> dict[str, Any]:
    req = urllib.request.Request(base + path, method=method,
                                 data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: dict[str, Any] = json.loads(resp.read() or b"{}")
            return body
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SetupError(f"{method} {path}: {exc}") from None


def start_backends(args: argparse.Namespace, logs: Path) -> tuple[list[Proc], list[str]]:
    procs: list[Proc] = []
    urls: list[str] = []
    for i in (1, 2):
        if args.backend == "wsecho":
            port = free_port()
            p = _prioritize(Proc(f"backend-{i}", [*_nice(args), str(build_wsecho()), "-q",
                                                  "-H", HOST, "-p", str(port)],
                                 logs / f"backend-{i}.log"), args)
            procs.append(p)
            wait_port(port, p, 10)
            urls.append(f"ws://{HOST}:{port}")
        else:
            p = _prioritize(Proc(f"backend-{i}", [*_nice(args), *_wsproxy(), "echo-backend",
                                                  "--port", "0"],
                                 logs / f"backend-{i}.log"), args)
            procs.append(p)
            ev = p.wait_event(lambda e: e.get("event") == "echo.listening", 15)
            if ev is None:
                raise SetupError(f"backend-{i} did not start:\n{p.tail()}")
            urls.append(f"ws://{ev['address']}")
    return procs, urls


def proxy_config(urls: list[str], spread: float, clients: int, hint: bool = True) -> str:
    cfg = {  # JSON is YAML
        "listen": {"host": HOST, "port": 0},
        "admin": {"host": HOST, "port": 0},
        "backends": [{"name": f"backend-{i + 1}", "url": u} for i, u in enumerate(urls)],
        "balance": "round_robin",
        "drain": {"spread": f"{spread:g}s", "timeout": f"{spread + 20:g}s",
                  "reconnect_hint": hint},
        "logging": {"level": "info", "format": "json"},
        "limits": {"max_connections": max(10000, 3 * clients)},
    }
    return json.dumps(cfg, indent=2) + "\n"


# --------------------------------------------------------------------------- one drain


def start_proxy(args: argparse.Namespace, name: str, cfg_text: str,
                logs: Path) -> tuple[Proc, str, str]:
    """A ``wsproxy run``; returns it, its ws:// URL and its admin base URL."""
    cfg = logs / f"{name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(cfg_text)
    proxy = _prioritize(Proc(name, [*_nice(args), *_wsproxy(), "run", "-c", str(cfg)],
                             logs / f"{name}.log"), args)
    ev = proxy.wait_event(lambda e: e.get("event") == "proxy.listening", 20)
    aev = proxy.wait_event(lambda e: e.get("event") == "admin.listening", 5)
    if ev is None or aev is None:
        proxy.stop(timeout=3)
        raise SetupError(f"{name} did not start:\n{proxy.tail()}")
    port = int(str(ev["addresses"][0]).rsplit(":", 1)[1])
    return proxy, f"ws://{HOST}:{port}/", f"http://{aev['address']}"


def run_once(args: argparse.Namespace, nm: Path, timing: str, spread: float,
             rep: int) -> dict[str, Any]:
    """One drain under N clients of one timing: the figures of its reconnect wave.

    ``--drain backend``: one proxy; every client on backend-1, which is drained (1012);
    they reconnect to the same proxy, to backend-2. ``--drain proxy``: two proxies;
    every client on proxy A, which is drained (``POST /drain``, 1001); from the drain
    request on the clients' new sockets go to proxy B, as a load balancer would send
    them once A's /readyz turned 503 (modelled in the clients: wave_clients.mjs
    --url-next).
    """
    label = f"{args.drain}-{timing}-s{spread:g}-rep{rep + 1}"
    logs = LOGS / label
    procs: list[Proc] = []
    result: dict[str, Any] = {"timing": timing, "spread_s": spread, "rep": rep + 1,
                              "clients": args.clients, "drain": args.drain}
    try:
        backends, urls = start_backends(args, logs)
        procs.extend(backends)
        proxy, url, base = start_proxy(args, "proxy", proxy_config(urls, spread, args.clients,
                                                                      args.hint), logs)
        procs.append(proxy)
        url_next = ""
        target = proxy  # where the reconnects land
        if args.drain == "proxy":
            target, url_next, base_b = start_proxy(
                args, "proxy-b", proxy_config(urls, spread, args.clients, args.hint), logs)
            procs.append(target)
        else:
            # Everyone on backend-1: backend-2 drained (nothing to close) while they connect.
            admin(base, "POST", "/backends/backend-2/drain")
        n_procs = max(1, min(args.procs, args.clients))
        per = [args.clients // n_procs + (1 if i < args.clients % n_procs else 0)
               for i in range(n_procs)]
        budget = spread + 150
        clients: list[Proc] = []
        for i, count in enumerate(per):
            argv = [*_nice(args), "node", str(HOST_SCRIPT), "--url", url, "--count", str(count),
                    "--timing", timing, "--node-modules", str(nm),
                    "--client-module", str(args.client_module),
                    "--max-seconds", f"{budget:g}"]
            if url_next:
                argv += ["--url-next", url_next]
            c = _prioritize(Proc(f"clients-{i + 1}", argv, logs / f"clients-{i + 1}.log",
                                 stdin=True), args)
            procs.append(c)
            clients.append(c)
        t_connect = time.monotonic()
        for c in clients:
            cev = c.wait_event(lambda e: e.get("event") in ("connected", "error"), 90)
            if cev is None or cev.get("clients") != cev.get("of"):
                raise SetupError(f"{c.name}: not every client connected: {cev}\n{c.tail()}")
        result["connect_s"] = round(time.monotonic() - t_connect, 2)
        placed = {b["name"]: b["active"] for b in admin(base, "GET", "/backends")["backends"]}
        result["placed"] = placed
        if args.drain == "backend":
            if placed.get("backend-1") != args.clients:
                raise SetupError(f"clients not all on backend-1: {placed}")
            admin(base, "POST", "/backends/backend-2/undrain")
        elif sum(placed.values()) != args.clients:
            raise SetupError(f"clients not all on proxy A: {placed}")
        time.sleep(args.steady)

        for c in clients:
            c.send_line("arm")
        time.sleep(0.05)  # "arm" read before the first close can arrive
        cpu0 = {p.name: p.cpu_seconds() for p in procs}
        wait0 = {p.name: p.run_queue_seconds() for p in procs}
        busy0 = _busy_seconds()
        mark = len(proxy.lines)
        t0_wall = time.time()
        t0 = time.monotonic()
        admin(base, "POST", "/backends/backend-1/drain" if args.drain == "backend" else "/drain")
        result["drain_post_s"] = round(time.monotonic() - t0, 4)
        settled = [c.wait_event(lambda e: e.get("event") == "settled", spread + 45)
                   for c in clients]
        t_settled = time.monotonic()
        result["settled"] = all(s is not None for s in settled)
        status = admin(base, "GET", "/drain?wait=10s")
        result["drain_status_after"] = status
        finished = proxy.wait_event(lambda e: e.get("event") == "drain.finished", 5, mark)
        closing = proxy.wait_event(lambda e: e.get("event") == "drain.closing", 1, mark)
        result["proxy_drain_window_s"] = (closing or {}).get("window_s")
        result["proxy_drain_finished"] = finished is not None
        after_base = base if args.drain == "backend" else base_b
        result["after"] = {b["name"]: b["active"]
                           for b in admin(after_base, "GET", "/backends")["backends"]}
        span = max(t_settled - t0, 0.05)
        result["cpu_cores"] = {p.name: round((p.cpu_seconds() - cpu0[p.name]) / span, 2)
                               for p in procs}
        # Runnable but not running (a shared machine): stalls that bunch timers and closes.
        result["run_queue_wait_s"] = {p.name: round(p.run_queue_seconds() - wait0[p.name], 3)
                                      for p in procs}
        machine = (_busy_seconds() - busy0) / span
        result["other_cpu_cores"] = round(max(0.0, machine - sum(result["cpu_cores"].values())),
                                          2)
        for c in clients:
            c.send_line("stop")
        reports = []
        for c in clients:
            rev = c.wait_event(lambda e: e.get("event") == "result", 30)
            if rev is None:
                raise SetupError(f"{c.name} did not report:\n{c.tail()}")
            reports.append(rev)
        code = DRAINED_CODE if args.drain == "backend" else PROXY_DRAINED_CODE
        result.update(analyse(t0, spread, reports, code))
        result["proxy_view"] = proxy_view(target.events(mark if target is proxy else 0),
                                          t0_wall, "backend-2" if target is proxy else None)
        result["proxy_max_over_mean"] = result["proxy_view"]["max_over_mean"]
        waits = result["run_queue_wait_s"]
        result["wait_proxy_s"] = max(v for k, v in waits.items() if k.startswith("proxy"))
        result["wait_clients_max_s"] = max(v for k, v in waits.items() if k.startswith("cl"))
        return result
    finally:
        statuses = {}
        for p in reversed(procs):
            statuses[p.name] = p.stop(timeout=5, wait_first=2 if p.name.startswith("cl") else 0)
        result["exit_status"] = statuses


# --------------------------------------------------------------------------- analysis


def bucket_series(times: list[float], width: float = BUCKET) -> tuple[int, list[int]]:
    """Counts per bucket of *times* from the first one's bucket to the last's (zeros kept).

    Returns (index of the first bucket, counts).
    """
    if not times:
        return 0, []
    idx = [math.floor(t / width) for t in times]
    lo, hi = min(idx), max(idx)
    counts = [0] * (hi - lo + 1)
    for i in idx:
        counts[i - lo] += 1
    return lo, counts


def wave_stats(times: list[float]) -> dict[str, Any]:
    """Mean, max, max/mean and p99 per 100 ms bucket over the wave, and its spread."""
    lo, counts = bucket_series(times)
    if not counts:
        return {"mean_per_bucket": None, "max_per_bucket": None, "max_over_mean": None,
                "p99_per_bucket": None, "wave_s": None, "first_s": None, "last_s": None}
    mean = len(times) / len(counts)
    peak = max(counts)
    return {
        "mean_per_bucket": round(mean, 2),
        "max_per_bucket": peak,
        "max_over_mean": round(peak / mean, 3),
        "p99_per_bucket": percentile([float(c) for c in counts], 99),
        "wave_s": round(max(times) - min(times), 3),
        "first_s": round(min(times), 3),
        "last_s": round(max(times), 3),
        "first_bucket": lo,
        "buckets": counts,
        "max_1s": max(bucket_series(times, 1.0)[1]),
    }


def analyse(t0: float, spread: float, reports: list[dict[str, Any]],
            drained_code: int) -> dict[str, Any]:
    closes: list[float] = []
    close_codes: dict[str, int] = {}
    hints: list[float] = []
    reconnects: list[float] = []
    failed = 0
    failed_codes: dict[str, int] = {}
    waits: list[float] = []  # drain close -> reconnect open, per client
    over_hint: list[float] = []  # that, minus the close's hint (hinted closes)
    per_client: dict[tuple[int, int], list[list[Any]]] = {}
    for p, rep in enumerate(reports):
        for row in rep["sockets"]:
            per_client.setdefault((p, int(row[0])), []).append(row)
    for rows in per_client.values():
        rows.sort(key=lambda r: r[1])
        drained_at: float | None = None
        drained_hint: float | None = None
        for _cid, attempt, opened, closed, code, hint in rows:
            if opened is not None and closed is not None and closed >= t0:
                if code == drained_code and drained_at is None:
                    drained_at = closed
                    closes.append(closed - t0)
                    if hint is not None:
                        hints.append(float(hint))
                        drained_hint = float(hint) / 1000
                if code != 1000:  # 1000: our own close at the end
                    close_codes[str(code)] = close_codes.get(str(code), 0) + 1
            if attempt >= t0:
                if opened is None:
                    failed += 1
                    failed_codes[str(code)] = failed_codes.get(str(code), 0) + 1
                else:
                    reconnects.append(opened - t0)
                    if drained_at is not None:
                        waits.append(opened - drained_at)
                        if drained_hint is not None:
                            over_hint.append(opened - drained_at - drained_hint)
                        drained_at = None  # the first open after the drain's close
    uniform = len(closes) * BUCKET / spread if spread > 0 else None
    out: dict[str, Any] = {
        "drained": len(closes),
        "reconnects": len(reconnects),
        "failed_attempts": failed,
        "failed_codes": failed_codes,
        "close_codes_seen": close_codes,
        "closes_first_s": round(min(closes), 3) if closes else None,
        "closes_last_s": round(max(closes), 3) if closes else None,
        "close_stats": {k: v for k, v in wave_stats(closes).items() if k != "buckets"},
        "uniform_per_bucket": None if uniform is None else round(uniform, 2),
        "hints_seen": len(hints),
        "hint_ms_p50": percentile(hints, 50),
        "close_to_open_ms_p50": _ms(percentile(waits, 50)),
        "close_to_open_ms_p99": _ms(percentile(waits, 99)),
        "close_to_open_ms_max": _ms(max(waits) if waits else None),
        "close_to_open_minus_hint_ms_p50": _ms(percentile(over_hint, 50)),
        "close_to_open_minus_hint_ms_p99": _ms(percentile(over_hint, 99)),
        "client_loop_delay_ms_max": max((r["loop_delay_ms"]["max"] for r in reports),
                                        default=None),
        "client_loop_delay_ms_p99": max((r["loop_delay_ms"]["p99"] for r in reports),
                                        default=None),
        "lib_events": {k: sum(r["lib"][k] for r in reports) for k in reports[0]["lib"]}
        if reports else {},
    }
    out.update(wave_stats(reconnects))
    mom = out["max_over_mean"]
    out["criterion_met"] = None if mom is None else mom <= CRITERION
    return out


def proxy_view(events: list[dict[str, Any]], t0_wall: float,
               backend: str | None) -> dict[str, Any]:
    """The wave as the proxy logged it: its connection.opened lines (on *backend*)."""
    def at(e: dict[str, Any]) -> float | None:
        with contextlib.suppress(KeyError, ValueError, TypeError):
            return datetime.datetime.fromisoformat(
                str(e["timestamp"]).replace("Z", "+00:00")).timestamp() - t0_wall
        return None

    opens = [t for e in events if e.get("event") == "connection.opened"
             and backend in (None, e.get("backend")) and (t := at(e)) is not None and t >= 0]
    stats = wave_stats(opens)
    return {"reconnects": len(opens),
            **{k: stats[k] for k in ("mean_per_bucket", "max_per_bucket", "max_over_mean",
                                     "wave_s")}}


def model(timing: str, clients: int, spread: float, trials: int = 200,
          seed: int = 17, hint: bool = True) -> float | None:
    """max/mean per 100 ms bucket expected on an idle machine (median of *trials*).

    The proxy's schedule (one slot per connection, a random point in it), then each
    timing's wait: clients/js the hint (a whole number of ms in [0, 1000], the proxy's
    HINT_MAX_MS), Phoenix 10 ms, reconnecting-websocket its per-page
    minReconnectionDelay (1000 + random x 4000 ms); plus a fixed 5 ms for the upgrade.
    No scheduling noise: the difference to the measured figure is the machine's.
    """
    import random

    if spread <= 0:
        return None  # all at once: the proxy's own pace decides, which this leaves out
    rng = random.Random(seed)
    slot = max(spread, 1e-6) / clients
    # Without a hint clients/js backs off: attempt 1 waits random(0, baseMs = 500 ms).
    js_max = 1000 if hint else 500
    waits = {"js": lambda: rng.randint(0, js_max) / 1000, "immediate": lambda: 0.010,
             "rws": lambda: (1000 + rng.random() * 4000) / 1000}
    if timing not in waits:
        return None
    ratios = []
    for _ in range(trials):
        times = [(i + rng.random()) * slot + waits[timing]() + 0.005 for i in range(clients)]
        ratios.append(float(wave_stats(times)["max_over_mean"]))
    return round(statistics.median(ratios), 2)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the repetitions that completed."""
    ok = [r for r in runs if "max_over_mean" in r and r["max_over_mean"] is not None]
    keys = ("drained", "reconnects", "failed_attempts", "mean_per_bucket", "max_per_bucket",
            "max_over_mean", "p99_per_bucket", "wave_s", "first_s", "last_s", "max_1s",
            "uniform_per_bucket", "close_to_open_ms_p50", "close_to_open_minus_hint_ms_p50",
            "client_loop_delay_ms_max", "other_cpu_cores", "proxy_max_over_mean",
            "wait_proxy_s", "wait_clients_max_s")
    out: dict[str, Any] = {"reps": len(ok), "reps_failed": len(runs) - len(ok)}
    for k in keys:
        vals = [float(r[k]) for r in ok if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["max_over_mean_all"] = [r["max_over_mean"] for r in ok]
    out["criterion_met_reps"] = sum(1 for r in ok if r.get("criterion_met"))
    if ok:  # the repetition whose max/mean is the median: the one plotted
        ordered = sorted(ok, key=lambda r: r["max_over_mean"])
        pick = ordered[(len(ordered) - 1) // 2]
        out["plotted_rep"] = pick["rep"]
        out["plot"] = {"first_bucket": pick["first_bucket"], "buckets": pick["buckets"]}
    return out


# --------------------------------------------------------------------------- report


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.{nd}f}"
    return f"{int(x):,}"


def _ratio(x: float) -> str:
    """Two decimals, or three where two would hide which side of the criterion it is."""
    two = f"{x:.2f}"
    return two if (float(two) <= CRITERION) == (x <= CRITERION) else f"{x:.3f}"


def _label(timing: str, hint: bool) -> str:
    return TIMINGS[timing] if hint or timing != "js" else "clients/js (no hint: 0-500 ms)"


def table(summary: dict[str, dict[str, Any]], spread: float, drain: str,
          hint: bool = True) -> str:
    head = ("| client timing | clients | reconnects | mean / max per 100 ms | max / mean "
            f"(≤ {CRITERION}?) | model, idle machine | p99 per 100 ms | "
            "wave: first → last reconnect | failed attempts |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for timing, m in summary.items():
        if m.get("reps", 0) == 0:
            lines.append(f"| {_label(timing, hint)} | - | not run: {m.get('error', 'failed')} "
                         "| | | | | | |")
            continue
        verdict = "yes" if m["max_over_mean"] <= CRITERION else "**no**"
        lines.append(
            f"| {_label(timing, hint)} | {_f(m['drained'])} | {_f(m['reconnects'])} | "
            f"{_f(m['mean_per_bucket'])} / {_f(m['max_per_bucket'])} | "
            f"{_ratio(m['max_over_mean'])} ({verdict}) | {_f(m.get('model'), 2)} | "
            f"{_f(m['p99_per_bucket'])} | "
            f"{_f(m['first_s'], 2)} → {_f(m['last_s'], 2)} s ({_f(m['wave_s'], 2)} s) | "
            f"{_f(m['failed_attempts'])} |")
    uniform = next((m.get("uniform_per_bucket") for m in summary.values() if m.get("reps")),
                   None)
    note = (f"drain.spread {spread:g} s; a uniform wave would be {_f(uniform)} per 100 ms."
            if spread > 0 else "drain.spread 0 s (all closes at once).")
    ran = [(t, m) for t, m in summary.items() if m.get("reps")]
    proxy = ", ".join(f"{t} {_f(m.get('proxy_max_over_mean'), 2)}" for t, m in ran)
    waited = ", ".join(f"{t} {_f(m.get('wait_proxy_s'), 2)} / {_f(m.get('wait_clients_max_s'), 2)}"
                       for t, m in ran)
    other = ", ".join(f"{t} {_f(m.get('other_cpu_cores'), 1)}" for t, m in ran)
    return "\n".join(lines) + (
        f"\n\nMedians of the repetitions; {note} max / mean from the proxy's own log "
        f"({'connection.opened on backend-2' if drain == 'backend' else 'proxy B'}): "
        f"{proxy}. Seconds the proxy / the busiest client "
        f"process waited for a CPU during the wave: {waited}; cores used by other "
        f"processes meanwhile: {other}.")


def plot(summaries: dict[float, dict[str, dict[str, Any]]], path: Path, clients: int,
         drain: str, hint: bool = True) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: no matplotlib (pip install -e '.[bench]')"
    spreads = list(summaries)
    fig, axes = plt.subplots(len(spreads), 1, figsize=(9, 3.4 * len(spreads)), squeeze=False)
    colors = {"js": "tab:green", "immediate": "tab:red", "rws": "tab:blue"}
    for ax, spread in zip(axes[:, 0], spreads, strict=True):
        summary = summaries[spread]
        for timing, m in summary.items():
            p = m.get("plot")
            if not p:
                continue
            counts = [*p["buckets"], p["buckets"][-1]]  # "post" steps: close the last one
            xs = [(p["first_bucket"] + i) * BUCKET for i in range(len(counts))]
            label = (f"{_label(timing, hint)}: max/mean {m['max_over_mean']:.2f}, "
                     f"{_f(m['failed_attempts'])} failed")
            ax.step(xs, counts, where="post", color=colors.get(timing), label=label,
                    linewidth=1.2)
        uniform = next((m.get("uniform_per_bucket") for m in summary.values()
                        if m.get("uniform_per_bucket")), None)
        if uniform:
            ax.axhline(uniform, color="grey", linestyle=":", linewidth=1,
                       label=f"uniform over the spread ({uniform:g})")
            ax.axhline(uniform * CRITERION, color="grey", linestyle="--", linewidth=0.8,
                       label=f"{CRITERION} x uniform")
        what = f"drain.spread {spread:g} s" if spread else "drain.spread 0 (closes at once)"
        whom = "one backend (1012)" if drain == "backend" else "proxy A to proxy B (1001)"
        ax.set_title(f"{clients:,} clients drained off {whom}, {what}", fontsize=10)
        ax.set_xlabel("seconds since POST /backends/backend-1/drain" if drain == "backend"
                      else "seconds since POST /drain")
        ax.set_ylabel("reconnects per 100 ms")
        ax.grid(alpha=0.3)
        top = max((max(m["plot"]["buckets"]) for m in summary.values() if m.get("plot")),
                  default=1)
        ax.set_ylim(0, top * 1.5)  # room for the legend above the waves
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"plot: {_show(path)}"


def _show(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=None, help="N (2000; --quick: 300)")
    ap.add_argument("--procs", type=int, default=None,
                    help="Node processes hosting them (4; --quick: 2)")
    ap.add_argument("--spread", default=None,
                    help="drain.spread in seconds, comma-separated for several (10; --quick: 3)")
    ap.add_argument("--timings", default="js,immediate,rws",
                    help="which of js, immediate, rws (all three)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (3; --quick: 1)")
    ap.add_argument("--steady", type=float, default=1.0,
                    help="seconds between the undrain of backend-2 and the drain (1)")
    ap.add_argument("--backend", choices=("wsecho", "python"), default="wsecho")
    ap.add_argument("--no-hint", dest="hint", action="store_false",
                    help="drain.reconnect_hint: false (clients/js then backs off 0-500 ms)")
    ap.add_argument("--drain", choices=("backend", "proxy"), default="backend",
                    help="drain one backend of one proxy (1012; default), or a whole proxy "
                         "(POST /drain, 1001) with a second proxy to reconnect to")
    ap.add_argument("--node-modules", type=Path, default=None,
                    help="a node_modules with the pinned ws and reconnecting-websocket "
                         "(default: install them into bench/out/node)")
    ap.add_argument("--client-module", type=Path, default=CLIENT_MODULE)
    ap.add_argument("--nice", type=int, default=None,
                    help="run the proxy, backends and clients at this niceness "
                         "(-10 as root, else 0): other work on a shared machine delays "
                         "their timers less; they use well under one core")
    ap.add_argument("--from", dest="from_json", type=Path, default=None,
                    help="no run: the tables (beside it, .md) and --plot again from a saved "
                         "JSON report")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None,
                    help="the JSON report (bench/out/drain_wave.json; --drain proxy: "
                         "drain_wave_proxy.json); the table goes beside it as .md")
    ap.add_argument("--plot", type=Path, default=None,
                    help="the PNG (bench/out/drain_wave.png, or drain_wave_proxy.png)")
    args = ap.parse_args(argv)
    stem = ("drain_wave" if args.drain == "backend" else "drain_wave_proxy") + (
        "" if args.hint else "_nohint")
    args.out = args.out or OUT / f"{stem}.json"
    args.plot = args.plot or OUT / f"{stem}.png"
    args.clients = args.clients or (300 if args.quick else 2000)
    args.procs = args.procs or (2 if args.quick else 4)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.nice is None:
        args.nice = -10 if os.geteuid() == 0 else 0
    if not -20 <= args.nice <= 19:
        ap.error("--nice: -20 to 19")
    try:
        args.spreads = [float(x) for x in (args.spread or ("3" if args.quick else "10"))
                        .split(",")]
    except ValueError:
        ap.error("--spread: numbers of seconds, comma-separated")
    args.timing_list = [t.strip() for t in args.timings.split(",") if t.strip()]
    bad = [t for t in args.timing_list if t not in TIMINGS]
    if bad or not args.timing_list:
        ap.error(f"--timings: from {', '.join(TIMINGS)}; got {bad or 'none'}")
    if not 1 <= args.clients <= 5000:
        ap.error("--clients: 1 to 5000")
    if not 1 <= args.procs <= 16:
        ap.error("--procs: 1 to 16")
    if not 1 <= args.reps <= 10:
        ap.error("--reps: 1 to 10")
    if any(not 0 <= s <= 60 for s in args.spreads):
        ap.error("--spread: 0 to 60 seconds")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        return replot(args.from_json, args.plot)
    limit = _raise_fd_limit(4 * args.clients + 1024)
    if limit[0] < 2 * args.clients + 256:
        print(f"drain_wave: the descriptor limit {limit[0]} is too low for "
              f"{args.clients} clients (needs about {4 * args.clients + 1024})", file=sys.stderr)
        return 2
    if shutil.which("node") is None:
        print("drain_wave: node not found", file=sys.stderr)
        return 2
    try:
        nm = ensure_node_modules(args.node_modules)
    except SetupError as exc:
        print(f"drain_wave: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if "js" in args.timing_list and not args.client_module.exists():
        skipped["js"] = f"{_show(args.client_module)} missing"
    started = time.monotonic()
    status = 0
    try:
        for rep in range(args.reps):
            for spread in args.spreads:
                for timing in args.timing_list:
                    if timing in skipped:
                        continue
                    other = _other_load()
                    print(f"# rep {rep + 1}/{args.reps}, spread {spread:g} s, {timing}: "
                          f"{args.clients} clients (machine: {other:.1f} cores busy)",
                          file=sys.stderr, flush=True)
                    try:
                        run = run_once(args, nm, timing, spread, rep)
                    except SetupError as exc:
                        print(f"drain_wave: {timing}: {exc}", file=sys.stderr)
                        run = {"timing": timing, "spread_s": spread, "rep": rep + 1,
                               "error": str(exc)}
                        status = 2
                    run["other_cpu_cores_before"] = round(other, 2)
                    runs.append(run)
                    if "max_over_mean" in run:
                        print(f"  reconnects {run['reconnects']}, max/mean "
                              f"{run['max_over_mean']}, failed {run['failed_attempts']}, "
                              f"wave {run['wave_s']} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("drain_wave: interrupted", file=sys.stderr)
        status = 130
    elapsed = time.monotonic() - started
    command = " ".join(["python bench/drain_wave.py", *(sys.argv[1:] if argv is None else argv)])
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "elapsed_s": round(elapsed, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "nofile": list(limit),
                    "node": subprocess.run(["node", "--version"], capture_output=True,
                                           text=True, check=False).stdout.strip()},
        "npm": NPM_PINS,
        "options": {"clients": args.clients, "procs": args.procs, "reps": args.reps,
                    "nice": args.nice, "drain": args.drain, "spreads": args.spreads,
                    "timings": args.timing_list, "skipped": skipped,
                    "backend": args.backend, "steady_s": args.steady, "hint": args.hint},
        "runs": runs,
    }
    md, plot_note = render(report, args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"{plot_note}; details in {_show(args.out)}, logs in {_show(LOGS)}/")
    if status == 0 and any("error" in r for r in runs):
        status = 2
    return status


def render(report: dict[str, Any], plot_path: Path) -> tuple[str, str]:
    """The markdown tables and the plot of a report (also ``--from`` a saved one)."""
    o = report["options"]
    summaries: dict[float, dict[str, dict[str, Any]]] = {}
    for spread in o["spreads"]:
        summaries[spread] = {}
        for timing in o["timings"]:
            if timing in o["skipped"]:
                summaries[spread][timing] = {"reps": 0, "error": o["skipped"][timing]}
                continue
            summaries[spread][timing] = medians(
                [r for r in report["runs"] if r["timing"] == timing and r["spread_s"] == spread])
            summaries[spread][timing]["model"] = model(timing, o["clients"], spread,
                                                       hint=o.get("hint", True))
    report["summaries"] = {f"{s:g}": v for s, v in summaries.items()}
    md = [f"`{report['command']}` ({o['reps']} reps, {o['clients']:,} clients in {o['procs']} "
          f"Node processes, reconnect hint {'on' if o.get('hint', True) else 'off'}, "
          f"nice {o['nice']}, {report['machine']['cpus']} CPUs, "
          f"{report['elapsed_s']:.0f} s, {report['when']})", ""]
    for spread, summary in summaries.items():
        md += [table(summary, spread, o["drain"], o.get("hint", True)), ""]
    return "\n".join(md), plot(summaries, plot_path, o["clients"], o["drain"],
                                o.get("hint", True))


def replot(path: Path, plot_path: Path) -> int:
    """``--from JSON``: the tables and the plot again, from a saved report."""
    report = json.loads(path.read_text())
    md, note = render(report, plot_path)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(note)
    return 0

if __name__ == "__main__":
    sys.exit(main())
