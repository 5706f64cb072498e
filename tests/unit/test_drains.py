"""The one owner of the drains (wsproxy.control.drains): what a proxy drain refuses, when.

Driven by hand: a host with the default config and no connections, a plain HTTP side
with one stub relay, and the drain's hook (``closes_begin``) called as the proxy's
drain calls it once its delay is over. Nothing waits: the drain's own task never gets
to run before the test ends it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import anyio
import pytest

from wsproxy.config import ProxyConfig
from wsproxy.control.drains import Drains
from wsproxy.core.registry import Registry
from wsproxy.io.connection import Connection
from wsproxy.io.plain_http import PlainHttp

pytestmark = pytest.mark.anyio


@dataclass
class Host:
    """The process, as the drains and the plain HTTP side see it."""

    config: ProxyConfig = field(default_factory=ProxyConfig)
    registry: Registry[Connection] = field(
        default_factory=lambda: Registry(max_connections=10, max_per_ip=0))
    drains: Drains | None = None

    def refusing_requests(self) -> bool:
        assert self.drains is not None
        return self.drains.refusing_requests()

    def relay_ended(self) -> None:
        pass


@dataclass(eq=False)
class StubRelay:
    busy: bool = False
    closing: int = 0

    def close_when_idle(self) -> None:
        self.closing += 1

    def terminate(self) -> None:
        pass


async def test_upgrades_refused_from_the_closes_on_plain_requests_after_the_spread() -> None:
    loop = asyncio.get_running_loop()
    host = Host()
    http = PlainHttp(host, loop, pool_size=0)
    relay = StubRelay()
    http.add(relay)
    async with anyio.create_task_group() as tg:
        drains = host.drains = Drains(host, http, task_group=tg, loop=loop)
        assert drains.ready
        assert not drains.refusing_upgrades()
        assert not http.refusing()
        drains.drain(spread=60.0)
        assert not drains.ready  # unready at once; refusing only once the closes begin
        assert not drains.refusing_upgrades()
        assert not http.refusing()
        drains.closes_begin(spread=60.0)
        assert drains.refusing_upgrades()
        assert not http.refusing()  # keep-alive clients get the spread
        drains.hurry()  # a second SIGTERM: the rest of the spread is skipped
        assert http.refusing()
        assert relay.closing == 1
        assert drains.undrain()
        assert drains.ready
        assert not drains.refusing_upgrades()
        assert not http.refusing()
        tg.cancel_scope.cancel()
