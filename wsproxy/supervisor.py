"""The process around the connections: listener, shared state, stop.

anyio gives the structure (the task group every dialling task belongs to, signals,
the stop sequence); the connections themselves are asyncio Protocols (see
wsproxy.io.connection for why).
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from wsproxy.config import ProxyConfig
from wsproxy.core.balance import BackendState, Balancer
from wsproxy.core.registry import Registry
from wsproxy.io.connection import ClientProtocol, Connection
from wsproxy.log import get_logger
from wsproxy.tls import backend_context, server_context

log = get_logger()

Refusal = tuple[int, str, tuple[tuple[str, str], ...]]
_RETRY_AFTER = (("Retry-After", "5"),)


class ProxyContext:
    """What every connection of one proxy shares: config, backends, the registry."""

    def __init__(self, config: ProxyConfig, *, task_group: TaskGroup) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self._task_group = task_group
        self.balancer = Balancer(
            config.balance.policy, [BackendState(b) for b in config.backends]
        )
        self.registry: Registry[Connection] = Registry(
            max_connections=config.limits.max_connections,
            max_per_ip=config.limits.max_connections_per_ip,
        )
        self.backend_ssl: ssl.SSLContext | None = (
            backend_context(config.backend_tls)
            if any(b.scheme == "wss" for b in config.backends)
            else None
        )
        self.stopping = False
        self.all_closed = anyio.Event()

    def new_conn_id(self) -> str:
        return secrets.token_hex(6)

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *fn* in the proxy's task group (nothing outlives the process group)."""
        self._task_group.start_soon(fn)

    # Hooks called by each Connection…

    def connection_started(self, conn: Connection) -> None:
        self.registry.add(conn.id, conn.peer_ip, conn)

    def refusal(self, conn: Connection) -> Refusal | None:
        """Why this upgrade is answered with an error before any backend is asked."""
        if self.stopping:
            return 503, "proxy is shutting down", _RETRY_AFTER
        request = conn.session.request
        origins = self.config.allowed_origins
        origin = request.origin if request is not None else None
        if origins and origin is not None and origin not in origins:
            return 403, "origin not allowed", ()
        reason = self.registry.over_limit(conn.client_ip)
        if reason is not None:
            log.warning("connection.limit", conn_id=conn.id, client=conn.client_ip, reason=reason)
            return 503, reason, _RETRY_AFTER
        return None

    def connection_opened(self, conn: Connection) -> None:
        log.info("connection.opened", conn_id=conn.id, client=conn.client_ip,
                 backend=conn.backend.name if conn.backend else None, subject=None)

    def connection_rejected(self, conn: Connection) -> None:
        log.info("connection.rejected", conn_id=conn.id, client=conn.client_ip,
                 status=conn.session.rejected_status, reason=conn.session.close_reason)

    def connection_finished(self, conn: Connection) -> None:
        self.registry.remove(conn.id, conn.peer_ip)
        if conn.backend is not None:
            log.info("connection.closed", **conn.summary())
        if self.stopping and not len(self.registry):
            self.all_closed.set()


async def serve(
    config: ProxyConfig,
    stop: anyio.Event,
    *,
    task_status: TaskStatus[list[tuple[str, int]]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one proxy until *stop* is set; ``task_status`` gets the bound addresses."""
    loop = asyncio.get_running_loop()
    tls = server_context(config.listen.tls) if config.listen.tls else None
    async with anyio.create_task_group() as tg:
        ctx = ProxyContext(config, task_group=tg)
        server = await loop.create_server(
            lambda: ClientProtocol(ctx), config.listen.host, config.listen.port,
            ssl=tls, backlog=1024, reuse_address=True,
        )
        addresses = [sock.getsockname()[:2] for sock in server.sockets]
        log.info("proxy.listening", addresses=[f"{h}:{p}" for h, p in addresses],
                 backends=[b.name for b in config.backends], tls=tls is not None)
        task_status.started(addresses)
        await stop.wait()
        await _stop(ctx, server)
        tg.cancel_scope.cancel()


async def _stop(ctx: ProxyContext, server: asyncio.Server) -> None:
    """Close every connection with a close frame, bounded by drain.timeout."""
    ctx.stopping = True
    server.close()
    code = ctx.config.drain.shutdown_close_code
    log.info("proxy.stopping", connections=len(ctx.registry))
    if not len(ctx.registry):
        ctx.all_closed.set()
    for conn in list(ctx.registry.connections.values()):
        conn.shutdown(code, "proxy shutting down")
    with anyio.move_on_after(ctx.config.drain.timeout):
        await ctx.all_closed.wait()
    for conn in list(ctx.registry.connections.values()):
        conn.session.abort()
        conn.shutdown(code, "")
    log.info("proxy.stopped")
