"""GET /metrics after known traffic, parsed by prometheus_client's own text parser.

Counters of ended connections are added up when the connection has finished, a moment
after the client saw its close: those checks poll the scrape in a bounded loop.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.integration.peers import backend, make_config, raw_exchange, running_proxy
from tests.integration.test_admin import (
    WAIT,
    admin,
    backend_of,
    closed_with,
    proxy_from_file,
    two_backends,
    write_config,
)
from wsproxy import __version__
from wsproxy.speedups import SPEEDUPS
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

#: Every family SPEC.md names, with its type (counters without their _total suffix,
#: as the parser names them).
SPEC_FAMILIES = {
    "wsproxy_connections_active": "gauge",
    "wsproxy_connections": "counter",
    "wsproxy_handshake_failures": "counter",
    "wsproxy_messages": "counter",
    "wsproxy_bytes": "counter",
    "wsproxy_closes": "counter",
    "wsproxy_backend_healthy": "gauge",
    "wsproxy_draining": "gauge",
    "wsproxy_drain_remaining": "gauge",
    "wsproxy_connection_duration_seconds": "histogram",
    "wsproxy_ping_rtt_seconds": "histogram",
    "wsproxy_build_info": "gauge",
}
N_CLIENTS = 3
N_MESSAGES = 5
PAYLOAD = "0123456789"


class Scrape:
    """One parsed GET /metrics."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample *name* with exactly these labels, or None if there is none."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels)
        return found[0] if found else None

    def labels(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name}


async def scrape(ctx: ProxyContext) -> Scrape:
    answer = await admin(ctx, "GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(answer.body.decode())


async def scrape_until(ctx: ProxyContext, done: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until *done* holds (the proxy books a connection just after it ended)."""
    last = await scrape(ctx)
    with anyio.move_on_after(WAIT):
        while not done(last):
            await anyio.sleep(0.01)
            last = await scrape(ctx)
    assert done(last), last.text
    return last


async def chat(ws: ClientConnection) -> None:
    for _ in range(N_MESSAGES):
        await ws.send(PAYLOAD)
        assert await ws.recv() == PAYLOAD


# After known traffic -------------------------------------------------------------------


async def test_counters_gauges_and_histogram_after_known_traffic() -> None:
    async with (
        backend("b1") as b1,
        backend("b2") as b2,
        running_proxy(make_config([b1, b2], balance="round_robin",
                                  allowed_origins=["http://good.example"])) as ctx,
        AsyncExitStack() as stack,
    ):
        host, port = ctx.addresses[0]
        url = f"ws://{host}:{port}"
        clients = [await stack.enter_async_context(connect(url, compression=None))
                   for _ in range(N_CLIENTS)]
        for ws in clients:
            await chat(ws)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        assert (await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 400 ")
        assert (await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                ).startswith(b"HTTP/1.1 200 ")

        sent = N_CLIENTS * N_MESSAGES
        to_backend, to_client = sent * (6 + len(PAYLOAD)), sent * (2 + len(PAYLOAD))
        live = await scrape_until(ctx, lambda s: s.value(
            "wsproxy_connections_total", outcome="rejected") == 2)
        assert live.value("wsproxy_connections_active", backend="b1") == len(b1.connections)
        assert live.value("wsproxy_connections_active", backend="b2") == len(b2.connections)
        assert len(b1.connections) + len(b2.connections) == N_CLIENTS
        assert live.value("wsproxy_connections_total", outcome="probe") == 1
        assert live.value("wsproxy_handshake_failures_total", reason="origin") == 1
        assert live.value("wsproxy_handshake_failures_total", reason="bad_request") == 1
        assert live.value("wsproxy_messages_total", direction="to_backend") == sent
        assert live.value("wsproxy_messages_total", direction="to_client") == sent
        assert live.value("wsproxy_bytes_total", direction="to_backend") == to_backend
        assert live.value("wsproxy_bytes_total", direction="to_client") == to_client
        assert live.value("wsproxy_backend_healthy", backend="b1") == 1
        assert live.value("wsproxy_backend_healthy", backend="b2") == 1
        assert live.value("wsproxy_draining") == 0
        assert live.value("wsproxy_build_info", version=__version__, speedups=SPEEDUPS) == 1
        assert live.value("wsproxy_drain_remaining") == 0
        assert live.value("wsproxy_connection_duration_seconds_count") == 0

        # Three ends: the client's 1000, the client's unregistered 4001, the admin's 1008.
        rows = (await admin(ctx, "GET", "/connections?sort=age")).json()["connections"]
        victim_id = rows[-1]["id"]  # oldest first: the last is clients[2]
        await clients[0].close(1000)
        await clients[1].close(4001)
        await admin(ctx, "DELETE", f"/connections/{victim_id}")
        assert await closed_with(clients[2]) == 1008

        ended = await scrape_until(ctx, lambda s: s.value(
            "wsproxy_connection_duration_seconds_count") == N_CLIENTS)
        assert ended.value("wsproxy_connections_total", outcome="upgraded") == N_CLIENTS
        assert ended.value("wsproxy_connections_total", outcome="rejected") == 2
        assert ended.value("wsproxy_closes_total", code="1000", initiator="client") == 1
        assert ended.value("wsproxy_closes_total", code="other", initiator="client") == 1
        assert ended.value("wsproxy_closes_total", code="1008", initiator="proxy") == 1
        assert ended.labels("wsproxy_closes_total", "code") == {"1000", "1008", "other"}
        # The totals move from the live connections to the ended ones, exactly once.
        assert ended.value("wsproxy_messages_total", direction="to_backend") == sent
        assert ended.value("wsproxy_messages_total", direction="to_client") == sent
        assert ended.value("wsproxy_bytes_total", direction="to_backend") == to_backend
        assert ended.value("wsproxy_bytes_total", direction="to_client") == to_client
        assert ended.value("wsproxy_connections_active", backend="b1") == 0
        assert ended.value("wsproxy_connections_active", backend="b2") == 0
        duration_sum = ended.value("wsproxy_connection_duration_seconds_sum")
        assert duration_sum is not None
        assert duration_sum > 0
        assert ended.value("wsproxy_connection_duration_seconds_bucket", le="+Inf") == N_CLIENTS


async def test_upgraded_connections_are_counted_while_still_open() -> None:
    async with (
        backend() as b,
        running_proxy(make_config([b])) as ctx,
        AsyncExitStack() as stack,
    ):
        host, port = ctx.addresses[0]
        for _ in range(2):
            ws = await stack.enter_async_context(connect(f"ws://{host}:{port}"))
            await ws.send("x")
            await ws.recv()
        live = await scrape(ctx)
        assert live.value("wsproxy_connections_active", backend="b1") == 2
        assert live.value("wsproxy_connections_total", outcome="upgraded") == 2


async def test_every_family_has_help_and_type() -> None:
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        scraped = await scrape(ctx)
    for name, kind in SPEC_FAMILIES.items():
        assert name in scraped.families, name
        assert scraped.families[name].type == kind, name
    for name, family in scraped.families.items():
        assert family.documentation, f"{name} has no HELP"
        assert family.type != "unknown", f"{name} has no TYPE"
        exposed = f"{name}_total" if family.type == "counter" else name
        assert f"# HELP {exposed} " in scraped.text
        assert f"# TYPE {exposed} {family.type}" in scraped.text


async def test_drain_gauges_follow_a_drain_and_undrain() -> None:
    async with (
        backend() as b,
        running_proxy(make_config([b])) as ctx,
        AsyncExitStack() as stack,
    ):
        host, port = ctx.addresses[0]
        for _ in range(2):
            ws = await stack.enter_async_context(connect(f"ws://{host}:{port}"))
            await ws.send("x")
            await ws.recv()
        # Two closes over 20 s: the second is due after 10 s at the earliest.
        assert (await admin(ctx, "POST", "/drain", json_body={"spread": "20s"})).status == 200
        draining = await scrape_until(ctx, lambda s: (s.value("wsproxy_drain_remaining")
                                                      or 0) >= 1)
        assert draining.value("wsproxy_draining") == 1
        assert draining.value("wsproxy_drain_remaining") in (1, 2)
        assert (await admin(ctx, "POST", "/undrain", json_body={})).status == 200
        after = await scrape(ctx)
        assert after.value("wsproxy_draining") == 0
        assert after.value("wsproxy_drain_remaining") == 0


#: Fast pings; a timeout that healthy peers never reach, even on a loaded machine.
PING_TIMEOUT = 10.0


async def test_ping_rtt_histogram_fills_with_heartbeats() -> None:
    async with backend() as b:
        config = make_config([b], heartbeat={"interval": "100ms", "timeout": f"{PING_TIMEOUT}s"})
        async with running_proxy(config) as ctx, connect(
            "ws://{}:{}".format(*ctx.addresses[0])) as ws:
            await ws.send("x")
            await ws.recv()
            scraped = await scrape_until(ctx, lambda s: all(
                (s.value("wsproxy_ping_rtt_seconds_count", leg=leg) or 0) >= 2
                for leg in ("client", "upstream")))
            await ws.send("still fine")  # the heartbeats left the relay alone
            assert await ws.recv() == "still fine"
    for leg in ("client", "upstream"):
        count = scraped.value("wsproxy_ping_rtt_seconds_count", leg=leg)
        total = scraped.value("wsproxy_ping_rtt_seconds_sum", leg=leg)
        assert total is not None
        # Every round trip counted was answered within the timeout (or the connection
        # would have been closed): a ceiling no slow machine breaks.
        assert 0 < total <= PING_TIMEOUT * (count or 0)
        buckets = sorted(
            (float(s.labels["le"]), s.value) for s in scraped.samples
            if s.name == "wsproxy_ping_rtt_seconds_bucket" and s.labels["leg"] == leg)
        values = [v for _, v in buckets]
        assert values == sorted(values)  # cumulative
        assert buckets[-1] == (float("inf"), count)


async def test_series_of_a_removed_backend_disappear(tmp_path: Path) -> None:
    path = tmp_path / "wsproxy.yaml"
    async with two_backends() as (b1, b2):
        write_config(path, [b1, b2], balance="round_robin", drain={"spread": "200ms"})
        async with proxy_from_file(path) as ctx, AsyncExitStack() as stack:
            url = "ws://{}:{}".format(*ctx.addresses[0])
            clients = [await stack.enter_async_context(connect(url)) for _ in range(2)]
            names = [await backend_of(ws) for ws in clients]
            assert sorted(names) == ["b1", "b2"]
            before = await scrape(ctx)
            assert before.labels("wsproxy_connections_active", "backend") == {"b1", "b2"}
            assert before.labels("wsproxy_backend_healthy", "backend") == {"b1", "b2"}

            write_config(path, [b1], balance="round_robin", drain={"spread": "200ms"})
            assert (await admin(ctx, "POST", "/reload", json_body={})).status == 200
            on_b2 = clients[names.index("b2")]
            assert await closed_with(on_b2) == 1012
            after = await scrape_until(ctx, lambda s: s.labels(
                "wsproxy_connections_active", "backend") == {"b1"})
            assert after.labels("wsproxy_backend_healthy", "backend") == {"b1"}
            assert 'backend="b2"' not in after.text
            assert after.value("wsproxy_connections_active", backend="b1") == 1
            assert await backend_of(clients[names.index("b1")]) == "b1"

