"""Active health checks (``health_check``): a plain HTTP GET of ``path`` on each backend.

``run_health_checks()`` keeps one checker task per backend of the balancer that is not
removed (static and discovered alike), all in one task group: checks of different
backends run concurrently, and a backend never has more than one check in flight.
A backend that leaves the balancer (removed, or replaced by a reload that changed its
URL) loses its checker; one that joins (discovery, reload) gets one within
``min(interval, 1s)``.

One check. A TCP connection to the backend's address (TLS for ``wss``, with the
proxy's ``backend_tls`` context, verified against ``backend_tls.server_name``, else the
DNS name of a discovered backend, else the URL's host: the names the WebSocket dial
uses), ``GET {path} HTTP/1.1`` with ``Host: {host}:{port}`` and ``Connection: close``,
the whole exchange up to the response head bounded by ``timeout``. A 2xx status passes;
anything else (another status, refused, reset, a TLS failure, no answer in time, not
HTTP) fails. The body is read and dropped (64 KiB at most) only so that the
connection closes cleanly; it decides nothing.

The verdict. ``unhealthy_after`` failures in a row -> ``ctx.set_health(b, False)``:
out of rotation, its connections drained with 1012 and the drain spread. One pass ->
``ctx.set_health(b, True)``: back in rotation (a discovered backend waiting for its
first check joins). ``set_health`` logs the change (``backend.health``); each failed
check up to the one that takes a backend out is logged here (``health_check.failed``,
a warning), later ones only at debug level, so that a backend that stays down does not
flood the log.

Timing. The first check of a backend comes after a random delay of up to
``min(interval, 1s)`` (checkers started together do not fire together, and a new
backend waits at most a second for the check that lets it in), then one check starts
every ``interval``. The settings are re-read from ``ctx.config`` each time, so a reload
applies to the next check; an empty ``path`` (checks switched off by a reload) puts
every backend back to healthy, as nothing judges them any more.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import anyio
import anyio.abc
import h11

from wsproxy.config import BackendConfig
from wsproxy.io.listen_socket import CAPACITY_ERRNOS
from wsproxy.log import get_logger

if TYPE_CHECKING:
    from wsproxy.config import ProxyConfig
    from wsproxy.core.balance import BackendState, Balancer

log = get_logger()

#: How often the set of backends is looked at for ones to start or stop checking.
WATCH_PERIOD: Final = 1.0
#: Bound on the delay before a backend's first check.
FIRST_CHECK_JITTER: Final = 1.0
#: The most of a response body read (and dropped) before closing.
MAX_BODY: Final = 64 * 1024
USER_AGENT: Final = b"wsproxy-health-check"


class CheckFailed(Exception):
    """A health check did not pass; the message says why."""


class CheckNotRun(Exception):
    """The proxy could not open a socket for the check (out of descriptors): its own
    trouble, no verdict on the backend."""


@dataclass(slots=True)
class Streak:
    """Consecutive check results of one backend, and the verdict they lead to."""

    unhealthy_after: int
    failures: int = 0

    def passed(self) -> bool:
        """A check passed: the verdict is healthy (True)."""
        self.failures = 0
        return True

    def failed(self) -> bool | None:
        """A check failed: False once ``unhealthy_after`` failed in a row, else no verdict."""
        self.failures += 1
        return False if self.failures >= self.unhealthy_after else None


def authority(host: str, port: int) -> str:
    """The Host header value: ``10.0.0.1:8000``, ``[fd00::1]:8000``, ``app:8000``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_request(backend: BackendConfig, path: str) -> h11.Request:
    return h11.Request(
        method="GET",
        target=path.encode("ascii"),
        headers=[
            (b"Host", authority(backend.host, backend.port).encode("ascii")),
            (b"User-Agent", USER_AGENT),
            (b"Accept", b"*/*"),
            (b"Connection", b"close"),
        ],
    )


async def check_backend(
    backend: BackendConfig,
    path: str,
    *,
    deadline: float,
    ssl_context: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> int:
    """GET *path* on *backend*; its 2xx status, answered before *deadline* (anyio time).

    Raises:
        CheckFailed: any other status, no answer in time, or any connection failure.
    """
    status: int | None = None
    try:
        with anyio.move_on_after(deadline - anyio.current_time()):
            stream = await _connect(backend, ssl_context, server_name)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                head = conn.send(check_request(backend, path))
                await stream.send(_bytes(head) + _bytes(conn.send(h11.EndOfMessage())))
                status = await _response_status(stream, conn)
                with contextlib.suppress(Exception):  # a clean close, nothing more
                    await _drop_body(stream, conn)
    except Exception as exc:
        if _out_of_room(exc):
            raise CheckNotRun(f"{type(exc).__name__}: {exc}") from exc
        # Refused, reset, unreachable, TLS (OSError, anyio's stream errors), not HTTP
        # (h11.ProtocolError); anything else too: a check must never stop the proxy.
        raise CheckFailed(f"{type(exc).__name__}: {exc}") from exc
    if status is None:
        raise CheckFailed("no answer in time")
    if not 200 <= status < 300:
        raise CheckFailed(f"status {status}")
    return status


def _out_of_room(exc: BaseException | None) -> bool:
    """Whether *exc*, or what it wraps (anyio's "All connection attempts failed"),
    says the proxy has no room for another socket."""
    while exc is not None:
        if isinstance(exc, BaseExceptionGroup):
            return any(_out_of_room(e) for e in exc.exceptions)
        if isinstance(exc, OSError) and exc.errno in CAPACITY_ERRNOS:
            return True
        exc = exc.__cause__
    return False


async def _connect(
    backend: BackendConfig, ssl_context: ssl.SSLContext | None, server_name: str | None
) -> anyio.abc.ByteStream:
    if backend.scheme != "wss":
        return await anyio.connect_tcp(backend.host, backend.port)
    return await anyio.connect_tcp(
        backend.host,
        backend.port,
        ssl_context=ssl_context or ssl.create_default_context(),
        tls_hostname=server_name or backend.host,
        tls_standard_compatible=False,
    )


def _bytes(data: bytes | None) -> bytes:
    return data or b""


async def _response_status(stream: anyio.abc.ByteStream, conn: h11.Connection) -> int:
    """The status of the final response (1xx ones are skipped)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            await _feed(stream, conn)
        elif isinstance(event, h11.Response):
            return event.status_code
        elif isinstance(event, h11.InformationalResponse):
            continue
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


async def _drop_body(stream: anyio.abc.ByteStream, conn: h11.Connection) -> None:
    read = 0
    while read <= MAX_BODY:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            await _feed(stream, conn)
        elif isinstance(event, h11.Data):
            read += len(event.data)
        else:  # EndOfMessage, ConnectionClosed
            return


async def _feed(stream: anyio.abc.ByteStream, conn: h11.Connection) -> None:
    try:
        data = await stream.receive()
    except anyio.EndOfStream:
        data = b""
    conn.receive_data(data)


class HealthHost(Protocol):
    """What the health checks ask of the process (the wiring, ProxyContext)."""

    @property
    def config(self) -> ProxyConfig:
        """The current config: the check settings are re-read before each check."""

    @property
    def balancer(self) -> Balancer: ...

    @property
    def backend_ssl(self) -> ssl.SSLContext | None: ...

    def set_health(self, backend: BackendState, healthy: bool, *, checked: bool = True) -> None:
        """A check's verdict on *backend* (control.backends.Backends.set_health)."""


# The loops ----------------------------------------------------------------------------


async def run_health_checks(ctx: HealthHost) -> None:
    """Forever: one checker per backend of ``ctx.balancer`` that is not removed."""
    checkers: dict[BackendState, anyio.CancelScope] = {}
    async with anyio.create_task_group() as tg:
        while True:
            current = [b for b in ctx.balancer.backends.values() if not b.removed]
            for backend in set(checkers) - set(current):
                checkers.pop(backend).cancel()
            for backend in current:
                if backend not in checkers:
                    checkers[backend] = scope = anyio.CancelScope()
                    tg.start_soon(_check_forever, ctx, backend, scope)
            await anyio.sleep(min(ctx.config.health_check.interval, WATCH_PERIOD))


async def _check_forever(
    ctx: HealthHost, backend: BackendState, scope: anyio.CancelScope
) -> None:
    with scope:
        cfg = ctx.config.health_check
        await anyio.sleep(random.uniform(0, min(cfg.interval, FIRST_CHECK_JITTER)))
        streak = Streak(cfg.unhealthy_after)
        while True:
            started = anyio.current_time()
            cfg = ctx.config.health_check
            streak.unhealthy_after = cfg.unhealthy_after
            if not cfg.path:
                ctx.set_health(backend, True, checked=False)  # nothing judges it any more
            else:
                await check_once(ctx, backend, streak)
            await anyio.sleep_until(started + cfg.interval)


async def check_once(ctx: HealthHost, backend: BackendState, streak: Streak) -> bool:
    """One check of *backend*, its verdict applied; whether it passed."""
    cfg = ctx.config.health_check
    server_name = ctx.config.backend_tls.server_name or backend.server_name
    try:
        await check_backend(
            backend.config, cfg.path, deadline=anyio.current_time() + cfg.timeout,
            ssl_context=ctx.backend_ssl, server_name=server_name,
        )
    except CheckNotRun as exc:
        log.warning("health_check.not_run", backend=backend.name, error=str(exc))
        return False
    except CheckFailed as exc:
        verdict = streak.failed()
        level = log.warning if streak.failures <= streak.unhealthy_after else log.debug
        level("health_check.failed", backend=backend.name, path=cfg.path, error=str(exc),
              failures=streak.failures, unhealthy_after=streak.unhealthy_after)
        if verdict is False and not backend.removed:
            ctx.set_health(backend, False)
        return False
    streak.passed()
    if not backend.removed:
        ctx.set_health(backend, True)
    return True
