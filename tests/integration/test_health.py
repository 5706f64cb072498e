"""Active health checks (issue 7): real backends whose health endpoint the test flips.

The backends are `websockets` servers whose ``process_request`` answers a plain
``GET /healthz`` with the status the test sets (or holds it unanswered). The proxy
runs in this event loop and runs its health checks itself.

Waits are on conditions (a close, a count of checks served, a state flag), polled and
bounded by ``fail_after``; the one ordering argument (a removed backend's checker is
gone) rests on timers of one event loop firing in deadline order, not on a sleep.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response

from tests.integration.peers import make_config, running_proxy
from wsproxy.config import BackendConfig, HealthCheckConfig, ProxyConfig
from wsproxy.control.health import CheckFailed, Streak, check_backend
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

WAIT = 10.0
HEALTH = HealthCheckConfig(path="/healthz", interval=0.1, timeout=0.1, unhealthy_after=2)
DRAIN = {"spread": "200ms", "timeout": "2s"}


# Peers ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Flippable:
    """An echo backend with a health endpoint whose answer the test sets."""

    name: str
    host: str
    port: int
    scheme: str = "ws"
    #: The status GET /healthz gets; None: the request is held unanswered.
    status: int | None = 200
    #: (status served, Host header) of every health check, in order.
    checks: list[tuple[int | None, str]] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    release: anyio.Event = field(default_factory=anyio.Event)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def config(self) -> BackendConfig:
        return BackendConfig.from_url(name=self.name, url=self.url)

    def failed_checks(self) -> int:
        return sum(1 for status, _ in self.checks if status != 200)

    def open_connections(self) -> list[ServerConnection]:
        return [c for c in self.connections if c.close_code is None]


@asynccontextmanager
async def flippable(
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Flippable]:
    """A Flippable backend on *host*:*port* (0: any free port)."""
    info = Flippable(name, host, port, scheme="wss" if ssl_context else "ws")

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        if request.path != "/healthz":
            return None
        status = info.status
        info.checks.append((status, request.headers.get("Host", "")))
        if status is None:
            await info.release.wait()
            status = 503
        return conn.respond(status, "ok\n" if status == 200 else "not ok\n")

    async def handle(ws: ServerConnection) -> None:
        info.connections.append(ws)
        async for message in ws:
            await ws.send(name if message == "who?" else message)

    async with ws_serve(handle, host, port, ssl=ssl_context,
                        process_request=process_request) as server:
        info.port = next(iter(server.sockets)).getsockname()[1]
        try:
            yield info
        finally:
            info.release.set()


async def until(predicate: Callable[[], bool], what: str, bound: float = WAIT) -> None:
    """Wait (bounded) until *predicate* holds.

    Polled: a verdict lands in the proxy's state a moment after the backend answered
    the check, and no event marks that moment.
    """
    with anyio.fail_after(bound):
        while not predicate():  # noqa: ASYNC110 (see above)
            await anyio.sleep(0.01)
    assert predicate(), what


def with_health(config: ProxyConfig, **changes: Any) -> ProxyConfig:
    return dataclasses.replace(config, health_check=dataclasses.replace(HEALTH, **changes))


def url_of(ctx: ProxyContext) -> str:
    host, port = ctx.addresses[0]
    return f"ws://{host}:{port}"


async def close_code(ws: ClientConnection) -> int:
    """Wait (bounded) until the proxy closes *ws*; the code it sent."""
    with anyio.fail_after(WAIT):
        await ws.wait_closed()
    assert ws.protocol.close_rcvd is not None
    return ws.protocol.close_rcvd.code


async def echoes(ws: ClientConnection) -> bool:
    with anyio.fail_after(WAIT):
        await ws.send("still here")
        return await ws.recv() == "still here"


async def backend_of(ws: ClientConnection) -> str:
    """The name of the backend *ws* is relayed to (it answers "who?" with it)."""
    with anyio.fail_after(WAIT):
        await ws.send("who?")
        return str(await ws.recv())


def healthy_metric(ctx: ProxyContext, name: str) -> float:
    for line in ctx.metrics.render().decode().splitlines():
        if line.startswith(f'wsproxy_backend_healthy{{backend="{name}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no wsproxy_backend_healthy series for {name}")


def deadline(seconds: float = 1.0) -> float:
    return anyio.current_time() + seconds


# One check ------------------------------------------------------------------------------


async def test_a_2xx_answer_passes_and_the_request_is_plain_http() -> None:
    async with flippable("b1") as b:
        assert await check_backend(b.config, "/healthz", deadline=deadline()) == 200
    assert b.checks == [(200, f"127.0.0.1:{b.port}")]


@pytest.mark.parametrize("status", [301, 404, 500, 503])
async def test_any_other_status_fails(status: int) -> None:
    async with flippable("b1") as b:
        b.status = status
        with pytest.raises(CheckFailed, match=f"status {status}"):
            await check_backend(b.config, "/healthz", deadline=deadline())


async def test_a_refused_connection_fails() -> None:
    async with flippable("b1") as b:
        config = b.config
    with pytest.raises(CheckFailed, match=r"OSError|ConnectionRefused"):
        await check_backend(config, "/healthz", deadline=deadline())


async def test_no_answer_in_time_fails_at_the_deadline() -> None:
    async with flippable("b1") as b:
        b.status = None
        started = anyio.current_time()
        with pytest.raises(CheckFailed, match="no answer in time"):
            await check_backend(b.config, "/healthz", deadline=started + 0.2)
        assert anyio.current_time() - started >= 0.2


async def test_an_answer_that_is_not_http_fails() -> None:
    async def garbage(stream: Any) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"SSH-2.0-OpenSSH_9.6\r\n")

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, \
            anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, garbage)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        backend = BackendConfig.from_url(name="x", url=f"ws://127.0.0.1:{port}")
        with pytest.raises(CheckFailed, match="ProtocolError"):
            await check_backend(backend, "/healthz", deadline=deadline())
        tg.cancel_scope.cancel()


async def test_wss_checks_verify_the_certificate_against_the_server_name() -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("app.test").configure_cert(server)  # the DNS name only, no IP
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    async with flippable("b1", ssl_context=server) as b:
        status = await check_backend(b.config, "/healthz", deadline=deadline(),
                                     ssl_context=client, server_name="app.test")
        assert status == 200
        with pytest.raises(CheckFailed, match=r"CERTIFICATE_VERIFY_FAILED|BrokenResource"):
            await check_backend(b.config, "/healthz", deadline=deadline(), ssl_context=client)
    assert len(b.checks) == 1  # the second never got past the TLS handshake


def test_streak_needs_unhealthy_after_failures_in_a_row() -> None:
    streak = Streak(unhealthy_after=3)
    assert [streak.failed(), streak.failed()] == [None, None]
    assert streak.passed() is True  # one pass: healthy, and the count starts over
    assert [streak.failed(), streak.failed(), streak.failed()] == [None, None, False]
    assert streak.failed() is False


# Through the proxy ----------------------------------------------------------------------


async def test_a_failing_backend_is_drained_and_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with flippable("b1") as b1, flippable("b2") as b2:
        backends = {"b1": b1, "b2": b2}
        config = with_health(make_config([{"name": "b1", "url": b1.url},
                                          {"name": "b2", "url": b2.url}], drain=DRAIN))
        async with running_proxy(config) as ctx, AsyncExitStack() as clients:
            verdicts: list[tuple[str, bool, int]] = []
            set_health = ctx.set_health

            def spy(backend: Any, healthy: bool) -> None:
                if backend.healthy != healthy:
                    verdicts.append((backend.name, healthy,
                                     backends[backend.name].failed_checks()))
                set_health(backend, healthy)

            monkeypatch.setattr(ctx, "set_health", spy)
            state = ctx.balancer.backends
            await until(lambda: len(b1.checks) >= 2 and len(b2.checks) >= 2, "checked")
            first = [await clients.enter_async_context(connect(url_of(ctx)))
                     for _ in range(6)]
            where = [await backend_of(ws) for ws in first]
            assert sorted(where) == ["b1"] * 3 + ["b2"] * 3  # least connections

            b1.status = 503
            await until(lambda: not state["b1"].healthy, "b1 out of rotation")
            assert verdicts == [("b1", False, verdicts[0][2])]
            assert verdicts[0][2] == HEALTH.unhealthy_after  # failures in a row, not fewer
            assert healthy_metric(ctx, "b1") == 0.0
            assert healthy_metric(ctx, "b2") == 1.0

            for ws, name in zip(first, where, strict=True):
                if name == "b1":
                    assert await close_code(ws) == 1012
                else:
                    assert await echoes(ws)  # b2's clients are not touched
            assert len(b2.open_connections()) == 3

            more = [await clients.enter_async_context(connect(url_of(ctx))) for _ in range(4)]
            assert len(b1.connections) == 3  # no new upgrade went to b1
            assert len(b2.open_connections()) == 7
            assert all([await echoes(ws) for ws in more])

            b1.status = 200
            await until(lambda: state["b1"].healthy, "b1 back in rotation")
            assert verdicts[1][:2] == ("b1", True)
            assert healthy_metric(ctx, "b1") == 1.0
            async with connect(url_of(ctx)) as ws:  # least connections: the empty one
                assert await backend_of(ws) == "b1"


async def test_a_backend_that_stays_down_is_not_drained_twice() -> None:
    """Failures after the verdict change nothing; one pass ends the drain."""
    async with flippable("b1") as b1, flippable("b2") as b2:
        config = with_health(make_config([{"name": "b1", "url": b1.url},
                                          {"name": "b2", "url": b2.url}], drain=DRAIN))
        async with running_proxy(config) as ctx:
            b1.status = 503
            state = ctx.balancer.backends["b1"]
            await until(lambda: not state.healthy, "b1 out")
            drain = ctx.drains[state]
            failed = b1.failed_checks()
            await until(lambda: b1.failed_checks() >= failed + 3, "more failed checks")
            assert ctx.drains[state] is drain
            b1.status = 200
            await until(lambda: state.healthy, "b1 back")
            assert state not in ctx.drains


async def test_a_check_without_answer_in_time_counts_as_failed() -> None:
    async with flippable("b1") as b1, flippable("b2") as b2:
        config = with_health(make_config([{"name": "b1", "url": b1.url},
                                          {"name": "b2", "url": b2.url}], drain=DRAIN))
        async with running_proxy(config) as ctx:
            b1.status = None  # held: each check runs into its timeout
            await until(lambda: not ctx.balancer.backends["b1"].healthy, "b1 out")
            assert ctx.balancer.backends["b2"].healthy


async def test_a_removed_backend_is_no_longer_checked() -> None:
    async with flippable("b1") as b1, flippable("b2") as b2:
        config = with_health(make_config([{"name": "b1", "url": b1.url},
                                          {"name": "b2", "url": b2.url}], drain=DRAIN))
        async with running_proxy(config) as ctx:
            await until(lambda: len(b1.checks) >= 1 and len(b2.checks) >= 1, "checked")
            ctx.apply_config(dataclasses.replace(config, backends=(config.backends[1],)))
            # The checkers' set is looked at once an interval: after three more checks
            # of b2 (each an interval apart), that look has happened.
            seen = len(b2.checks)
            await until(lambda: len(b2.checks) >= seen + 3, "b2 checked on")
            gone_at = len(b1.checks)
            await until(lambda: len(b2.checks) >= seen + 6, "b2 checked on")
            assert len(b1.checks) == gone_at


async def test_switching_checks_off_puts_backends_back() -> None:
    async with flippable("b1") as b1, flippable("b2") as b2:
        config = with_health(make_config([{"name": "b1", "url": b1.url},
                                          {"name": "b2", "url": b2.url}], drain=DRAIN))
        async with running_proxy(config) as ctx:
            b1.status = 503
            state = ctx.balancer.backends["b1"]
            await until(lambda: not state.healthy, "b1 out")
            ctx.apply_config(dataclasses.replace(config, health_check=HealthCheckConfig(
                path="", interval=0.1)))
            await until(lambda: state.healthy, "b1 back without checks")
