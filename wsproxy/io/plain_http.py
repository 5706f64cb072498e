"""The proxy's plain HTTP side (``plain_http: proxy``): its relays and the backend pool.

What a proxy drain does to them (when new requests are refused, which keep-alive
connections close when) is decided by control.drains; this side only asks
(``refusing()``) and lends its relays. A backend drain counts the exchanges in flight
on that backend (``on()``, and each start and end is told to the owner while a drain is
in progress: ``watch()``) and closes its idle pooled connections (``pool.close_idle()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import anyio

from wsproxy.io.http_pool import BackendPool
from wsproxy.io.ports import PlainExchange, PlainHttpOwner, Relay

if TYPE_CHECKING:
    from wsproxy.core.balance import BackendState

#: PlainHttp.drains until the drains are wired (watch()): as if the proxy's drain were on.
_ASK_ALWAYS: Final[Mapping[BackendState | None, object]] = {None: None}


class PlainHttp:
    """The proxy's plain HTTP relays and their backend pool (io.ports.PlainRequests)."""

    def __init__(self, owner: PlainHttpOwner, loop: asyncio.AbstractEventLoop,
                 pool_size: int) -> None:
        self._owner = owner
        self.relays: set[Relay] = set()
        self.pool = BackendPool(loop, pool_size)
        self._none_left: anyio.Event | None = None
        #: Exchanges in flight on a backend (sent there, not yet over).
        self.exchanges: set[PlainExchange] = set()
        #: The drains in progress (control.drains.Drains.in_progress, the key None the
        #: proxy's own), which the drains hand over (``watch()``): while it is empty the
        #: owner is not asked what only a drain changes (an exchange's start and end,
        #: refusing, readiness), a few calls a request less. Until then, it holds the
        #: proxy's key: the owner is asked every time.
        self.drains: Mapping[BackendState | None, object] = _ASK_ALWAYS

    def watch(self, drains: Mapping[BackendState | None, object]) -> None:
        """*drains*: every drain in progress, kept up to date by its owner; no proxy drain
        (no key None) means ready and not refusing; none at all, nothing to tell."""
        self.drains = drains

    def add(self, relay: Relay) -> None:
        self.relays.add(relay)

    def remove(self, relay: Relay) -> None:
        if relay in self.relays:
            self.relays.remove(relay)
            self._owner.relay_ended()
        if not self.relays and self._none_left is not None:
            self._none_left.set()

    def exchange_started(self, exchange: PlainExchange) -> None:
        self.exchanges.add(exchange)
        if self.drains:  # (no drain, none to adopt it)
            self._owner.exchange_started(exchange)

    def exchange_ended(self, exchange: PlainExchange) -> None:
        if exchange in self.exchanges:
            self.exchanges.remove(exchange)
            if self.drains:  # (no drain, none to forget it)
                self._owner.exchange_ended(exchange)

    def on(self, backend: BackendState) -> list[PlainExchange]:
        """The exchanges in flight on *backend*."""
        return [ex for ex in self.exchanges if ex.backend is backend]

    def refusing(self) -> bool:
        # Only the proxy's drain refuses (control.drains: from its closes until undrain()).
        return None in self.drains and self._owner.refusing_requests()

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
