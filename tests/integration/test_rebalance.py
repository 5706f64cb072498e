"""Rebalancing (issue 19): long-lived connections follow the backends that join.

The acceptance runs (``wsproxy run`` as a subprocess, tests/integration/proxy_process.py):
3 backends x 300 clients with sequenced echo traffic (tests/integration/rebalance_load.py),
then a 4th backend joins, once by SIGHUP after the config file gained it, once through
DNS discovery (tests/integration/dns_server.py, the backends on 127.0.0.2-5 and one
port). Within ``warmup`` + 60 s the max/mean ratio of the proxy's counts must be at most
1.10, and:

- closes at most 1.1 x the ideal (225 = 3 x (300 - 225)), none on the new backend, and
  none on an old backend once it was down to the mean (at most 75 each: a backend
  closed a 76th time would have been at the mean);
- the close rate never above ``max_close_rate``. Two clocks are read. The proxy's: a
  ``rebalance.close`` log line per close, stamped when the close is sent; the pacer keeps
  two closes at least 1/rate apart on the loop's clock (tests/unit/test_rebalance.py),
  so any one-second window holds at most rate closes, plus one allowed for the log's
  wall-clock stamps against the loop's monotonic clock. The clients': each stamps its
  close when its reader sees it. That moment trails the send by a delay that varies
  with the load of this process's event loop (1,800 sockets; the 2-core machine is
  shared: load averages of 15-20 were seen), and a stalled loop hands out a second's
  closes together with the next one's: measured, up to 1.5 x rate in a window at a load
  of 17. So the clients' check allows ``JITTER`` = 1 s of that variation (at most
  2 x rate in any one-second window, which still fails a proxy that does not pace: it
  would send the 225 at once) and checks the rate over the whole round, first close to
  last (seconds long, where two moments' jitter hardly counts): at most rate x 1.1;
- every closed client saw 1012 ``rebalancing; retry-after-ms=N`` and reconnected (after
  waiting N ms), and no message was lost (every message sent was echoed, in order,
  exactly once; those cut off by a close were resent on the new connection).

``max_close_rate`` is 50 here (the default is 20) so that the 225 closes take ~4.5 s,
and ``warmup`` 1 s (default 10 s): each run takes ~15-25 s.

The smaller tests run the proxy in this event loop (tests/integration/peers.py): no
round while a drain runs (and ``POST /rebalance`` answered 409), one once it ends; off by
default; a backend back from failing health checks waits its warmup; ``POST
/rebalance``, ``GET /rebalance``, the share in ``GET /backends``, the metrics and
``wsproxy rebalance``. "Nothing happens" is waited out as a number of the rebalancer's
looks at the backends (``Rebalancer.looks``), not as a sleep.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.integration import browser
from tests.integration.dns_server import dns_server
from tests.integration.peers import make_config, running_proxy
from tests.integration.proxy_process import proxy_process, run_cli_async
from tests.integration.rebalance_load import (
    HINT,
    EchoServer,
    SeqClient,
    admin_json,
    max_in_window,
    named_echo,
)
from tests.integration.test_admin import admin
from tests.integration.test_health import HEALTH, flippable, until
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

PER_BACKEND = 300
RATE = 50
WARMUP = 1.0
JITTER = 1.0
#: Each client sends a message this often.
PERIOD = 1.0
REBALANCE = {"enabled": True, "ratio": 1.2, "max_close_rate": RATE, "warmup": f"{WARMUP}s"}
OFF = {**REBALANCE, "enabled": False}
REASON = r"^rebalancing; retry-after-ms=\d+$"


def ratio(counts: dict[str, int]) -> float:
    values = list(counts.values())
    return max(values) * len(values) / sum(values)


async def active_counts(admin: str) -> dict[str, int]:
    rows = (await admin_json(admin, "GET", "/backends"))["backends"]
    return {row["name"]: row["active"] for row in rows if not row.get("removed")}


async def acceptance(url: str, admin: str, old: Sequence[str], new: str,
                     join: Callable[[], Awaitable[None]], proxy_log: list[dict[str, Any]]
                     ) -> None:
    """The issue's scenario against a running proxy: len(old) x 300 clients, *join*
    brings *new* in, then every property of the module docstring is checked."""
    stop = anyio.Event()
    clients = [SeqClient(i, url) for i in range(PER_BACKEND * len(old))]
    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(client.run, stop, PERIOD, random.Random(client.id))
        with anyio.fail_after(90):
            for client in clients:
                await client.connected()
        # Round robin: 300 each, give or take one (a retried upgrade moves one on).
        initial = await active_counts(admin)
        assert set(initial) == set(old)
        assert sum(initial.values()) == len(clients)
        assert all(abs(n - PER_BACKEND) <= 2 for n in initial.values()), initial
        joined = time.monotonic()
        await join()
        with anyio.fail_after(WARMUP + 60):
            while True:
                counts = await active_counts(admin)
                status = await admin_json(admin, "GET", "/rebalance")
                if (new in counts and ratio(counts) <= 1.10 and status["rounds"] >= 1
                        and not status["running"]):
                    break
                await anyio.sleep(0.2)
        # The clients' own view agrees: each is on a backend, spread as the proxy says.
        with anyio.fail_after(30):
            while any(c.backend is None for c in clients):  # noqa: ASYNC110 (polled)
                await anyio.sleep(0.05)
        seen = Counter(c.backend for c in clients)
        proxy_view = await active_counts(admin)
        stopped = time.monotonic()
        stop.set()
    assert dict(seen) == proxy_view
    total = PER_BACKEND * len(old)
    mean = total / (len(old) + 1)
    assert ratio(dict(seen)) <= 1.10, seen
    assert max(abs(n - mean) for n in seen.values()) <= math.ceil(0.10 * mean)

    # As the clients leave, one by one, the counts may drift past the trigger again
    # and a round start: those closes are checked like the others (1012 and the hint,
    # a reconnect, nothing lost) but they are not the join's round.
    every = [close for c in clients for close in c.closes]
    for close in every:
        assert close.code == 1012, close
        assert HINT.search(close.reason), close
        assert close.reason.startswith("rebalancing; "), close
    closes = [close for close in every if close.at < stopped]
    ideal = sum(max(0, n - int(mean)) for n in initial.values())  # 225
    assert closes, "no rebalancing close"
    assert len(closes) <= 1.1 * ideal, (len(closes), ideal)
    by_backend = Counter(close.backend for close in closes)
    assert by_backend[new] == 0
    for name in old:  # never closed at or below the mean
        assert by_backend[name] <= initial[name] - int(mean), by_backend
    moments = sorted(close.at for close in closes)
    assert moments[0] >= joined + WARMUP  # the new backend's warmup first
    assert max_in_window(moments, 1.0) <= RATE * (1 + JITTER), max_in_window(moments, 1.0)
    if len(moments) > RATE:
        assert (len(moments) - 1) / (moments[-1] - moments[0]) <= RATE * 1.1
    # The proxy's own moments (its rebalance.close lines): never more than RATE in a
    # second, one more allowed for the wall clock the log stamps against the loop's.
    sent = sorted(datetime.fromisoformat(r["timestamp"]).timestamp()
                  for r in proxy_log if r.get("event") == "rebalance.close")
    assert len(sent) >= len(closes)
    assert max_in_window(sent, 1.0) <= RATE + 1, max_in_window(sent, 1.0)
    for client in clients:
        assert client.failed_connects == 0, client.id
        assert len(client.opens) == len(client.closes) + 1  # each close: one reconnect
        assert client.mismatches == [], (client.id, client.mismatches[:3])
        assert client.acked == client.sent  # no message lost


def proxy_config(**extra: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "balance": "round_robin",
        "rebalance": REBALANCE,
        "heartbeat": {"interval": "20s", "timeout": "10s"},
        "logging": {"level": "info"},
        **extra,
    }


@pytest.mark.exclusive  # 900 clients and a close rate: not beside other tests
@pytest.mark.timeout(180)
async def test_a_backend_added_by_sighup_gets_its_share(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        servers: list[EchoServer] = [
            await stack.enter_async_context(named_echo(name)) for name in "abcd"
        ]
        rows = [{"name": s.name, "url": s.url} for s in servers]
        # Off while the 900 connect (the counts of dials in flight are uneven); the
        # reload that adds d turns it on.
        proxy = await stack.enter_async_context(
            proxy_process(proxy_config(backends=rows[:3], rebalance=OFF), tmp_path))
        admin = (await proxy.wait_for_event("admin.listening"))["address"]

        async def join() -> None:
            path = tmp_path / "wsproxy.yaml"
            path.write_text(json.dumps(proxy_config(backends=rows)), encoding="utf-8")
            proxy.signal(signal.SIGHUP)
            await proxy.wait_for_event("config.reloaded")

        await acceptance(proxy.url, admin, ["a", "b", "c"], "d", join, proxy.records)
        finished = proxy.events("rebalance.finished")
        assert finished, "no rebalance.finished line"
        assert finished[0]["outcome"] == "balanced"


def free_port_on(hosts: Sequence[str]) -> int:
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every host")


@pytest.mark.exclusive  # 900 clients and a close rate: not beside other tests
@pytest.mark.timeout(180)
async def test_a_backend_discovered_by_dns_gets_its_share(tmp_path: Path) -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    port = free_port_on(hosts)
    async with AsyncExitStack() as stack:
        dns = await stack.enter_async_context(dns_server())
        for host in hosts:
            await stack.enter_async_context(named_echo(f"{host}:{port}", host, port))
        dns.set_addresses("app.test", *hosts[:3])
        discovery = {"dns": {"name": "app.test", "port": port, "resolver": dns.address,
                             "interval": "200ms"}}
        proxy = await stack.enter_async_context(
            proxy_process(proxy_config(discovery=discovery, rebalance=OFF), tmp_path))
        admin = (await proxy.wait_for_event("admin.listening"))["address"]
        old = [f"{host}:{port}" for host in hosts[:3]]
        with anyio.fail_after(20):
            while set(await active_counts(admin)) != set(old):  # noqa: ASYNC110 (polled)
                await anyio.sleep(0.05)

        async def join() -> None:
            # On (a reload: rebalance.* is live), then the 4th pod appears in DNS.
            path = tmp_path / "wsproxy.yaml"
            path.write_text(json.dumps(proxy_config(discovery=discovery)), encoding="utf-8")
            proxy.signal(signal.SIGHUP)
            await proxy.wait_for_event("config.reloaded")
            dns.set_addresses("app.test", *hosts)

        await acceptance(proxy.url, admin, old, f"{hosts[3]}:{port}", join, proxy.records)


# In-process: drains, the default, health, the controls ------------------------------------

SMALL = 20


@asynccontextmanager
async def clients_on(ctx: ProxyContext, count: int, query: str = ""
                     ) -> AsyncIterator[list[SeqClient]]:
    """*count* SeqClients through *ctx*, connected; stopped (and checked) at the end."""
    host, port = ctx.addresses[0]
    stop = anyio.Event()
    clients = [SeqClient(i, f"ws://{host}:{port}/{query}") for i in range(count)]
    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(client.run, stop, 0.2, random.Random(client.id))
        with anyio.fail_after(20):
            for client in clients:
                await client.connected()
        yield clients
        stop.set()
    for client in clients:
        assert client.mismatches == []
        assert client.acked == client.sent


def rebalancing_closes(clients: Sequence[SeqClient]) -> list[Any]:
    return [c for client in clients for c in client.closes if c.reason.startswith("rebalancing")]


async def looks(ctx: ProxyContext, more: int) -> None:
    """Until the rebalancer has looked at the backends *more* times again."""
    target = ctx.rebalancer.looks + more
    await until(lambda: ctx.rebalancer.looks >= target, f"{more} looks", bound=20)


@asynccontextmanager
async def echo_set(names: str) -> AsyncIterator[list[EchoServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(named_echo(n)) for n in names]


async def test_no_round_while_a_drain_runs_and_one_after(tmp_path: Path) -> None:
    async with echo_set("abcd") as servers:
        rows = [{"name": s.name, "url": s.url} for s in servers]
        config = make_config(rows[:3], balance="round_robin",
                             rebalance={**REBALANCE, "warmup": "200ms"},
                             drain={"spread": "60s", "timeout": "90s"})
        async with running_proxy(config) as ctx, clients_on(ctx, 3 * SMALL) as clients:
            c = ctx.balancer.backends["c"]
            ctx.drain_backend(c)  # a long drain: c's clients go, a few at a time
            ctx.apply_config(make_config(rows, balance="round_robin",
                                         rebalance={**REBALANCE, "warmup": "200ms"},
                                         drain={"spread": "60s", "timeout": "90s"}))
            await until(lambda: "d" in {b.name for b in ctx.rebalancer._since}, "d joined")
            await anyio.sleep(0.3)  # past d's warmup (a lower bound, nothing waits on it)
            await looks(ctx, 4)
            status = ctx.rebalancer.status()
            assert status["draining"]
            assert not status["warming_up"]
            assert status["ratio"] > 1.2  # the trigger would fire…
            assert ctx.rebalancer.rounds == 0  # …but a drain runs
            assert rebalancing_closes(clients) == []
            refused = await admin(ctx, "POST", "/rebalance", json_body={})
            assert refused.status == 409
            assert "drain" in refused.json()["error"]
            assert ctx.undrain_backend(c)
            await until(lambda: ctx.rebalancer.rounds >= 1 and ctx.rebalancer.current is None,
                        "a round once the drain ended", bound=30)
            assert rebalancing_closes(clients)
            assert {close.backend for close in rebalancing_closes(clients)} <= {"a", "b", "c"}


async def test_off_by_default_nothing_moves() -> None:
    async with echo_set("abc") as servers:
        rows = [{"name": s.name, "url": s.url} for s in servers]
        config = make_config(rows[:2], balance="round_robin",
                             rebalance={"warmup": "0s"})
        assert config.rebalance.enabled is False
        async with running_proxy(config) as ctx, clients_on(ctx, 2 * SMALL) as clients:
            ctx.apply_config(make_config(rows, balance="round_robin", rebalance={"warmup": "0s"}))
            await looks(ctx, 6)
            assert ctx.rebalancer.rounds == 0
            assert ctx.rebalancer.ratio() == pytest.approx(1.5)
            assert all(client.closes == [] for client in clients)
            assert ctx.balancer.backends["c"].active == 0


async def test_a_backend_back_from_failing_health_checks_waits_its_warmup() -> None:
    warmup = 2.0
    async with AsyncExitStack() as stack:
        backs = [await stack.enter_async_context(flippable(n)) for n in "abc"]
        config = make_config([{"name": b.name, "url": b.url} for b in backs],
                             balance="round_robin",
                             rebalance={**REBALANCE, "warmup": f"{warmup}s"},
                             drain={"spread": "200ms", "timeout": "2s"})
        config = dataclasses.replace(config, health_check=HEALTH)
        ctx = await stack.enter_async_context(running_proxy(config))
        host, port = ctx.addresses[0]
        await until(lambda: ctx.rebalancer.warm(ctx.balancer.backends["c"]), "c warm")
        # Clients that answer "who?" are not needed here: Flippable echoes, and the
        # proxy's counts tell where each is.
        stop = anyio.Event()
        clients = [SeqClient(i, f"ws://{host}:{port}") for i in range(3 * SMALL)]
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(client.run, stop, 0.2, random.Random(client.id))
            await until(lambda: sum(b.active for b in ctx.balancer.backends.values())
                        == 3 * SMALL, "all open")
            c = ctx.balancer.backends["c"]
            backs[2].status = 503
            await until(lambda: not c.healthy and c.active == 0, "c out, drained", bound=20)
            await until(lambda: sum(b.active for b in ctx.balancer.backends.values())
                        == 3 * SMALL, "all back on a and b", bound=20)
            assert ctx.rebalancer.rounds == 0  # a and b are balanced: nothing to do
            back = time.monotonic()
            backs[2].status = 200
            await until(lambda: c.usable, "c healthy again")
            await until(lambda: ctx.rebalancer.rounds >= 1 and ctx.rebalancer.current is None
                        and c.active >= SMALL - 1, "c rebalanced", bound=30)
            stop.set()
        moved = [close for client in clients for close in client.closes
                 if close.reason.startswith("rebalancing")]
        assert moved
        assert min(close.at for close in moved) >= back + warmup
        for client in clients:
            assert client.acked == client.sent


async def test_post_rebalance_share_metrics_and_the_cli() -> None:
    async with echo_set("abc") as servers:
        rows = [{"name": s.name, "url": s.url} for s in servers]
        # Off, and a warmup nobody waits for: a forced round ignores both. Every client
        # has the same hash key: the policy puts all of them on one backend.
        settings = {"enabled": False, "warmup": "1h", "max_close_rate": 200}
        config = make_config(rows[:2], balance="hash:room", rebalance=settings)
        async with running_proxy(config) as ctx, clients_on(ctx, 2 * SMALL,
                                                            "?room=lobby") as clients:
            ctx.apply_config(make_config(rows, balance="hash:room", rebalance=settings))
            counts = {b.name: b.active for b in ctx.balancer.backends.values()}
            crowded = max(counts, key=counts.__getitem__)
            assert counts[crowded] == 2 * SMALL
            answer = await admin(ctx, "GET", "/backends")
            rows_seen = answer.json()["backends"]
            assert {r["name"]: r["share"] for r in rows_seen} == {
                name: (1.0 if name == crowded else 0.0) for name in "abc"}
            assert {r["name"]: r["warm"] for r in rows_seen} == dict.fromkeys("abc", False)
            status = (await admin(ctx, "GET", "/rebalance")).json()
            assert status["enabled"] is False
            assert status["rounds"] == 0
            assert ctx.admin_address is not None
            admin_url = "http://{}:{}".format(*ctx.admin_address)
            done = await run_cli_async("rebalance", "--admin", admin_url)
            assert done.returncode == 0, done.stderr
            assert b"rebalance:" in done.stdout
            # The shares as the answer saw them: the round may have moved a client or two
            # by then (it starts as the answer is written), so the crowded one is the
            # largest rather than 100%.
            shares = {name: int(pct) for name, pct in
                      re.findall(r"\b([abc]) (\d+)%", done.stdout.decode())}
            assert set(shares) == set("abc"), done.stdout
            assert max(shares, key=shares.__getitem__) == crowded, done.stdout
            await until(lambda: ctx.rebalancer.rounds == 1 and ctx.rebalancer.current is None,
                        "the round asked for", bound=30)
            last = ctx.rebalancer.last
            assert last is not None
            assert last.forced
            assert last.outcome == "balanced"
            counts = {b.name: b.active for b in ctx.balancer.backends.values()}
            # 40 on 3: 14/13/13. The hash policy would have sent every moved client
            # back to the same backend: the round's picks were the least-loaded's.
            assert sorted(counts.values()) == [13, 13, 14], counts
            assert counts[crowded] == 14
            moved = rebalancing_closes(clients)
            # The ideal is 26; a client closed while the next plan was made can be counted
            # once more (seen 1 in 8 runs under load): the bound is 1.1 x the ideal.
            ideal = 2 * SMALL - 14
            assert len(moved) == last.closes
            assert ideal <= last.closes <= math.floor(1.1 * ideal)
            assert {close.backend for close in moved} == {crowded}
            metrics = (await admin(ctx, "GET", "/metrics")).body.decode()
            assert (f'wsproxy_rebalance_closes_total{{backend="{crowded}"}} {last.closes}.0'
                    in metrics)
            assert "wsproxy_rebalance_ratio " in metrics
            assert "wsproxy_rebalancing 0.0" in metrics
            assert ctx.balancer.least_loaded is False  # the policy is back


async def test_a_drain_starting_mid_round_stops_its_closes() -> None:
    async with echo_set("abc") as servers:
        rows = [{"name": s.name, "url": s.url} for s in servers]
        settings = {"enabled": False, "warmup": "0s", "max_close_rate": 5}
        config = make_config(rows[:2], balance="round_robin", rebalance=settings)
        async with running_proxy(config) as ctx, clients_on(ctx, 2 * SMALL) as clients:
            ctx.apply_config(make_config(rows, balance="round_robin", rebalance=settings))
            ctx.rebalancer.request()
            await until(lambda: ctx.rebalancer.current is not None
                        and ctx.rebalancer.current.closes >= 2, "a round under way")
            ctx.drain_backend(ctx.balancer.backends["a"], spread=30.0)  # a long one
            await until(lambda: ctx.rebalancer.current is None, "the round stopped")
            assert ctx.rebalancer.last is not None
            assert ctx.rebalancer.last.outcome == "drain"
            closes = ctx.rebalancer.last.closes
            assert closes < 13
            await looks(ctx, 3)
            assert len(rebalancing_closes(clients)) == closes


@pytest.mark.timeout(90)
async def test_the_admin_page_shows_shares_and_starts_a_round() -> None:
    browser.skip_unless_available()
    async with echo_set("abc") as servers:
        rows = [{"name": s.name, "url": s.url} for s in servers]
        settings = {"enabled": False, "warmup": "0s", "max_close_rate": 200}
        config = make_config(rows[:2], balance="round_robin", rebalance=settings)
        async with running_proxy(config) as ctx, clients_on(ctx, 2 * SMALL) as clients:
            ctx.apply_config(make_config(rows, balance="round_robin", rebalance=settings))
            assert ctx.admin_address is not None
            url = "http://{}:{}/".format(*ctx.admin_address)
            result = await browser.run_script(Path(__file__).with_name("rebalance_page.mjs"),
                                              [f"--url={url}"])
            assert result["ok"], result
            assert result["page_errors"] == []
            assert result["requests_elsewhere"] == []
            before = {row["name"]: row["text"] for row in result["shares_before"]}
            assert before["c"].startswith("0.0% · 0")
            assert before["a"].startswith("50.0% · 20")
            assert "off (rebalance.enabled: false)" in result["status_before"]
            assert "balanced" in result["status_after"]
            assert ctx.rebalancer.last is not None
            assert ctx.rebalancer.last.forced
            assert len(rebalancing_closes(clients)) == ctx.rebalancer.last.closes == 13
