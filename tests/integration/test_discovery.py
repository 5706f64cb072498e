"""DNS discovery (issue 7) against a real DNS server on 127.0.0.1 whose records change.

The DNS server is tests/integration/dns_server.py (dnslib, in this event loop). The
backends are `websockets` servers on distinct loopback addresses (127.0.0.2, .3, .4)
and one port, so that each address is one discovered backend, as pods behind a
headless Service are. ``run_discovery`` runs beside the proxy with a
``DNSDiscoveryConfig`` of the test's own (the proxy's config has no ``discovery.dns``,
so a proxy that runs discovery itself does not run a second one).

Waits are on discovery rounds (``DiscoveryStatus.round_done``), on closes, or on a
state polled with a bound (tests/integration/test_health.py ``until``).
"""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
import structlog
import trustme
from websockets.asyncio.client import connect

from tests.integration.dns_server import DNSServer, dns_server
from tests.integration.peers import make_config, raw_exchange, running_proxy
from tests.integration.test_health import (
    HEALTH,
    Flippable,
    backend_of,
    close_code,
    echoes,
    flippable,
    until,
    url_of,
)
from wsproxy.config import DNSDiscoveryConfig, ProxyConfig
from wsproxy.control.discovery import (
    DiscoveryStatus,
    make_resolver,
    resolve_backends,
    run_discovery,
)
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

NAME = "app.test"
INTERVAL = 0.1
DRAIN = {"spread": "200ms", "timeout": "2s"}


@asynccontextmanager
async def three_pods(
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[Flippable, Flippable, Flippable]]:
    """Backends A, B, C on 127.0.0.2, .3 and .4, one port (the Service's target port)."""
    for _attempt in range(10):  # the port free on .2 may be taken on .3 or .4
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                flippable("A", "127.0.0.2", ssl_context=ssl_context))
            try:
                b = await stack.enter_async_context(
                    flippable("B", "127.0.0.3", a.port, ssl_context=ssl_context))
                c = await stack.enter_async_context(
                    flippable("C", "127.0.0.4", a.port, ssl_context=ssl_context))
            except OSError:
                continue
            yield a, b, c
            return
    raise RuntimeError("no port free on 127.0.0.2-4")


def address_of(pod: Flippable) -> str:
    return f"{pod.host}:{pod.port}"


def dns_config(dns: DNSServer, port: int, **changes: object) -> DNSDiscoveryConfig:
    base = DNSDiscoveryConfig(name=NAME, port=port, interval=INTERVAL, resolver=dns.address)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def proxy_config(*, health: bool = False, **overrides: object) -> ProxyConfig:
    """A proxy without static backends (the one make_config needs is dropped)."""
    config = make_config([{"name": "unused", "url": "ws://127.0.0.1:9"}], drain=DRAIN,
                         **overrides)
    config = dataclasses.replace(config, backends=())
    return dataclasses.replace(config, health_check=HEALTH) if health else config


@asynccontextmanager
async def discovering(
    config: ProxyConfig, dns_cfg: DNSDiscoveryConfig
) -> AsyncIterator[tuple[ProxyContext, DiscoveryStatus]]:
    """The proxy (health checks on when configured) with discovery running beside it."""
    async with running_proxy(config) as ctx, anyio.create_task_group() as tg:
        status = DiscoveryStatus()
        tg.start_soon(run_discovery, ctx, dns_cfg, status)
        try:
            yield ctx, status
        finally:
            tg.cancel_scope.cancel()


async def rounds(status: DiscoveryStatus, count: int = 1) -> None:
    """Wait (bounded) until *count* more discovery rounds are done."""
    with anyio.fail_after(10):
        for _ in range(count):
            await status.round_done.wait()


def usable(ctx: ProxyContext) -> set[str]:
    return {name for name, b in ctx.balancer.backends.items() if b.usable}


# Rollouts --------------------------------------------------------------------------------


async def test_a_rollout_moves_the_clients_of_the_old_address_only() -> None:
    """A,B -> B,C: A's clients get 1012 and land on B or C; B's are not touched."""
    async with dns_server() as dns, three_pods() as (a, b, c):
        dns.set_addresses(NAME, a.host, b.host)
        async with discovering(proxy_config(), dns_config(dns, a.port)) as (ctx, status), \
                AsyncExitStack() as clients:
            await until(lambda: usable(ctx) == {address_of(a), address_of(b)}, "A and B")
            first = [await clients.enter_async_context(connect(url_of(ctx)))
                     for _ in range(10)]
            where = [await backend_of(ws) for ws in first]
            assert sorted(where) == ["A"] * 5 + ["B"] * 5  # spread over both

            dns.set_addresses(NAME, b.host, c.host)
            for ws, pod in zip(first, where, strict=True):
                if pod == "A":
                    assert await close_code(ws) == 1012
            assert usable(ctx) == {address_of(b), address_of(c)}
            assert status.backends == tuple(sorted([address_of(b), address_of(c)]))

            again = [await clients.enter_async_context(connect(url_of(ctx))) for _ in range(5)]
            again_where = [await backend_of(ws) for ws in again]
            assert set(again_where) <= {"B", "C"}
            assert len(a.connections) == 5  # no new upgrade reached A
            for ws, pod in zip(first, where, strict=True):
                if pod == "B":
                    assert await echoes(ws)  # B's clients were not touched
            assert len(b.open_connections()) == 5 + again_where.count("B")


async def test_a_new_address_joins_after_its_first_passing_check() -> None:
    async with dns_server() as dns, three_pods() as (a, b, c):
        dns.set_addresses(NAME, a.host, b.host)
        config = proxy_config(health=True)
        async with discovering(config, dns_config(dns, a.port)) as (ctx, _status), \
                AsyncExitStack() as clients:
            await until(lambda: usable(ctx) == {address_of(a), address_of(b)}, "A and B")
            first = [await clients.enter_async_context(connect(url_of(ctx)))
                     for _ in range(4)]
            where = [await backend_of(ws) for ws in first]

            c.status = 503  # C is up but not ready yet
            dns.set_addresses(NAME, b.host, c.host)
            await until(lambda: address_of(c) in ctx.balancer.backends, "C discovered")
            state_c = ctx.balancer.backends[address_of(c)]
            assert (state_c.healthy, state_c.source) == (False, "dns")
            for ws, pod in zip(first, where, strict=True):
                if pod == "A":
                    assert await close_code(ws) == 1012
            await until(lambda: c.failed_checks() >= 2, "C checked")
            assert usable(ctx) == {address_of(b)}
            async with connect(url_of(ctx)) as ws:
                assert await backend_of(ws) == "B"  # C has not passed a check yet

            c.status = 200
            await until(lambda: state_c.usable, "C joined")
            async with connect(url_of(ctx)) as ws:
                assert await backend_of(ws) == "C"  # least connections: the empty one


@pytest.mark.parametrize("mode", ["servfail", "refused", "nxdomain", "empty", "drop"])
async def test_a_failed_or_empty_answer_keeps_the_last_set(mode: str) -> None:
    async with dns_server() as dns, three_pods() as (a, b, _):
        dns.set_addresses(NAME, a.host, b.host)
        async with discovering(proxy_config(), dns_config(dns, a.port)) as (ctx, status), \
                AsyncExitStack() as clients:
            await until(lambda: len(usable(ctx)) == 2, "A and B")
            known = usable(ctx)
            ws = await clients.enter_async_context(connect(url_of(ctx)))
            dns.mode = mode  # type: ignore[assignment]
            with structlog.testing.capture_logs() as logs:
                failures = status.failures
                await until(lambda: status.failures >= failures + 2, "failed rounds")
            assert usable(ctx) == known
            assert status.backends == tuple(sorted(known))
            assert await echoes(ws)
            failed = [e for e in logs if e["event"] == "discovery.failed"]
            assert failed, logs
            assert failed[0]["log_level"] == "warning"
            assert failed[0]["kept"] == sorted(known)
            assert failed[0]["error"]

            dns.mode = "answer"
            dns.set_addresses(NAME, b.host)
            await until(lambda: usable(ctx) == {address_of(b)}, "the next good answer counts")
            assert status.last_error is None


async def test_no_answer_at_start_leaves_no_backend_until_one_comes() -> None:
    async with dns_server() as dns, three_pods() as (a, _, _):
        dns.mode = "servfail"
        async with discovering(proxy_config(), dns_config(dns, a.port)) as (ctx, status):
            await rounds(status, 2)
            assert status.failures >= 2
            assert not ctx.balancer.backends
            dns.mode = "answer"
            dns.set_addresses(NAME, a.host)
            await until(lambda: usable(ctx) == {address_of(a)}, "A")
            async with connect(url_of(ctx)) as ws:
                assert await backend_of(ws) == "A"


async def test_static_and_discovered_backends_side_by_side() -> None:
    async with dns_server() as dns, three_pods() as (a, b, _), flippable("static") as s:
        dns.set_addresses(NAME, a.host)
        config = dataclasses.replace(proxy_config(), backends=make_config(
            [{"name": "s1", "url": s.url}]).backends)
        async with discovering(config, dns_config(dns, a.port)) as (ctx, _status):
            await until(lambda: usable(ctx) == {"s1", address_of(a)}, "s1 and A")
            dns.set_addresses(NAME, b.host)
            await until(lambda: usable(ctx) == {"s1", address_of(b)}, "s1 and B")
            assert ctx.admin_address is not None
            answer = await raw_exchange(ctx.admin_address[1], (
                b"GET /backends HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"))
            body = json.loads(answer.partition(b"\r\n\r\n")[2])
            sources = {row["name"]: row["source"] for row in body["backends"]
                       if not row.get("removed")}
            assert sources == {"s1": "static", address_of(b): "dns"}


# wss: the certificate names the DNS name, not the address ---------------------------------


async def test_wss_to_a_discovered_address_verifies_the_dns_name(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME).configure_cert(server)  # app.test only: no IP address in it
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with dns_server() as dns, three_pods(server) as (a, b, _):
        dns.set_addresses(NAME, a.host, b.host)
        config = proxy_config(health=True, backend_tls={"ca_file": str(ca_file)})
        dns_cfg = dns_config(dns, a.port, scheme="wss")
        async with discovering(config, dns_cfg) as (ctx, _status):
            # Both pass their health check over TLS (SNI app.test)...
            await until(lambda: len(usable(ctx)) == 2, "A and B healthy")
            assert all(b.server_name == NAME for b in ctx.balancer.backends.values())
            # ... and the proxy's WebSocket dial to them verifies the same way.
            async with connect(url_of(ctx)) as ws:
                assert await backend_of(ws) in {"A", "B"}


# Resolution details ------------------------------------------------------------------------


async def test_a_and_aaaa_records_each_give_a_backend() -> None:
    async with dns_server() as dns:
        dns.set_addresses(NAME, "127.0.0.2", "fd00::1", "FD00::2", "127.0.0.2")
        resolver = make_resolver(dns.address, 1.0)
        found = await resolve_backends(resolver, dns_config(dns, 8000), search=False)
    assert [(b.name, b.url) for b in found] == [
        ("127.0.0.2:8000", "ws://127.0.0.2:8000"),
        ("[fd00::1]:8000", "ws://[fd00::1]:8000"),
        ("[fd00::2]:8000", "ws://[fd00::2]:8000"),
    ]
    assert {(q[1], q[2]) for q in dns.queries} == {("A", "udp"), ("AAAA", "udp")}


async def test_a_large_answer_is_asked_again_over_tcp() -> None:
    addresses = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(300)]
    async with dns_server() as dns:
        dns.set_addresses(NAME, *addresses)
        resolver = make_resolver(dns.address, 1.0)
        found = await resolve_backends(resolver, dns_config(dns, 8000), search=False)
    assert len(found) == 300
    assert (f"{NAME}.", "A", "tcp") in dns.queries  # truncated over UDP, then TCP


@pytest.mark.parametrize("glue", [True, False])
async def test_srv_names_give_their_targets_at_the_record_ports(glue: bool) -> None:
    async with dns_server() as dns:
        dns.srv_glue = glue
        dns.set_addresses("pod-a.app.test", "127.0.0.2")
        dns.set_addresses("pod-b.app.test", "127.0.0.3", "fd00::3")
        dns.set_srv("_ws._tcp.app.test", ("pod-a.app.test", 9001), ("pod-b.app.test", 9002))
        resolver = make_resolver(dns.address, 1.0)
        cfg = dns_config(dns, 8000, name="_ws._tcp.app.test")
        found = await resolve_backends(resolver, cfg, search=False)
    assert [b.name for b in found] == ["127.0.0.2:9001", "127.0.0.3:9002", "[fd00::3]:9002"]
    asked = {q[0] for q in dns.queries}
    assert ("pod-a.app.test." in asked) is not glue  # with glue, no second query


async def test_srv_discovery_through_the_proxy() -> None:
    async with dns_server() as dns, three_pods() as (a, b, _):
        dns.set_addresses("pod-a.app.test", a.host)
        dns.set_addresses("pod-b.app.test", b.host)
        dns.set_srv("_ws._tcp.app.test", ("pod-a.app.test", a.port), ("pod-b.app.test", a.port))
        cfg = dns_config(dns, 1, name="_ws._tcp.app.test")
        async with discovering(proxy_config(), cfg) as (ctx, _status):
            await until(lambda: usable(ctx) == {address_of(a), address_of(b)}, "A and B")
            assert {b.server_name for b in ctx.balancer.backends.values()} == {NAME}
            async with connect(url_of(ctx)) as ws:
                assert await backend_of(ws) in {"A", "B"}
