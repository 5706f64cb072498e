"""Rebalancing rounds: moving long-lived connections onto backends that joined.

The decision is core.rebalance's (which backends hold too many, how many to close,
which first); this module drives it on the loop's clock.

Theory of operation
-------------------
``Rebalancer.run()`` is one task of the proxy. Every ``CHECK_PERIOD`` it looks at the
backends: one that has come into rotation (a static backend after a reload, a
discovered one, one back from a failed health check, a drain or a hold-down) is
noted with the moment it came; it *takes part* once it has stayed in rotation for
``rebalance.warmup`` (its health checks passing all along: a failed one takes it out,
and its warmup starts again when it comes back). A round starts when

- ``rebalance.enabled``, no drain is running (the proxy's or any backend's: a drain
  moves connections already, and a round would fight it), no backend in rotation is
  still warming up, and the most loaded backend taking part has held more than
  ``rebalance.ratio`` times the mean on every look for ``TRIGGER_HOLD`` (2 s: the
  uneven counts of a burst of dials in flight even out by themselves); or
- ``POST /rebalance`` (``wsproxy rebalance``) asked for one: then neither ``enabled``
  nor the ratio is asked, and every backend in rotation takes part, warmed up or not
  (the operator vouches for it). A drain refuses it all the same.

A round takes ``rebalance.max_close_rate`` and ``drain.reconnect_hint`` once, when it
starts (wsproxy.config, "When a value is read"). While it runs:

- Every pick of a backend for a new connection is the least-loaded one's
  (``Balancer.least_loaded``), whatever ``balance`` says: the clients it closes
  reconnect to the backends below the mean, not back where they were.
- At each step it recomputes the plan (core.rebalance.plan) from the live counts, so
  arrivals and departures of other clients are taken into account: each backend's
  connections minus the ones the round has closed that are still closing, and the
  clients closed that have not reconnected yet counted in the total (a connection
  opened anywhere during the round is taken as one of them coming back; one not back
  within ``RECONNECT_WAIT``, 30 s, is no longer awaited). It closes the oldest connection of
  the backend with the largest excess, with 1012 "rebalancing" and the reconnect
  hint, and never two closes less than ``1/max_close_rate`` apart.
- It ends when no backend has an excess and no client is awaited; or when a drain
  starts (no close is sent once one runs), or the backends in rotation change (a new
  round, with the new set, follows the new one's warmup); or after ``2 * planned + 10``
  closes (a bound: churn cannot keep a round going for ever).

This module imports core/, config and log; the process reaches it through
``RebalanceHost``.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import anyio

from wsproxy.control.drain import close_reason, paced_hint_ms
from wsproxy.core.closes import REBALANCING
from wsproxy.core.rebalance import ClosePacer, Plan, oldest_first, plan, ratio_of
from wsproxy.log import get_logger

if TYPE_CHECKING:
    from wsproxy.config import ProxyConfig
    from wsproxy.control.drain import Drain
    from wsproxy.core.balance import BackendState, Balancer
    from wsproxy.core.registry import Registry
    from wsproxy.io.connection import Connection

log = get_logger()

#: How often the backends are looked at (joins noticed, the trigger evaluated).
CHECK_PERIOD: Final = 0.25
#: A closed client not back within this long is no longer awaited. The reconnect hint
#: is at most 1 s, but a client's own backoff, or a loaded machine, may add several:
#: awaiting a client too long only delays the round's end (and closes less), while
#: forgetting it too soon lowers the mean and closes more than the ideal.
RECONNECT_WAIT: Final = 30.0
#: The trigger must hold on every look for this long before a round starts: the counts
#: of a burst of new connections (a proxy restart, a reconnect wave) are uneven while
#: their dials are in flight, and even out by themselves.
TRIGGER_HOLD: Final = 2.0
#: While nothing is left to close but clients are awaited, the round looks again this often.
AWAIT_STEP: Final = 0.05


class RebalanceHost(Protocol):
    """What rebalancing asks of the process (the wiring, ProxyContext)."""

    @property
    def config(self) -> ProxyConfig:
        """The config in force: the trigger reads it live, a round once when it starts."""

    @property
    def registry(self) -> Registry[Connection]: ...

    @property
    def balancer(self) -> Balancer: ...

    @property
    def drains(self) -> Mapping[BackendState | None, Drain]:
        """Every drain in progress (and finished backend drains still listed)."""


@dataclass(slots=True)
class Round:
    """One round in progress, or the last one."""

    started: float
    forced: bool
    #: The closes the first plan called for (the ideal number).
    planned: int
    closes: int = 0
    #: Closed clients not back within RECONNECT_WAIT.
    not_back: int = 0
    ended: float | None = None
    #: Why it ended: balanced, drain, backends changed, limit, nothing to close.
    outcome: str | None = None

    def view(self, now: float) -> dict[str, object]:
        end = self.ended if self.ended is not None else now
        return {"forced": self.forced, "planned": self.planned, "closes": self.closes,
                "not_back": self.not_back, "seconds": round(end - self.started, 3),
                "outcome": self.outcome}


class RebalanceRefused(Exception):
    """``POST /rebalance`` cannot start a round now; the message says why."""


class Rebalancer:
    """The rebalancing task, its state and its control."""

    def __init__(self, host: RebalanceHost, *, loop: asyncio.AbstractEventLoop) -> None:
        self._host = host
        self._loop = loop
        #: When each backend in rotation came into it (its warmup counts from there).
        self._since: dict[BackendState, float] = {}
        self._requested = anyio.Event()
        #: The round in progress, else None; ``last`` is the one before.
        self.current: Round | None = None
        self.last: Round | None = None
        self.rounds = 0
        #: How many times it has looked at the backends (tests wait on it).
        self.looks = 0
        #: Closes by backend name, since the start (``wsproxy_rebalance_closes_total``).
        self.closes: Counter[str] = Counter()
        #: Clients closed by the round in progress, awaited back: their close moments.
        self._awaiting: deque[float] = deque()
        #: Since when the trigger has held on every look (None: it does not now).
        self._triggered_since: float | None = None

    # What the process tells it…

    def opened(self, conn: Connection) -> None:
        """A connection opened: during a round, taken as a closed client come back."""
        if self.current is not None and self._awaiting:
            self._awaiting.popleft()

    def request(self) -> Round | None:
        """``POST /rebalance``: a round now; the one already running, if any.

        Raises:
            RebalanceRefused: a drain is running.
        """
        if self._draining():
            raise RebalanceRefused("a drain is running: no rebalancing until it ends")
        if self.current is None:
            self._requested.set()
        return self.current

    # What it tells…

    def ratio(self) -> float:
        """The most loaded backend taking part over the mean (the gauge)."""
        return ratio_of(b.active for b in self._taking_part(self._loop.time(), forced=False))

    def status(self) -> dict[str, object]:
        """``GET /rebalance``."""
        cfg = self._host.config.rebalance
        now = self._loop.time()
        warming = self._warming(now)
        return {
            "enabled": cfg.enabled, "running": self.current is not None,
            "ratio": round(self.ratio(), 4), "trigger": cfg.ratio,
            "max_close_rate": cfg.max_close_rate, "rounds": self.rounds,
            "closes": sum(self.closes.values()),
            "warming_up": {b.name: round(left, 3) for b, left in warming.items()},
            "draining": self._draining(),
            "round": self.current.view(now) if self.current else None,
            "last_round": self.last.view(now) if self.last else None,
        }

    def warm(self, backend: BackendState) -> bool:
        """Whether *backend* takes part in a round (in rotation, warmed up)."""
        return backend in self._taking_part(self._loop.time(), forced=False)

    # The task…

    async def run(self) -> None:
        """Forever: note joins, start a round when one is due or asked for."""
        while True:
            with anyio.move_on_after(CHECK_PERIOD):
                await self._requested.wait()
            forced = self._requested.is_set()
            self._requested = anyio.Event()
            now = self._loop.time()
            self._observe(now)
            self.looks += 1
            if self._draining():
                self._triggered_since = None  # the hold starts again after the drain
                continue
            since = self._triggered_since = (
                (self._triggered_since or now) if self._due(now) else None)
            if forced or (since is not None and now - since >= TRIGGER_HOLD):
                self._triggered_since = None
                await self._round(forced)

    def _observe(self, now: float) -> frozenset[BackendState]:
        """Note the backends that came into rotation and forget those that left it;
        the set in rotation."""
        usable = frozenset(b for b in self._host.balancer.backends.values() if b.usable)
        for backend in list(self._since):
            if backend not in usable:
                del self._since[backend]
        for backend in usable:
            if backend not in self._since:
                self._since[backend] = now
                log.debug("rebalance.joined", backend=backend.name)
        return usable

    def _warming(self, now: float) -> dict[BackendState, float]:
        """Backends in rotation still warming up, with the seconds they have left."""
        warmup = self._host.config.rebalance.warmup
        return {b: since + warmup - now for b, since in self._since.items()
                if now - since < warmup}

    def _taking_part(self, now: float, *, forced: bool) -> list[BackendState]:
        warmup = self._host.config.rebalance.warmup
        return [b for b, since in self._since.items() if forced or now - since >= warmup]

    def _draining(self) -> bool:
        return any(not d.done.is_set() for d in self._host.drains.values())

    def _due(self, now: float) -> bool:
        cfg = self._host.config.rebalance
        if not cfg.enabled or self._warming(now):
            return False
        counts = {b.name: b.active for b in self._taking_part(now, forced=False)}
        if len(counts) < 2:
            return False
        first = plan(counts)
        return first.total > 0 and first.triggered(cfg.ratio)

    async def _round(self, forced: bool) -> None:
        host = self._host
        cfg = host.config
        pacer = ClosePacer(cfg.rebalance.max_close_rate)
        hint = cfg.drain.reconnect_hint
        # The pacer spaces the closes: a hint within that gap keeps them spaced (as a drain's).
        hint_ms = paced_hint_ms(1.0 / cfg.rebalance.max_close_rate, 1)
        now = self._loop.time()
        usable = self._observe(now)
        members = self._taking_part(now, forced=forced)
        first = plan({b.name: b.active for b in members})
        current = self.current = Round(started=now, forced=forced, planned=first.total)
        self.rounds += 1
        self._awaiting.clear()
        limit = 2 * first.total + 10
        # Oldest first, per backend: popped from the end.
        queues = {b: self._queue(b) for b in members}
        closing: dict[Connection, BackendState] = {}
        log.info("rebalance.started", forced=forced, ratio=round(first.ratio, 4),
                 mean=round(first.mean, 2), planned=first.total,
                 max_close_rate=cfg.rebalance.max_close_rate,
                 backends={b.name: b.active for b in members})
        host.balancer.least_loaded = True
        outcome = "balanced"
        try:
            while True:
                now = self._loop.time()
                if self._draining():
                    outcome = "drain"
                    break
                if self._observe(now) != usable:
                    outcome = "backends changed"
                    break
                step = self._plan(members, closing, now)
                name = step.most_excess()
                if name is None or current.closes >= limit:
                    if current.closes >= limit:
                        outcome = "limit"
                        break
                    if not self._awaiting:
                        break
                    await anyio.sleep(AWAIT_STEP)
                    continue
                if not pacer.ready(now):
                    await anyio.sleep(max(0.0, (pacer.next_at() or now) - now))
                    continue
                backend = next(b for b in members if b.name == name)
                conn = self._next(queues, backend, closing)
                if conn is None:
                    outcome = "nothing to close"
                    break
                reason = close_reason(REBALANCING.reason, hint, max_ms=hint_ms)
                conn.drain_close(REBALANCING.code, reason)
                closing[conn] = backend
                self._awaiting.append(now)
                pacer.closed(now)
                current.closes += 1
                self.closes[backend.name] += 1
                log.info("rebalance.close", conn_id=conn.id, backend=backend.name,
                         excess=step.excess[name])
        finally:
            host.balancer.least_loaded = False
            current.ended = self._loop.time()
            current.outcome = outcome
            self.current, self.last = None, current
            self._awaiting.clear()
        log.info("rebalance.finished", outcome=outcome, planned=current.planned,
                 closes=current.closes, not_back=current.not_back,
                 seconds=round(current.ended - current.started, 3), ratio=round(self.ratio(), 4))

    def _plan(
        self, members: list[BackendState], closing: dict[Connection, BackendState], now: float
    ) -> Plan:
        """The plan now: counts less the connections still closing, the clients awaited."""
        awaiting = self._awaiting
        while awaiting and awaiting[0] < now - RECONNECT_WAIT:
            awaiting.popleft()
            if self.current is not None:
                self.current.not_back += 1
        connections = self._host.registry.connections
        for conn in [c for c in closing if c.id not in connections]:
            del closing[conn]
        still = Counter(closing.values())
        return plan({b.name: b.active - still[b] for b in members}, len(awaiting))

    def _queue(self, backend: BackendState) -> list[Connection]:
        """*backend*'s open connections, the oldest last (popped first)."""
        conns = [c for c in self._host.registry.connections.values() if c.backend is backend]
        return oldest_first(conns, _started)[::-1]

    def _next(
        self, queues: dict[BackendState, list[Connection]], backend: BackendState,
        closing: Mapping[Connection, BackendState],
    ) -> Connection | None:
        """The oldest open connection of *backend* the round has not closed yet."""
        connections = self._host.registry.connections
        for attempt in range(2):
            queue = queues[backend]
            while queue:
                conn = queue.pop()
                if conn.id in connections and conn.backend is backend and conn not in closing:
                    return conn
            if attempt == 0:  # connections opened since the round began: the youngest
                queues[backend] = [c for c in self._queue(backend) if c not in closing]
        return None


def _started(conn: Connection) -> float:
    return conn.started
