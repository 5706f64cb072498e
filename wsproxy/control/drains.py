"""The drains in progress, and the one place that decides what a drain refuses.

Theory of operation
-------------------
A drain (control.drain.Drain) closes a set of connections calmly: the proxy's own
(SIGTERM, ``POST /drain``) or one backend's (``POST /backends/NAME/drain``, a backend
gone from the config or failing its health checks). ``Drains`` owns every drain in
progress, keyed by backend (None: the proxy's own), and alone decides refusing, for
WebSocket and plain HTTP alike, on the loop's clock. A backend's drain also covers
the plain HTTP exchanges in flight on that backend (``exchange_started``/``_ended``:
one schedule with its WebSocket connections) and its idle pooled connections. The
proxy's drain runs one timeline::

    drain()        unready (/readyz 503); everything else as before
      | drain.delay (a second SIGTERM, hurry(), ends it now)
    closes begin   new upgrades 503; WebSocket closes on schedule; each keep-alive
      |            plain HTTP connection closed when idle, at a random moment of the spread
      |            (requests in flight are counted in the drain, and finish)
      | spread     (hurry(): everything now)
    spread ends    new plain requests 503 too
      | ... until every connection is gone, or drain.timeout: the rest closed at once
    done           and the process stops, if it was SIGTERM (shutdown())

``undrain()`` ends the proxy's drain and both refusals; connections already closing go
on closing. This module imports core/, io/ and config only; the process reaches it
through ``DrainHost``.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Protocol

import anyio

from wsproxy.control.drain import Drain
from wsproxy.log import get_logger

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from wsproxy.config import ProxyConfig
    from wsproxy.core.balance import BackendState
    from wsproxy.core.registry import Registry
    from wsproxy.io.connection import Connection
    from wsproxy.io.plain_http import PlainHttp
    from wsproxy.io.ports import PlainExchange

log = get_logger()


class DrainHost(Protocol):
    """What the drains ask of the process (the wiring, ProxyContext)."""

    @property
    def config(self) -> ProxyConfig:
        """The config in force: a drain takes its settings from it once, when it starts."""

    @property
    def registry(self) -> Registry[Connection]: ...


class Drains:
    """Every drain in progress, the controls that start and end them, and refusing.

    It is the ``DrainOwner`` of each of its drains.
    """

    def __init__(
        self, host: DrainHost, http: PlainHttp, *, task_group: TaskGroup,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._host = host
        self.http = http
        self._task_group = task_group
        self._loop = loop
        #: Every drain in progress; the key None is the proxy's own.
        self.in_progress: dict[BackendState | None, Drain] = {}
        http.watch(self.in_progress)  # (while it is empty the plain side asks nothing)
        #: Stop the process once the proxy's drain is done (SIGTERM, not POST /drain).
        self.exit_when_drained = False
        #: Set when the process should stop.
        self.stopped = anyio.Event()
        #: From the proxy drain's closes on: new upgrades get 503.
        self._refusing_upgrades = False
        #: When new plain requests start getting 503 (the end of the spread).
        self._refuse_requests_at: float | None = None
        self._relay_timers: list[asyncio.TimerHandle] = []
        #: Upgrades refused because the proxy is draining, since its latest drain
        #: began (kept after undrain(), until the next one: GET /drain).
        self.refused_upgrades = 0

    @property
    def config(self) -> ProxyConfig:
        return self._host.config

    @property
    def registry(self) -> Registry[Connection]:
        return self._host.registry

    # What new arrivals meet…

    @property
    def ready(self) -> bool:
        """Whether new connections are welcome (``/readyz``)."""
        return None not in self.in_progress

    def refusing_upgrades(self) -> bool:
        return self._refusing_upgrades

    def upgrade_refused(self) -> None:
        """An upgrade got 503 because refusing_upgrades() (counted for GET /drain)."""
        self.refused_upgrades += 1

    def refusing_requests(self) -> bool:
        at = self._refuse_requests_at
        return at is not None and self._loop.time() >= at

    def closes_begin(self, spread: float) -> None:
        """The proxy drain's closes begin: refuse upgrades now, plain requests after
        *spread*, over which the keep-alive plain connections are closed when idle."""
        self._refusing_upgrades = True
        loop = self._loop
        self._refuse_requests_at = loop.time() + spread
        self._relay_timers = [
            loop.call_later(random.uniform(0, spread), relay.close_when_idle)
            for relay in self.http.relays
        ]

    # Connections that open and end during a drain…

    def opened(self, conn: Connection) -> None:
        for drain in self.in_progress.values():
            if drain.closing and drain.covers(conn):
                drain.adopt(conn)  # dialled before the drain began, opened after
                break

    def finished(self, conn: Connection) -> None:
        for drain in self.in_progress.values():
            drain.forget(conn)

    # Plain HTTP exchanges on a backend, which its drain covers…

    def exchange_started(self, exchange: PlainExchange) -> None:
        for drain in self.in_progress.values():
            if drain.backend is not None and drain.closing and drain.covers(exchange):
                drain.adopt(exchange)  # routed before the drain began, sent after
                break

    def exchange_ended(self, exchange: PlainExchange) -> None:
        for drain in self.in_progress.values():
            drain.forget(exchange)

    # Controls…

    def drain(self, spread: float | None = None) -> Drain:
        """Drain the whole proxy: unready now, closes after ``drain.delay``."""
        existing = self.in_progress.get(None)
        if existing is not None:
            return existing
        cfg = self.config.drain
        self.refused_upgrades = 0
        drain = Drain(self, None, cfg.spread if spread is None else spread, cfg.delay)
        log.info("drain.started", drain="proxy", spread_s=drain.spread, delay_s=drain.delay,
                 connections=len(self.registry))
        self._start(drain)
        return drain

    def undrain(self) -> bool:
        """End the proxy's drain (connections already closing go on closing)."""
        self._refusing_upgrades = False
        self._refuse_requests_at = None
        for timer in self._relay_timers:
            timer.cancel()
        self._relay_timers = []
        return self.cancel(None)

    def drain_backend(
        self, backend: BackendState, spread: float | None = None, *, mark_draining: bool = True
    ) -> Drain:
        """Drain one backend: no new upgrades for it, its connections closed with 1012.

        *mark_draining* False is for a backend that failed its health checks: it is
        out of rotation for that reason, and comes back by itself when it recovers.
        """
        existing = self.in_progress.get(backend)
        if existing is not None:
            return existing
        backend.draining = backend.draining or mark_draining
        drain = Drain(self, backend, self.config.drain.spread if spread is None else spread)
        log.info("drain.started", drain=backend.name, spread_s=drain.spread,
                 connections=backend.active)
        self._start(drain)
        return drain

    def undrain_backend(self, backend: BackendState) -> bool:
        backend.draining = False
        return self.cancel(backend)

    def shutdown(self, spread: float | None = None) -> None:
        """SIGTERM: drain the proxy, then stop the process."""
        self.exit_when_drained = True
        drain = self.drain(spread)
        if drain.done.is_set():
            self.stopped.set()

    def hurry(self) -> None:
        """A second SIGTERM: skip the rest of every spread."""
        for drain in self.in_progress.values():
            drain.hurry()
        if None in self.in_progress:
            self._refuse_requests_at = self._loop.time()
            for relay in list(self.http.relays):
                relay.close_when_idle()

    def status(self) -> dict[str, object]:
        """Every drain in progress, summed up (``GET /drain``)."""
        now = anyio.current_time()
        drains = list(self.in_progress.values())
        active = [d for d in drains if not d.done.is_set()]
        return {
            "draining": bool(active),
            "left": sum(len(d.members) for d in active),
            "closed": sum(d.closed for d in drains),
            "seconds_left": round(max((d.seconds_left(now) for d in active), default=0.0), 3),
            "refused_upgrades": self.refused_upgrades,
            "drains": [d.status(now) for d in drains],
        }

    def cancel(self, key: BackendState | None) -> bool:
        """End the drain under *key*, if any (its closes already sent stand)."""
        drain = self.in_progress.pop(key, None)
        if drain is None:
            return False
        drain.cancel_scope.cancel()
        drain.done.set()  # ends the waits of GET /drain?wait= on it
        log.info("drain.cancelled", drain=drain.name)
        return True

    def _start(self, drain: Drain) -> None:
        self.in_progress[drain.backend] = drain

        async def run() -> None:
            await drain.run()
            if self.in_progress.get(drain.backend) is drain and drain.done.is_set():
                log.info("drain.finished", drain=drain.name, closed=drain.schedule.closed
                         if drain.schedule else 0)
                if drain.backend is None and self.exit_when_drained:
                    self.stopped.set()
                elif drain.backend is not None and drain.backend.removed:
                    del self.in_progress[drain.backend]

        self._task_group.start_soon(run)
