"""The backend set: static from the config, discovered by DNS, judged by health checks.

Every backend is a core.balance.BackendState in one Balancer. Static backends come
and go with the config (``apply_config``); discovered ones with each DNS answer
(control.discovery). A backend leaves rotation while it is draining, failing its
health checks (control.health) or held down after announcing a restart (a 1001/1012
close); one that leaves the set for good is marked ``removed`` and drained, and is
shown until that drain is over. This module imports core/, io/ and config only.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from wsproxy.core.balance import BackendState, Balancer
from wsproxy.log import get_logger

if TYPE_CHECKING:
    from wsproxy.config import BackendConfig, ProxyConfig
    from wsproxy.control.drains import Drains

log = get_logger()


class BackendsHost(Protocol):
    """What the backend set asks of the process (the wiring, ProxyContext)."""

    @property
    def config(self) -> ProxyConfig:
        """The current config: health checks on or off, the hold-down time."""


class Backends:
    """The backend set, and the changes to it that the process hears of."""

    def __init__(
        self, host: BackendsHost, drains: Drains, *, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._host = host
        self._drains = drains
        self._loop = loop
        self.balancer = Balancer(host.config.balance.policy, [])

    def shown(self) -> list[BackendState]:
        """The configured backends, and removed ones while their connections drain."""
        gone = [key for key in self._drains.in_progress if key is not None and key.removed]
        return [*self.balancer.backends.values(), *gone]

    def hold_down(self, backend: BackendState) -> None:
        """*backend* closed a connection with 1001/1012: it is restarting."""
        if backend.held:
            return
        backend.held = True
        seconds = self._host.config.drain.backend_hold_down
        log.info("backend.held_down", backend=backend.name, seconds=seconds)

        def release() -> None:
            backend.held = False
            log.info("backend.released", backend=backend.name)

        self._loop.call_later(seconds, release)

    def set_static(self, backends: tuple[BackendConfig, ...]) -> list[BackendState]:
        """The static backends of a new config: new ones join, the rest stay; the
        ones gone (or changed) are removed and returned, for the caller to drain once
        the new config (and its drain settings) is in place."""
        wanted = {b.name: b for b in backends}
        gone = [s for name, s in self.balancer.backends.items()
                if s.source == "static" and wanted.get(name) != s.config]
        for state in gone:
            del self.balancer.backends[state.name]
            state.removed = True
        for name, backend in wanted.items():
            if name not in self.balancer.backends:
                self.balancer.backends[name] = BackendState(backend)
        return gone

    def set_discovered(self, backends: list[BackendConfig], server_name: str | None) -> None:
        """The whole set of discovered backends now: new ones join, vanished ones drain.

        A new backend joins after its first passing health check when checks are on.
        """
        wanted = {b.name: b for b in backends}
        for name, state in list(self.balancer.backends.items()):
            if state.source == "dns" and wanted.get(name) != state.config:
                del self.balancer.backends[name]
                state.removed = True
                log.info("backend.vanished", backend=name, source="dns")
                self._drains.drain_backend(state)
        checked = bool(self._host.config.health_check.path)
        for name, backend in wanted.items():
            if name not in self.balancer.backends:
                self.balancer.backends[name] = BackendState(
                    backend, healthy=not checked, source="dns", server_name=server_name
                )
                log.info("backend.discovered", backend=name, url=backend.url,
                         waiting_for_health_check=checked)

    def set_health(self, backend: BackendState, healthy: bool, *, checked: bool = True) -> None:
        """A health check's verdict on *backend* (*checked* False: checks are off).

        A passing check also ends the hold of a backend that announced a restart
        (SPEC: "until its health check passes again").
        """
        if healthy and checked and backend.held:
            backend.held = False
            log.info("backend.released", backend=backend.name, by="health_check")
        if backend.healthy == healthy:
            return
        backend.healthy = healthy
        log.info("backend.health", backend=backend.name, healthy=healthy)
        if healthy:
            if backend in self._drains.in_progress and not backend.draining:
                self._drains.cancel(backend)
        elif not backend.removed:
            self._drains.drain_backend(backend, mark_draining=False)
