"""The proxy's plain HTTP side (``plain_http: proxy``): its relays, the backend pool,
and what a proxy drain does to them (wsproxy.drain calls in here)."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import anyio

from wsproxy.io.http_pool import BackendPool

if TYPE_CHECKING:
    from wsproxy.io.http_relay import HttpRelay
    from wsproxy.supervisor import ProxyContext


class PlainHttp:
    """The proxy's plain HTTP side: its relays, the backend pool, the drain's part."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.relays: set[HttpRelay] = set()
        self.pool = BackendPool(ctx.loop, ctx.config.http.pool_size)
        #: When new requests start getting 503 (a proxy drain's delay + spread).
        self.refuse_at: float | None = None
        self._drain_timers: list[asyncio.TimerHandle] = []
        self._none_left: anyio.Event | None = None

    def add(self, relay: HttpRelay) -> None:
        self.relays.add(relay)

    def remove(self, relay: HttpRelay) -> None:
        if relay in self.relays:
            self.relays.remove(relay)
            self.ctx.metrics.connections["http"] += 1
        if not self.relays and self._none_left is not None:
            self._none_left.set()

    def refusing(self) -> bool:
        return self.refuse_at is not None and self.ctx.loop.time() >= self.refuse_at

    def begin_drain(self, spread: float) -> None:
        """The proxy's closes begin: close the keep-alive connections over *spread*."""
        loop = self.ctx.loop
        self.refuse_at = loop.time() + spread
        self._drain_timers = [
            loop.call_later(random.uniform(0, spread), relay.close_when_idle)
            for relay in self.relays
        ]

    def hurry(self) -> None:
        self.refuse_at = self.ctx.loop.time()
        for relay in list(self.relays):
            relay.close_when_idle()

    def undrain(self) -> None:
        self.refuse_at = None
        for timer in self._drain_timers:
            timer.cancel()
        self._drain_timers = []

    async def wait_closed(self) -> None:
        """Return once no plain HTTP connection is left."""
        if self.relays:
            self._none_left = anyio.Event()
            await self._none_left.wait()

    def terminate(self) -> None:
        for relay in list(self.relays):
            relay.terminate()
        self.pool.close()

    @property
    def active(self) -> int:
        """Requests in flight."""
        return sum(1 for relay in self.relays if relay.busy)
