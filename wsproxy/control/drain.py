"""One drain: closing a set of connections calmly, as SPEC.md "Draining" describes.

A ``Drain`` is one task in the proxy's task group: the proxy's own (SIGTERM, ``POST
/drain``; close code ``drain.shutdown_close_code``) or one backend's (``POST
/backends/NAME/drain``, a backend gone from the config; ``drain.backend_close_code``).
It closes its connections at the moments of a DrainSchedule, each with a close frame
whose reason carries a reconnect hint, and after ``drain.timeout`` closes what is left
at once. What the proxy's drain refuses meanwhile is its owner's decision
(control.drains).

A backend's drain covers its plain HTTP too: the exchanges in flight on that backend
are members like its WebSocket connections, on the same schedule; one still open at
its point of the spread is ended (its client connection closed: a long-poll's client
polls again, elsewhere, as a WebSocket client reconnects), and the drain is not done
while one is open. Its idle pooled connections are closed when the closes begin and
counted as closed. The proxy's own drain counts the exchanges in flight when its
closes begin too, and is not done before they end, but lets them finish (until
``timeout``): its keep-alive client connections close as control.drains says.

A drain takes its settings once, when it starts (wsproxy.config, "When a value is
read"): ``drain.spread`` and ``drain.delay`` (its owner reads those), ``timeout``,
``max_close_rate``, ``reconnect_hint`` and its close code. A reload while it runs
changes none of them.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

import anyio

from wsproxy.core.closes import BACKEND_DRAINING, PROXY_DRAINING
from wsproxy.core.schedule import DrainPlan, DrainSchedule
from wsproxy.log import get_logger

if TYPE_CHECKING:
    from wsproxy.config import DrainConfig, ProxyConfig
    from wsproxy.core.balance import BackendState
    from wsproxy.core.registry import Registry
    from wsproxy.io.connection import Connection
    from wsproxy.io.plain_http import PlainHttp
    from wsproxy.io.ports import PlainExchange

    #: What a drain closes on its schedule: WebSocket connections, plain HTTP exchanges.
    Member = Connection | PlainExchange

log = get_logger()

#: The reconnect hint is a random wait in [0, this] milliseconds for clients closed in
#: the same instant (a drain's deadline, a spread of 0, a connection adopted late): it
#: keeps them apart.
HINT_MAX_MS = 1000


def close_reason(
    text: str, hint: bool, rng: random.Random | None = None, max_ms: int = HINT_MAX_MS
) -> str:
    """*text*, plus ``"; retry-after-ms=N"`` (N random in [0, *max_ms*]) when reconnect
    hints are on."""
    if not hint:
        return text
    return f"{text}; retry-after-ms={(rng or random).randint(0, max_ms)}"


def paced_hint_ms(window: float, count: int) -> int:
    """The hint's ceiling for closes a schedule spreads: the gap between two of them.

    The spread already paces these closes evenly; a wait longer than the gap between
    them would only shuffle them, and random waits on evenly spaced closes bunch the
    reconnects (bench/drain_wave.py: a 0-1,000 ms hint on 2,000 closes over 10 s put
    1.7x the mean into the busiest 100 ms). Closes at once get the whole HINT_MAX_MS.
    """
    if count == 0 or window <= 0:
        return HINT_MAX_MS
    return min(HINT_MAX_MS, max(1, round(window / count * 1000)))


class DrainOwner(Protocol):
    """What a drain asks of its owner (control.drains.Drains)."""

    @property
    def config(self) -> ProxyConfig:
        """The config in force: a drain takes its settings from it once, when it starts."""

    @property
    def registry(self) -> Registry[Connection]: ...

    @property
    def http(self) -> PlainHttp: ...

    def closes_begin(self, spread: float) -> None:
        """The proxy's drain begins its closes, over *spread* seconds."""


class Drain:
    """One drain in progress: its members, its schedule, its outcome."""

    def __init__(
        self, owner: DrainOwner, backend: BackendState | None, spread: float, delay: float = 0.0
    ) -> None:
        self._owner = owner
        #: None: the whole proxy.
        self.backend = backend
        self.spread = spread
        self.delay = delay
        #: drain.* as it was when this drain started: it keeps them to its end.
        self.settings: DrainConfig = owner.config.drain
        cfg = self.settings
        self.code = cfg.shutdown_close_code if backend is None else cfg.backend_close_code
        self.text = PROXY_DRAINING if backend is None else BACKEND_DRAINING
        self.members: set[Member] = set()
        self.schedule: DrainSchedule[Member] | None = None
        #: The reconnect hint's ceiling for the closes on schedule (paced_hint_ms).
        self._paced_hint_ms = HINT_MAX_MS
        #: Idle pooled connections to the backend closed when the closes began.
        self.idle_closed = 0
        #: Set once the closes have started (after ``delay``).
        self.closing = False
        self.done = anyio.Event()
        self._hurry = anyio.Event()
        self.cancel_scope = anyio.CancelScope()

    @property
    def name(self) -> str:
        return "proxy" if self.backend is None else self.backend.name

    def covers(self, conn: Member) -> bool:
        return self.backend is None or conn.backend is self.backend

    def hurry(self) -> None:
        """Skip the rest of the spread: close everything left now (a second SIGTERM)."""
        self._hurry.set()

    def adopt(self, conn: Member) -> None:
        """A connection (exchange) of ours opened after the closes began: close it at once."""
        self.members.add(conn)
        conn.drain_close(self.code, close_reason(self.text, self.settings.reconnect_hint))

    def forget(self, conn: Member) -> None:
        """*conn* has ended."""
        self.members.discard(conn)
        if self.schedule is not None:
            self.schedule.discard(conn)
        if self.closing and not self.members:
            self.done.set()

    @property
    def closed(self) -> int:
        """Connections this drain has sent their close frame, exchanges it ended, idle
        pooled connections it closed."""
        return (self.schedule.closed if self.schedule else 0) + self.idle_closed

    def seconds_left(self, now: float) -> float:
        return self.schedule.seconds_left(now) if self.schedule else self.spread

    def status(self, now: float) -> dict[str, object]:
        return {"name": self.name, "left": len(self.members), "closed": self.closed,
                "seconds_left": round(self.seconds_left(now), 3)}

    async def run(self) -> None:
        """Wait out ``delay``, close on schedule, and close the rest at the deadline."""
        with self.cancel_scope:
            if self.delay:
                with anyio.move_on_after(self.delay):
                    await self._hurry.wait()
            self._begin()
            assert self.schedule is not None
            await self._close_on_schedule(self.schedule)
            with anyio.move_on_after(max(0.0, self.schedule.deadline - anyio.current_time())):
                await self.done.wait()
                if self.backend is None:  # and the plain HTTP requests in flight
                    await self._owner.http.wait_closed()
            self._close_the_rest()
            with anyio.move_on_after(1.0):  # transports report their end promptly
                await self.done.wait()

    def _begin(self) -> None:
        owner = self._owner
        if self.backend is None:
            owner.closes_begin(self.spread)
        self.members = {c for c in owner.registry.connections.values()
                        if c.opened and self.covers(c)}
        in_flight: list[PlainExchange] = []
        if self.backend is not None:
            # Its plain HTTP: the exchanges in flight share the schedule; idle links go now.
            in_flight = owner.http.on(self.backend)
            self.members.update(in_flight)
            self.idle_closed = owner.http.pool.close_idle(self.backend)
        cfg = self.settings
        plan = DrainPlan(spread=self.spread, timeout=cfg.timeout, max_close_rate=cfg.max_close_rate)
        self.schedule = DrainSchedule(list(self.members), anyio.current_time(), plan)
        self._paced_hint_ms = paced_hint_ms(plan.window(len(self.members)), len(self.members))
        if self.backend is None:
            # Counted, not scheduled: a request in flight finishes (SIGTERM's promise).
            in_flight = list(owner.http.exchanges)
            self.members.update(in_flight)
        exchanges = len(in_flight)
        self.closing = True
        log.info("drain.closing", drain=self.name, connections=len(self.members) - exchanges,
                 exchanges=exchanges, idle_closed=self.idle_closed,
                 window_s=round(plan.window(len(self.members)), 3))
        if not self.members:
            self.done.set()

    async def _close_on_schedule(self, schedule: DrainSchedule[Member]) -> None:
        hint = self.settings.reconnect_hint
        while (at := schedule.next_at()) is not None:
            if not self._hurry.is_set():
                with anyio.move_on_after(max(0.0, at - anyio.current_time())):
                    await self._hurry.wait()
            hurry = self._hurry.is_set()  # then all that is left closes in this instant
            due = schedule.due(schedule.deadline if hurry else anyio.current_time())
            max_ms = HINT_MAX_MS if hurry else self._paced_hint_ms
            for conn in due:
                conn.drain_close(self.code, close_reason(self.text, hint, max_ms=max_ms))

    def _close_the_rest(self) -> None:
        if self.members:
            log.warning("drain.timeout", drain=self.name, left=len(self.members))
        for conn in list(self.members):
            conn.terminate(self.code, self.text)
        http = self._owner.http
        if self.backend is None and http.relays:
            log.warning("drain.timeout", drain="plain_http", left=len(http.relays))
            http.terminate()
