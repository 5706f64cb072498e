"""The process: ``serve()`` and the wiring of one proxy's parts.

anyio gives the structure: one task group holds every task of a proxy (the sweeper,
the drains, the dialling tasks of upgrades in flight), and ``serve()`` returns only
when the proxy has stopped. The connections themselves are asyncio Protocols (see
wsproxy.io.connection for why).

``ProxyContext`` is the wiring: it builds the control plane (control.drains.Drains,
control.backends.Backends, control.rebalance.Rebalancer), the plain HTTP side and the
metrics, and implements the small protocols through which the drivers (io.ports), the
control plane (each module's ``...Host``) and the admin API (admin.api.AdminHost,
admin.metrics.MetricsSource) reach the process. It decides little itself: the
controls the signals and the admin API call are the control plane's. Nothing below
this module imports it.

It keeps the config's rule (wsproxy.config, "When a value is read"): what the process
takes at startup (``listen``: the forwarded proto, the PROXY protocol) is taken from
the first config only; what a connection obeys is one ``ConnectionSettings`` built per
config and replaced whole on reload (``settings``); the live decisions read
``config``, the one in force.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from wsproxy.admin.api import AdminAPI
from wsproxy.admin.metrics import Metrics
from wsproxy.admin.server import serve_admin
from wsproxy.auth.factory import build_authenticator
from wsproxy.config import BackendConfig, ListenConfig, ProxyConfig, load_config
from wsproxy.control.backends import Backends
from wsproxy.control.discovery import DiscoveryStatus, run_discovery
from wsproxy.control.drain import close_reason
from wsproxy.control.drains import Drains
from wsproxy.control.health import run_health_checks
from wsproxy.control.rebalance import Rebalancer
from wsproxy.core.admission import TokenBucket, limit_retry_ms
from wsproxy.core.closes import BACKEND_RESTARTING, PROXY_STOPPED, TRY_AGAIN, with_hint
from wsproxy.core.handshake import Forwarding
from wsproxy.core.nonces import random_bytes
from wsproxy.core.registry import Pool, Registry, SharedRegistry
from wsproxy.core.states import Side
from wsproxy.errors import ConfigError
from wsproxy.io.connection import Connection
from wsproxy.io.deadlines import deadlines_of
from wsproxy.io.front import ClientProtocol, FrontDoor, ProxiedClientProtocol
from wsproxy.io.handoff import Handoff
from wsproxy.io.links import LinkEngine, LinkServer, close_engine, open_engine
from wsproxy.io.listen_socket import CAPACITY_ERRNOS, dual_stack_socket, listening_sockets
from wsproxy.io.loop_tracking import stop_tracking_transports
from wsproxy.io.pass_end import PassEnd
from wsproxy.io.plain_http import PlainHttp
from wsproxy.io.ports import DRAINING, CloseRefusal, ConnectionSettings, Refusal
from wsproxy.io.resume import resumed_slot
from wsproxy.io.steps import Steps
from wsproxy.io.tls_accept import EndHandshake, accept_tls
from wsproxy.log import (
    direct_put,
    get_logger,
    info_enabled,
    info_line,
    opened_line,
)
from wsproxy.tls import backend_context, server_context

if TYPE_CHECKING:
    import ssl

    from wsproxy.auth import Identity
    from wsproxy.control.drain import Drain
    from wsproxy.core.balance import BackendState
    from wsproxy.io.ports import PlainExchange

log = get_logger()

_RETRY_AFTER = (("Retry-After", "5"),)
#: The sweeper visits 1/SWEEP_SLICES of the connections per tick.
SWEEP_SLICES = 10
#: The kernel's queue of connections not accepted yet.
LISTEN_BACKLOG = 1024
#: The sections a reload cannot change (the process takes them at startup): a change
#: is logged as ``config.restart_needed``. admin.token is not one: it is live.
STARTUP_ONLY = ("listen", "admin.host", "admin.port", "discovery", "logging")


class ProxyContext:
    """What every connection of one proxy shares, and the proxy's controls.

    The controls (``drain``, ``undrain``, ``drain_backend``, ``shutdown``, ``hurry``,
    ``reload``) are what signals and the admin API call; all but ``reload`` are
    control.drains.Drains's.
    """

    def __init__(
        self, config: ProxyConfig, *, task_group: TaskGroup, config_path: str | None = None,
        adapt: Callable[[ProxyConfig], ProxyConfig] | None = None,
        on_count: Callable[[int], None] | None = None, pool: Pool | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        #: The loop's deadlines, for every connection's timers.
        self.deadlines = deadlines_of(self.loop)
        #: Work put off to the end of the loop's pass (a connection's handshake and
        #: close writes, the plain HTTP relay's writes: wsproxy.io.pass_end).
        self.pass_end = PassEnd(self.loop)
        #: The process's links (wsproxy.io.links: its plain listener's clients and its
        #: ws:// dials), opened by serve(); None where they are not built (the loop's
        #: transports then).
        self.engine: LinkEngine | None = None
        #: A worker's way to hand a resume to the sibling that holds its session.
        self.handoff: Handoff | None = None
        self._task_group = task_group
        #: The running tasks of spawn(), and the coroutines drive() runs.
        self._tasks: set[asyncio.Task[None] | Steps] = set()
        self.config_path = config_path
        #: What a worker process makes of each file it loads (wsproxy.workers: its
        #: shares of the limits, its private admin listener); None: the file as it is.
        self.adapt = adapt
        #: Told the number of connections at each change (a worker's, for its parent:
        #: the clients a crash cuts); None: nobody asks.
        self.on_count = on_count
        #: The config in force: the live decisions read it (replaced whole on reload).
        self.config = config
        #: The config the process started with: its startup-only sections obey it.
        self.startup_config = config
        #: X-Forwarded-Proto: the listener's scheme, fixed at startup as listen.* is.
        self.forwarded_proto = forwarded_proto(config)
        #: A worker's (a pool): the limits count every worker's connections.
        self.registry: Registry[Connection] = (
            Registry(max_connections=0, max_per_ip=0) if pool is None
            else SharedRegistry(max_connections=0, max_per_ip=0, pool=pool))
        self.addresses: list[tuple[str, int]] = []
        self.admin_address: tuple[str, int] | None = None
        self._last_accept_warning = float("-inf")
        self.metrics = Metrics(self)
        self.discovery = DiscoveryStatus()
        self.backend_ssl: ssl.SSLContext | None = None
        #: What a connection accepted now obeys (replaced whole on reload).
        self.settings: ConnectionSettings
        #: The sweeper's period: fast enough for the heartbeats of every config a
        #: connection may still be under (a reload only ever shortens it).
        self.sweep_period = float("inf")
        self.http = PlainHttp(self, self.loop, config.http.pool_size)
        self.drainer = Drains(self, self.http, task_group=task_group, loop=self.loop)
        self.backends = Backends(self, self.drainer, loop=self.loop)
        self.balancer = self.backends.balancer
        self.rebalancer = Rebalancer(self, loop=self.loop)
        self.apply_config(config, initial=True)

    def _apply(
        self, config: ProxyConfig, backend_ssl: ssl.SSLContext, settings: ConnectionSettings
    ) -> None:
        self.config = config
        self.settings = settings
        rules = settings.liveness_rules
        self.sweep_period = min(self.sweep_period, 1.0, rules.interval / 4, rules.timeout / 4)
        self.balancer.policy = config.balance.policy
        self.registry.max_connections = config.limits.max_connections
        self.registry.max_per_ip = config.limits.max_connections_per_ip
        self.registry.limits_changed()
        self.http.pool.size = config.http.pool_size
        self.backend_ssl = backend_ssl
        rate = config.admission.max_upgrade_rate
        self.admission = (
            TokenBucket(rate, config.admission.burst, self.loop.time()) if rate > 0 else None
        )

    # Small services for connections…

    def new_conn_id(self) -> str:
        return random_bytes(6).hex()  # secrets.token_hex(6) without a system call each

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *fn* (an upgrade's auth, a plain request's dial, a handed-over client's
        adoption) as a task of the proxy's; an upgrade's dial is drive()'s.

        It is a plain asyncio task: anyio's start_soon costs about 30 µs a task,
        several per cent of an upgrade's CPU. It belongs to
        the proxy all the same: kept in ``_tasks`` until done, cancelled when serve()
        ends, and an exception out of it (a bug) fails the task group, as it would
        have out of start_soon.
        """
        task = self.loop.create_task(fn())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._crashed(exc)

    def drive(self, steps: Steps, coro: Coroutine[Any, Any, None]) -> None:
        """Run *coro*, a connection's dial, on *steps*: by hand, from its first step
        now (wsproxy.io.steps): a task per upgrade (the task, its context copy, three
        loop callbacks) cost ~8-10k instructions of ~535k. The proxy's all the same,
        as spawn()'s tasks are: kept until done, cancelled when serve() ends, and an
        exception out of it (a bug) fails the task group."""
        self._tasks.add(steps)
        steps.start(coro, self._driven)

    def _driven(self, steps: Steps, exc: BaseException | None) -> None:
        self._tasks.discard(steps)
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            self._crashed(exc)

    def _crashed(self, exc: BaseException) -> None:
        """A bug out of a connection's coroutine: the task group fails with it."""

        async def reraise() -> None:
            raise exc

        self._task_group.start_soon(reraise)

    def cancel_tasks(self) -> None:
        """Cancel the tasks spawn() started and the coroutines drive() runs that are
        still running (serve() ends)."""
        for task in list(self._tasks):
            task.cancel()

    def forwarding(
        self, client_ip: str, forwarded_for: str, request_id: str, identity: Identity | None
    ) -> Forwarding:
        """What a backend is told about the client (X-Forwarded-*, identity headers)."""
        headers: tuple[tuple[str, str], ...] = ()
        if identity is not None:
            # Header values go out as bytes: the subject's UTF-8, spelled as Latin-1.
            subject = identity.subject.encode("utf-8").decode("latin-1")
            headers = (("X-Auth-Subject", subject), *identity.headers)
        # Its fields in order (client_ip, forwarded_for, proto, request_id, identity):
        # keywords to a class go through a dict, ~3k instructions more for these five.
        return Forwarding(client_ip, forwarded_for, self.forwarded_proto, request_id, headers)

    def probe_answer(self, path: str) -> tuple[int, str]:
        """The answer to a probe on the main listener: /readyz fails while draining."""
        ok = path == "/healthz" or self.ready
        return (200, "ok") if ok else (503, "not ready")

    def close_reason(self, text: str, hint: bool) -> str:
        return close_reason(text, hint)

    @property
    def ready(self) -> bool:
        """Whether new connections are welcome (``/readyz``)."""
        return self.drainer.ready

    @property
    def drains(self) -> dict[BackendState | None, Drain]:
        """Every drain in progress; the key None is the proxy's own."""
        return self.drainer.in_progress

    def ping_rtt(self, side: Side, rtt: float) -> None:
        """A heartbeat round trip on *side* took *rtt* seconds (kept for the metrics)."""
        self.metrics.rtt[side].observe(rtt)

    def refusing_requests(self) -> bool:
        """Whether a new plain HTTP request gets 503 (the drains decide)."""
        return self.drainer.refusing_requests()

    def relay_ended(self) -> None:
        self.metrics.connections["http"] += 1

    def exchange_started(self, exchange: PlainExchange) -> None:
        self.drainer.exchange_started(exchange)

    def exchange_ended(self, exchange: PlainExchange) -> None:
        self.drainer.exchange_ended(exchange)

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: quiet, rate-limited accept back-off.

        Out of file descriptors, the standard loop's accept() fails up to `backlog`
        times per wake-up, each reported here with a traceback (CPython 3.11); one
        warning a second is what an operator needs. Anything else is reported as the
        loop would.
        """
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in CAPACITY_ERRNOS:
            self.accept_failed(exc)
            return
        loop.default_exception_handler(context)

    def accept_failed(self, exc: OSError) -> None:
        """A listener (the main one, the admin one) ran out of descriptors: one warning
        a second at most."""
        now = self.loop.time()
        if now - self._last_accept_warning >= 1.0:
            self._last_accept_warning = now
            log.warning("accept.backoff", error=str(exc), connections=len(self.registry))

    # Hooks called by each Connection…

    def connection_started(self, conn: Connection) -> None:
        self.registry.add(conn.id, conn)
        if self.on_count is not None:
            self.on_count(len(self.registry))

    def refusal(self, conn: Connection) -> Refusal | CloseRefusal | None:
        """Why this upgrade is answered with an error before any backend is asked.

        Admission and the connection limits answer as ``admission.reject_with``
        says (live): a 503, or a CloseRefusal (the proxy's own 101 and a 1013
        close with a hint, once auth has passed). A draining proxy always answers
        503: the status is what load balancers route away on (README, Draining).
        """
        if self.drainer.refusing_upgrades():
            self.drainer.upgrade_refused()
            return DRAINING, 503, "proxy is draining", _RETRY_AFTER
        config = conn.settings.config  # the connection's, not live
        origins = config.allowed_origins
        if origins:  # (the request, a property, read only then)
            request = conn.session.request
            origin = request.origin if request is not None else None
            if origin is not None and origin.lower() not in origins:
                return "origin", 403, "origin not allowed", ()
        admission = self.admission
        if admission is not None and not admission.take(self.loop.time()):
            if self.config.admission.reject_with == "close":
                hint = admission.retry_after_ms()
                return CloseRefusal("rate_limited", with_hint(TRY_AGAIN, hint))
            retry = str(admission.retry_after())
            return "rate_limited", 503, "upgrade rate limit", (("Retry-After", retry),)
        # Last: it counts conn in (a resume, in the slot of the session it resumes).
        # (A resume only where the connection's config enables it: no call else.)
        in_place_of = resumed_slot(self, conn) if config.resume.enabled else None
        reason = self.registry.admit(conn.id, conn.client_ip, in_place_of)
        if reason is not None:
            log.warning("connection.limit", conn_id=conn.id, client=conn.client_ip, reason=reason)
            if self.config.admission.reject_with == "close":
                return CloseRefusal("connection_limit", with_hint(TRY_AGAIN, limit_retry_ms()))
            return "connection_limit", 503, reason, _RETRY_AFTER
        return None

    def connection_opened(self, conn: Connection) -> None:
        # log.info's line, the cheap ways (wsproxy.log).
        backend = conn.backend.name if conn.backend else None
        subject = conn.subject
        put = direct_put()
        if put is not None:
            put(opened_line(conn.id, conn.client_ip, backend, subject))
        else:
            info_line("connection.opened", {"conn_id": conn.id, "client": conn.client_ip,
                                            "backend": backend, "subject": subject})
        # Each one's call only when it has something to look at (a drain in progress,
        # a rebalancing round): what their opened() tests first.
        drainer = self.drainer
        if drainer.in_progress:
            drainer.opened(conn)
        rebalancer = self.rebalancer
        if rebalancer.current is not None:
            rebalancer.opened(conn)

    def connection_rejected(self, conn: Connection) -> None:
        session = conn.session
        if session.rejected_status == 101:  # refused with the proxy's own close
            log.info("connection.rejected", conn_id=conn.id, client=conn.client_ip,
                     status=101, close_code=session.close_code_sent(Side.CLIENT),
                     reason=session.close_reason, failure=conn.failure)
            return
        log.info("connection.rejected", conn_id=conn.id, client=conn.client_ip,
                 status=session.rejected_status, reason=session.close_reason)

    def connection_moved(self, conn: Connection) -> None:
        self.registry.remove(conn.id)
        if self.on_count is not None:
            self.on_count(len(self.registry))
        self.drainer.finished(conn)

    def connection_finished(self, conn: Connection) -> None:
        self.registry.remove(conn.id)
        if self.on_count is not None:
            self.on_count(len(self.registry))
        if conn.opened:  # the usual end, of an upgrade
            age = conn.age()  # one clock reading for the metrics and the line
            # The session read once for both (Session.ending()).
            session = conn.session
            ending = session.ending()
            self.metrics.upgraded_ended_with(ending, session.initiator, age)
            put = direct_put()
            if put is not None:
                put(conn.closed_line(age, ending))
            elif info_enabled():  # a summary costs ~10 µs
                info_line("connection.closed", conn.summary())
        else:
            self.metrics.connection_ended(conn, *conn.outcome())
        drainer = self.drainer
        if drainer.in_progress:  # (Drains.finished's loop, over none, costs a call)
            drainer.finished(conn)

    async def sweep(self) -> None:
        """Visit every connection about once a period for its timers (core.liveness).

        Each tick visits one slice of the connections, so that the heartbeat pings of
        10,000 connections go out as a steady trickle rather than one burst a period
        (the soak saw 50-100 ms stalls from bursts).
        """
        turn = 0
        while True:
            await anyio.sleep(self.sweep_period / SWEEP_SLICES)
            now = self.loop.time()
            for conn in list(self.registry.connections.values())[turn::SWEEP_SLICES]:
                conn.tick(now)
            turn = (turn + 1) % SWEEP_SLICES

    # Controls (control.drains)…

    def drain(self, spread: float | None = None) -> Drain:
        """Drain the whole proxy: unready now, closes after ``drain.delay``."""
        return self.drainer.drain(spread)

    def undrain(self) -> bool:
        """End the proxy's drain (connections already closing go on closing)."""
        return self.drainer.undrain()

    def drain_backend(
        self, backend: BackendState, spread: float | None = None, *, mark_draining: bool = True
    ) -> Drain:
        """Drain one backend: no new upgrades for it, its connections closed with 1012."""
        return self.drainer.drain_backend(backend, spread, mark_draining=mark_draining)

    def undrain_backend(self, backend: BackendState) -> bool:
        return self.drainer.undrain_backend(backend)

    def shutdown(self, spread: float | None = None) -> None:
        """SIGTERM: drain the proxy, then stop the process."""
        self.drainer.shutdown(spread)

    def hurry(self) -> None:
        """A second SIGTERM: skip the rest of every spread."""
        self.drainer.hurry()

    def drain_status(self) -> dict[str, object]:
        """Every drain in progress, summed up (``GET /drain``)."""
        return self.drainer.status()

    # Backends that come and go (control.backends)…

    def backends_shown(self) -> list[BackendState]:
        """The configured backends, and removed ones while their connections drain."""
        return self.backends.shown()

    def hold_down(self, backend: BackendState) -> None:
        """*backend* closed a connection with 1001/1012: it is restarting."""
        self.backends.hold_down(backend)

    def set_discovered(self, backends: list[BackendConfig], server_name: str | None) -> None:
        """The whole set of discovered backends now: new ones join, vanished ones drain."""
        self.backends.set_discovered(backends, server_name)

    def set_health(self, backend: BackendState, healthy: bool, *, checked: bool = True) -> None:
        """A health check's verdict on *backend* (*checked* False: checks are off)."""
        self.backends.set_health(backend, healthy, checked=checked)

    # Rebalancing (control.rebalance)…

    def rebalance(self) -> dict[str, object]:
        """``POST /rebalance``: one round now (RebalanceRefused while a drain runs)."""
        self.rebalancer.request()
        return self.rebalancer.status()

    def rebalance_status(self) -> dict[str, object]:
        return self.rebalancer.status()

    def backend_warm(self, backend: BackendState) -> bool:
        """Whether *backend* takes part in rebalancing (in rotation and warmed up)."""
        return self.rebalancer.warm(backend)

    # Reloading…

    def reload(self) -> list[str]:
        """Re-read the config file (SIGHUP, POST /reload); the errors, if refused."""
        if self.config_path is None:
            return ["no config file to reload"]
        try:
            config = load_config(self.config_path)
            self.apply_config(config if self.adapt is None else self.adapt(config))
        except ConfigError as exc:
            errors = [str(p) for p in exc.problems]
        except OSError as exc:  # backend_tls files that cannot be loaded
            errors = [f"backend_tls: {exc}"]
        else:
            return []
        log.error("config.reload_refused", errors=errors)
        return errors

    def apply_config(self, config: ProxyConfig, *, initial: bool = False) -> None:
        """Take a new config: vanished backends drain, new ones join, the rest stay.

        Raises:
            OSError: a backend_tls file cannot be loaded; nothing was changed.
        """
        backend_ssl = backend_context(config.backend_tls)
        # Re-reads key files (SIGHUP).
        authenticator = build_authenticator(config.auth, proto=self.forwarded_proto)
        log_restart_needed(config, self.startup_config)
        gone = self.backends.set_static(config.backends)
        restart_reason = partial(self.close_reason, BACKEND_RESTARTING, config.drain.reconnect_hint)
        self._apply(config, backend_ssl,
                    ConnectionSettings.build(config, authenticator, restart_reason))
        for state in gone:  # under the new config's drain settings
            self.drainer.drain_backend(state)
        if not initial:
            log.info("config.reloaded", backends=sorted({b.name for b in config.backends}))


def log_restart_needed(
    config: ProxyConfig, startup: ProxyConfig, keys: Iterable[str] = STARTUP_ONLY
) -> None:
    """Warn ``config.restart_needed`` for each of *keys* (dotted, ``admin.port``) whose
    value in *config* differs from *startup*'s: it is read once, at startup."""
    for key in keys:
        if _section(config, key) != _section(startup, key):
            log.warning("config.restart_needed", key=key)


def _section(config: ProxyConfig, key: str) -> object:
    """The value under a dotted *key* (``admin.port``) of *config*."""
    value: object = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


@dataclass(frozen=True)
class Drained:
    """The admin drains in force when a worker of ``workers: N`` is (re)started: its
    parent remembers them, so that a replaced worker is not the one undrained part of
    a drained proxy (a backend name the config no longer has is skipped)."""

    proxy: bool = False
    backends: frozenset[str] = frozenset()

    def apply(self, ctx: ProxyContext) -> None:
        for name in sorted(self.backends):
            backend = ctx.balancer.backends.get(name)
            if backend is not None:
                ctx.drain_backend(backend, 0.0)
        if self.proxy:
            ctx.drain(0.0)


def forwarded_proto(config: ProxyConfig) -> str:
    """X-Forwarded-Proto, as a backend and a forward auth service are told it."""
    return "https" if config.listen.tls is not None else "http"


class TlsHandshakes:
    """The owner of a TLS listener's handshakes (io.tls_accept.HandshakeOwner).

    A handshake counts in ``limits.max_connections`` and, under the peer's address,
    in ``max_connections_per_ip``; one over a limit is closed at once, logged and
    counted as a ``connection_limit`` failure like a refused upgrade. A peer that
    stands for other clients (``listen.proxy_protocol``, a ``trusted_proxies``
    member) is counted in the total only: its clients are told apart later, from the
    PROXY header or X-Forwarded-For. A handshake that fails is counted under its
    failure (``timeout``, ``tls_handshake``, ``client_gone``).
    """

    def __init__(self, ctx: ProxyContext, listen: ListenConfig) -> None:
        self.ctx = ctx
        self.spawn = ctx.spawn
        #: listen.proxy_protocol as the listener was started (listen.* needs a restart).
        self.proxy_protocol = listen.proxy_protocol
        self.front = FrontDoor(ctx, proxy_protocol=listen.proxy_protocol)

    @property
    def settings(self) -> ConnectionSettings:
        """What a connection accepted now obeys."""
        return self.ctx.settings

    def admit_handshake(self, peer_ip: str) -> EndHandshake | None:
        ctx = self.ctx
        counted = None if self._stands_for_others(peer_ip) else peer_ip
        reason = ctx.registry.handshake_started(counted)
        if reason is not None:
            log.warning("connection.limit", conn_id=None, client=peer_ip, reason=reason,
                        during="tls_handshake")
            self._failed("connection_limit")
            return None

        def end(failure: str | None) -> None:
            ctx.registry.handshake_ended(counted)
            if failure is not None:
                self._failed(failure)

        return end

    def tls_established(
        self, transport: asyncio.Transport, deadline: float, settings: ConnectionSettings
    ) -> None:
        self.front.tls_established(transport, deadline, settings)

    def _stands_for_others(self, peer_ip: str) -> bool:
        if self.proxy_protocol:
            return True
        cfg = self.ctx.config  # the limits and whom they count against are live
        if not cfg.trusted_proxies or not cfg.limits.max_connections_per_ip:
            return False
        try:
            address = ipaddress.ip_address(peer_ip)
        except ValueError:
            return False
        return any(address in network for network in cfg.trusted_proxies)

    def _failed(self, failure: str) -> None:
        metrics = self.ctx.metrics
        metrics.connections["failed"] += 1
        metrics.handshake_failures[failure] += 1


async def _listen(ctx: ProxyContext, config: ProxyConfig, backlog: int,
                  inherited: list[socket.socket] | None) -> list[asyncio.Server | LinkServer]:
    """The plain client listener; ``host: "::"`` serves IPv4 too (io.listen_socket).
    A worker process serves the sockets its parent bound (*inherited*). Its clients
    are links where the process has them (io.links), else the loop's transports."""
    proxied = config.listen.proxy_protocol
    factory = partial(ProxiedClientProtocol if proxied else ClientProtocol,
                      FrontDoor(ctx, proxy_protocol=proxied))
    if ctx.engine is not None:
        sockets = inherited if inherited is not None else await listening_sockets(
            config.listen.host, config.listen.port, LISTEN_BACKLOG)
        return [LinkServer(ctx.engine, sockets, factory)]
    if inherited is not None:
        return [await ctx.loop.create_server(factory, sock=sock, backlog=backlog)
                for sock in inherited]
    sock = dual_stack_socket(config.listen.host, config.listen.port)
    if sock is not None:
        return [await ctx.loop.create_server(factory, sock=sock, backlog=backlog)]
    return [await ctx.loop.create_server(
        factory, config.listen.host, config.listen.port, backlog=backlog, reuse_address=True
    )]


async def _listen_tls(ctx: ProxyContext, config: ProxyConfig, tg: TaskGroup,
                      inherited: list[socket.socket] | None) -> list[socket.socket]:
    """The TLS client listener (io.tls_accept: bounded, counted handshakes): its
    sockets (or the *inherited* ones of a worker), accepted on by tasks of *tg*; the
    caller closes them after *tg*."""
    assert config.listen.tls is not None
    context = server_context(config.listen.tls)
    sockets = inherited if inherited is not None else await listening_sockets(
        config.listen.host, config.listen.port, LISTEN_BACKLOG)
    owner = TlsHandshakes(ctx, config.listen)
    for sock in sockets:
        tg.start_soon(accept_tls, sock, owner, context)
    return sockets


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(
    config: ProxyConfig,
    *,
    config_path: str | None = None,
    sockets: list[socket.socket] | None = None,
    adapt: Callable[[ProxyConfig], ProxyConfig] | None = None,
    on_count: Callable[[int], None] | None = None,
    pool: Pool | None = None,
    drained: Drained | None = None,
    handoff: tuple[str, int] | None = None,
    task_status: TaskStatus[ProxyContext] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one proxy until it has stopped (``ctx.shutdown()`` and its drain).

    ``task_status`` gets the ProxyContext, whose ``addresses`` are the bound ones. A
    worker process (wsproxy.workers) passes the listening *sockets* its parent bound,
    and *adapt*, applied to each config file it reloads (*config* is adapted already);
    *on_count* is told the number of connections at each change; *pool* counts
    the connection limits over the workers (core.registry.Pool); *drained* is what an
    operator drained before a replaced worker started, in force before it listens;
    *handoff* is a worker's (directory, index) for io.handoff, used with a plain
    listener (a TLS client cannot move to another process).
    """
    loop = asyncio.get_running_loop()
    tls_sockets: list[socket.socket] = []
    siblings: Handoff | None = None
    engine: LinkEngine | None = None
    try:
        async with anyio.create_task_group() as tg:
            ctx = ProxyContext(config, task_group=tg, config_path=config_path, adapt=adapt,
                               on_count=on_count, pool=pool)
            engine = ctx.engine = open_engine(loop)
            loop.set_exception_handler(ctx.loop_exception)
            stop_tracking_transports(loop)
            if drained is not None:
                drained.apply(ctx)
            if handoff is not None and config.listen.tls is None:
                siblings = ctx.handoff = Handoff(*handoff, loop)
                siblings.open(FrontDoor(ctx, proxy_protocol=False).handed_over)
            servers: list[asyncio.Server | LinkServer] = []
            if config.listen.tls is not None:
                tls_sockets += await _listen_tls(ctx, config, tg, sockets)
                ctx.addresses = [sock.getsockname()[:2] for sock in tls_sockets]
            else:
                # The standard loop calls accept() `backlog` times per wake-up, even after
                # EMFILE (python/cpython#151615): a short queue, then the long one back.
                uvloop = type(loop).__module__.startswith("uvloop")
                servers = await _listen(ctx, config, LISTEN_BACKLOG if uvloop else 16, sockets)
                listening_now = [sock for server in servers for sock in server.sockets]
                if not uvloop and ctx.engine is None:
                    for sock in listening_now:
                        with sock.dup() as listening:
                            listening.listen(LISTEN_BACKLOG)
                ctx.addresses = [sock.getsockname()[:2] for sock in listening_now]
            log.info("proxy.listening", addresses=[_show(h, p) for h, p in ctx.addresses],
                     backends=[b.name for b in config.backends],
                     tls=config.listen.tls is not None)
            tg.start_soon(ctx.sweep)
            tg.start_soon(run_health_checks, ctx)  # idle while health_check.path is empty
            tg.start_soon(ctx.rebalancer.run)  # looks only, while rebalance.enabled is false
            if config.discovery.dns is not None:
                tg.start_soon(run_discovery, ctx, config.discovery.dns, ctx.discovery)
            ctx.admin_address = await tg.start(
                serve_admin, AdminAPI(ctx), config.admin, ctx.accept_failed
            )
            task_status.started(ctx)
            try:
                await ctx.drainer.stopped.wait()
            finally:
                for server in servers:
                    server.close()
                # A stop aborts what is left (TIMED_OUT -> FAILED); Trigger.SHUTDOWN is
                # for the upgrades a drain refuses with 503 (an HTTP answer). The code is
                # live: the config in force when the process stops.
                code = ctx.config.drain.shutdown_close_code
                for conn in list(ctx.registry.connections.values()):
                    conn.terminate(code, PROXY_STOPPED)
                ctx.http.terminate()
                ctx.cancel_tasks()  # TLS handshakes in progress too: their sockets close
                tg.cancel_scope.cancel()  # and the TLS listener's accepting
    finally:
        for sock in tls_sockets:  # their accepting tasks have ended with the task group
            sock.close()
        if siblings is not None:
            siblings.close()
        if engine is not None:  # what is left of the links is aborted
            close_engine(engine)
    log.info("proxy.stopped")
