#!/usr/bin/env python3
"""Rebalancing at scale: 3 backends x 3,000 clients, then a 4th joins (issue 19).

    python bench/rebalance.py                          # 3 x 3,000, max_close_rate 100
    python bench/rebalance.py --per-backend 300 --rate 50   # the integration test's size
    python bench/rebalance.py --rate 20                # the default rate: ~2 min of closes

What it does:

1. starts four built-in echo backends (``wsproxy echo-backend``) and ``wsproxy run -c
   FILE`` on 127.0.0.1 with backends a, b, c, ``balance: round_robin`` and ``rebalance``
   off (the uneven counts of 9,000 dials in flight would start a round of their own);
2. opens 3 x N clients through the proxy from ``--procs`` client processes (this script
   run with ``--_client``; tests/integration/rebalance_load.py's ``SeqClient``): each
   sends ``"<id> <seq>"`` every ``--period`` seconds and checks every echo (in order,
   exactly once); closed by the proxy, it waits the close reason's ``retry-after-ms``,
   reconnects and resends what had not been echoed;
3. rewrites the config with backend d and ``rebalance: {enabled: true, max_close_rate:
   R, warmup: W}`` and sends SIGHUP: after d's warmup (and the trigger's 2 s hold) a
   round closes the excess of a, b and c, oldest first, with 1012 and the hint;
4. samples ``GET /backends`` every 250 ms until the round is over and the max/mean
   ratio is at most 1.10 (bounded by ``--timeout``), then stops the clients, which wait
   for their last echoes and report.

Reported: the closes against the ideal (3 x (N - 3N/4)), the seconds from the SIGHUP to
a ratio of 1.10 and to the round's end, the per-second close rate seen by the proxy
(its ``rebalance.close`` lines) and by the clients, the per-second reconnect rate,
the ratio over time, messages lost (must be 0), closes that were not 1012
``rebalancing; retry-after-ms=N`` (must be 0) and failed reconnects. It prints a
markdown table, writes ``bench/out/rebalance.json`` and plots the per-backend
connection counts, the close and reconnect rates and the ratio to
``bench/results/rebalance.png`` (matplotlib: ``pip install -e '.[bench]'``).

Everything listens on 127.0.0.1; every process started is stopped by its PID; every
wait is bounded. RLIMIT_NOFILE is raised to its hard limit (the proxy holds two sockets
a connection: 3 x 3,000 needs some 18,500).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import socket
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.integration: the client and the process helpers

from tests.integration.proxy_process import proxy_process, started  # noqa: E402
from tests.integration.rebalance_load import SeqClient, admin_json, max_in_window  # noqa: E402

OUT = ROOT / "bench" / "out"
PNG = ROOT / "bench" / "results" / "rebalance.png"
SAMPLE = 0.25
#: Between two clients' first dials, in each client process: ~300 dials a second each.
#: A burst of thousands overflows the listen queues, and the retries of the ones that
#: failed left TIME_WAITs enough to run out of ports.
START_GAP = 0.003


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The client processes ----------------------------------------------------------------


async def client_main(url: str, first: int, count: int, period: float, local: str) -> None:
    """Run *count* SeqClients; "ready" once all are connected; stop on stdin's "stop"."""
    raise_nofile()
    stop = anyio.Event()
    clients = [SeqClient(first + i, url, local_host=local) for i in range(count)]
    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(client.run, stop, period, random.Random(client.id))
            await anyio.sleep(START_GAP)  # a steady stream of dials, not one burst
        deadline = anyio.current_time() + 300
        for client in clients:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await client.connected()
        errors = Counter(e for c in clients for e in c.errors)
        if errors or not all(c.opens for c in clients):
            print(f"client errors: {errors.most_common(5)}; connected "
                  f"{sum(1 for c in clients if c.opens)}/{count}", file=sys.stderr, flush=True)
        print("ready", flush=True)
        stdin = anyio.wrap_file(sys.stdin)
        while (line := await stdin.readline()) and line.strip() != "stop":
            pass
        stop.set()
    report = {
        "sent": sum(c.sent for c in clients), "acked": sum(c.acked for c in clients),
        "mismatches": sum(len(c.mismatches) for c in clients),
        "failed_connects": sum(c.failed_connects for c in clients),
        "gave_up": sum(1 for c in clients if c.acked != c.sent),
        "closes": [(x.at, x.code, x.reason) for c in clients for x in c.closes],
        "reopens": [t for c in clients for t in c.opens[1:]],
    }
    print(json.dumps(report), flush=True)


# The run ---------------------------------------------------------------------------------


def config(backends: dict[str, int], *, enabled: bool, rate: float, warmup: float,
           ) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "backends": [{"name": n, "url": f"ws://127.0.0.1:{p}"} for n, p in backends.items()],
        "balance": "round_robin",
        "rebalance": {"enabled": enabled, "ratio": 1.2, "max_close_rate": rate,
                      "warmup": f"{warmup}s"},
        "limits": {"max_connections": 30000},
        "logging": {"level": "info"},
    }


async def wait_port(port: int) -> None:
    with anyio.fail_after(20):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


async def run(args: argparse.Namespace) -> dict[str, Any]:
    hard = raise_nofile()
    ports = {name: free_port() for name in "abcd"}
    total = 3 * args.per_backend
    OUT.mkdir(parents=True, exist_ok=True)
    wall_minus_mono = time.time() - time.monotonic()
    result: dict[str, Any] = {"command": " ".join(sys.argv), "per_backend": args.per_backend,
                              "rate": args.rate, "warmup": args.warmup,
                              "period": args.period, "nofile": hard}
    async with AsyncExitStack() as stack:
        for port in ports.values():
            await stack.enter_async_context(started("echo-backend", "--port", str(port)))
        for port in ports.values():
            await wait_port(port)
        three = {n: p for n, p in ports.items() if n != "d"}
        cfg = config(three, enabled=False, rate=args.rate, warmup=args.warmup)
        proxy = await stack.enter_async_context(proxy_process(cfg, OUT))
        admin = (await proxy.wait_for_event("admin.listening"))["address"]
        result.update(await drive(args, proxy, admin, ports, total))
    result["wall_minus_mono"] = wall_minus_mono
    return result


async def drive(args: argparse.Namespace, proxy: Any, admin: str, ports: dict[str, int],
                total: int) -> dict[str, Any]:
    procs = []
    per = -(-total // args.procs)
    for i in range(args.procs):
        count = min(per, total - i * per)
        procs.append(await anyio.open_process(
            [sys.executable, __file__, "--_client", "--url", proxy.url, "--first", str(i * per),
             "--count", str(count), "--period", str(args.period),
             "--local", f"127.0.0.{10 + i}"],
            stdin=-1, stdout=-1))
    readers = [BufferedByteReceiveStream(p.stdout) for p in procs]
    samples: list[tuple[float, dict[str, int], bool]] = []
    try:
        connect_started = time.monotonic()
        with anyio.fail_after(args.timeout):
            for reader in readers:
                line = await reader.receive_until(b"\n", 1 << 20)
                assert line == b"ready", line
        connected_in = time.monotonic() - connect_started
        print(f"{total} clients connected in {connected_in:.1f}s", file=sys.stderr)
        path = OUT / "wsproxy.yaml"
        path.write_text(json.dumps(config(ports, enabled=True, rate=args.rate,
                                          warmup=args.warmup)), encoding="utf-8")
        joined = time.monotonic()
        proxy.signal(signal.SIGHUP)
        balanced_at = ended_at = None
        with anyio.fail_after(args.timeout):
            while True:
                rows = (await admin_json(admin, "GET", "/backends"))["backends"]
                status = await admin_json(admin, "GET", "/rebalance")
                now = time.monotonic()
                counts = {r["name"]: r["active"] for r in rows if not r.get("removed")}
                samples.append((now - joined, counts, bool(status["running"])))
                ratio = max(counts.values()) * len(counts) / max(1, sum(counts.values()))
                if balanced_at is None and "d" in counts and ratio <= 1.10:
                    balanced_at = now - joined
                if ended_at is None and status["rounds"] >= 1 and not status["running"]:
                    ended_at = now - joined
                if balanced_at is not None and ended_at is not None and \
                        now - joined >= ended_at + 2:
                    break
                await anyio.sleep(SAMPLE)
        reports = []
        for proc in procs:
            assert proc.stdin is not None
            await proc.stdin.send(b"stop\n")
        with anyio.fail_after(120):
            for reader in readers:
                reports.append(json.loads(await reader.receive_until(b"\n", 1 << 28)))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            with anyio.move_on_after(10):
                await proc.wait()
    lines = [r for r in proxy.records if r.get("event") == "rebalance.close"]
    sent = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in lines]
    by_backend = Counter(str(r["backend"]) for r in lines)
    rounds = [r for r in proxy.records if r.get("event") == "rebalance.finished"]
    return {"joined_mono": joined, "connected_in_s": round(connected_in, 2),
            "balanced_after_s": balanced_at, "round_ended_after_s": ended_at,
            "samples": samples, "reports": reports, "proxy_closes_wall": sent,
            "closes_by_backend": dict(sorted(by_backend.items())),
            "rounds": rounds}


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    joined = r["joined_mono"]
    closes = [c for rep in r["reports"] for c in rep["closes"]]
    reopens = [t - joined for rep in r["reports"] for t in rep["reopens"]]
    client_closes = sorted(at - joined for at, _, _ in closes)
    proxy_closes = sorted(t - r["wall_minus_mono"] - joined for t in r["proxy_closes_wall"])
    bad = [c for c in closes if c[1] != 1012 or not str(c[2]).startswith("rebalancing; ")]
    n = r["per_backend"]
    ideal = 3 * (n - (3 * n) // 4)
    return {
        "clients": 3 * n, "ideal_closes": ideal,
        "closes_proxy": len(proxy_closes), "closes_seen_by_clients": len(client_closes),
        "closes_over_ideal": round(len(proxy_closes) / ideal, 3) if ideal else None,
        "closes_by_backend": r["closes_by_backend"],
        "max_close_rate": r["rate"],
        "peak_closes_per_s_proxy": max_in_window(proxy_closes, 1.0),
        "peak_closes_per_s_clients": max_in_window(client_closes, 1.0),
        "peak_reconnects_per_s": max_in_window(reopens, 1.0),
        "first_close_after_s": round(proxy_closes[0], 2) if proxy_closes else None,
        "balanced_after_s": r["balanced_after_s"] and round(r["balanced_after_s"], 2),
        "round_ended_after_s": r["round_ended_after_s"] and round(r["round_ended_after_s"], 2),
        "messages_sent": sum(rep["sent"] for rep in r["reports"]),
        "messages_lost": sum(rep["sent"] - rep["acked"] for rep in r["reports"]),
        "echo_mismatches": sum(rep["mismatches"] for rep in r["reports"]),
        "abnormal_closes": len(bad), "failed_connects": sum(rep["failed_connects"]
                                                           for rep in r["reports"]),
        "final_counts": r["samples"][-1][1] if r["samples"] else {},
        "client_closes_rel": client_closes, "proxy_closes_rel": proxy_closes,
        "reopens_rel": sorted(reopens),
    }


def per_second(times: list[float], end: float) -> tuple[list[float], list[int]]:
    buckets = Counter(int(t) for t in times if t >= 0)
    xs = list(range(int(end) + 1))
    return [x + 0.5 for x in xs], [buckets.get(x, 0) for x in xs]


def plot(r: dict[str, Any], s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = r["samples"]
    ts = [t for t, _, _ in samples]
    names = sorted({name for _, counts, _ in samples for name in counts})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    for name in names:
        top.plot(ts, [counts.get(name, 0) for _, counts, _ in samples],
                 label=f"backend {name}", linewidth=1.8)
    mean = s["clients"] / 4
    top.axhline(mean, color="grey", linestyle=":", linewidth=1, label=f"mean ({mean:g})")
    top.axvline(r["warmup"], color="grey", linestyle="--", linewidth=1,
                label=f"warmup ends ({r['warmup']:g} s)")
    top.set_ylabel("open connections")
    top.set_title(f"Rebalancing: 3 x {r['per_backend']:,} clients, backend d joins at t=0 "
                  f"(SIGHUP); max_close_rate {r['rate']:g}/s")
    top.legend(loc="center right", fontsize=9)
    top.grid(alpha=0.3)
    end = ts[-1] if ts else 1.0
    xs, closes = per_second(s["proxy_closes_rel"], end)
    _, reopens = per_second(s["reopens_rel"], end)
    bottom.bar([x - 0.2 for x in xs], closes, width=0.4, label="closes/s (proxy)",
               color="#d9822b")
    bottom.bar([x + 0.2 for x in xs], reopens, width=0.4, label="reconnects/s (clients)",
               color="#2b7bd9")
    bottom.axhline(r["rate"], color="#d9822b", linestyle=":", linewidth=1,
                   label="max_close_rate")
    bottom.set_ylabel("per second")
    bottom.set_xlabel("seconds since the SIGHUP that added backend d")
    twin = bottom.twinx()
    twin.plot(ts, [max(c.values()) * len(c) / max(1, sum(c.values())) for _, c, _ in samples],
              color="black", linewidth=1.2, label="max/mean")
    twin.set_ylabel("max/mean")
    twin.set_ylim(0.9, max(1.5, twin.get_ylim()[1]))
    lines = bottom.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    bottom.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=9)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(s: dict[str, Any]) -> str:
    rows = [
        ("clients", f"{s['clients']:,}"),
        ("closes (proxy) / ideal", f"{s['closes_proxy']} / {s['ideal_closes']} "
                                   f"({s['closes_over_ideal']}x)"),
        ("closes seen by clients", str(s["closes_seen_by_clients"])),
        ("closes by backend", ", ".join(f"{k} {v}" for k, v in s["closes_by_backend"].items())
         + " (none on d)" * ("d" not in s["closes_by_backend"])),
        ("first close after the SIGHUP", f"{s['first_close_after_s']} s"),
        ("max/mean <= 1.10 after", f"{s['balanced_after_s']} s"),
        ("round over after", f"{s['round_ended_after_s']} s"),
        ("peak closes in 1 s: proxy / clients (max_close_rate)",
         f"{s['peak_closes_per_s_proxy']} / {s['peak_closes_per_s_clients']} "
         f"({s['max_close_rate']:g})"),
        ("peak reconnects in 1 s", str(s["peak_reconnects_per_s"])),
        ("messages sent / lost / mismatched", f"{s['messages_sent']:,} / "
                                              f"{s['messages_lost']} / {s['echo_mismatches']}"),
        ("closes not 1012 rebalancing+hint", str(s["abnormal_closes"])),
        ("failed (re)connects", str(s["failed_connects"])),
        ("final counts", ", ".join(f"{k} {v}" for k, v in sorted(s["final_counts"].items()))),
    ]
    return "\n".join(["| figure | value |", "|---|---|",
                      *(f"| {k} | {v} |" for k, v in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-backend", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=100.0, help="rebalance.max_close_rate")
    parser.add_argument("--warmup", type=float, default=5.0, help="rebalance.warmup, seconds")
    parser.add_argument("--period", type=float, default=5.0, help="seconds between messages")
    parser.add_argument("--procs", type=int, default=3, help="client processes")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--png", type=Path, default=PNG)
    parser.add_argument("--_client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--local", default="127.0.0.1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._client:
        anyio.run(client_main, args.url, args.first, args.count, args.period, args.local)
        return 0
    raw = anyio.run(run, args)
    summary = summarize(raw)
    plot(raw, summary, args.png)
    brief = {k: v for k, v in summary.items() if not k.endswith("_rel")}
    (OUT / "rebalance.json").write_text(json.dumps(
        {"run": {k: v for k, v in raw.items() if k != "reports"}, "summary": brief},
        indent=1), encoding="utf-8")
    print(f"`{' '.join(sys.argv)}`\n")
    print(table(summary))
    print(f"\nplot: {args.png}")
    ok = (summary["messages_lost"] == 0 and summary["abnormal_closes"] == 0
          and summary["balanced_after_s"] is not None)
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
