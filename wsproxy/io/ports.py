"""What the drivers ask of the process they serve: small ``typing.Protocol`` ports.

A driver never imports the process wiring (wsproxy.supervisor) nor the control plane:
it is handed an owner that has the members listed here, as io.http_pool's
``BackendLink`` is handed a ``LinkUser`` and io.tls_accept's listener a
``HandshakeOwner``. supervisor.ProxyContext implements every port; a test may hand a
driver anything else that does.

The members keep the names the drivers have always called (``ctx.refusal(conn)``,
``ctx.balancer``...). Values a driver reads (``settings``, ``loop``, ``balancer``...)
are plain attributes of the implementation, so that a port costs the data path nothing.

What a client connection obeys is the config's rule (wsproxy.config, "When a value is
read"): a connection takes ``ctx.settings`` (``ConnectionSettings``: its config and
what was built from it) once, when it is accepted, keeps it in one slot and hands it
on when its client changes drivers; ``ctx.<member>`` is read only for the decisions
the rule calls live (the balancer, ``ctx.config.balance``, ``ctx.backend_ssl`` and
``ctx.config.backend_tls``, the refusals).

This module imports only core/, config, auth and io.http_pool: never the drivers
themselves, which import it (``ConnectionOwner`` names the connection type as a type
parameter instead).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, TypeVar

from wsproxy.core.closes import ProxyClose
from wsproxy.core.liveness import LivenessRules

if TYPE_CHECKING:
    from wsproxy.auth import Authenticator, Identity
    from wsproxy.config import ProxyConfig
    from wsproxy.core.balance import BackendState, Balancer
    from wsproxy.core.handshake import Forwarding
    from wsproxy.core.registry import Registry
    from wsproxy.core.states import Side
    from wsproxy.io.deadlines import Deadlines
    from wsproxy.io.handoff import Handoff
    from wsproxy.io.http_pool import BackendPool
    from wsproxy.io.links import LinkEngine
    from wsproxy.io.pass_end import PassEnd
    from wsproxy.io.steps import Steps

#: (failure label, status, reason, headers) of an upgrade refused before any backend.
Refusal = tuple[str, int, str, tuple[tuple[str, str], ...]]


class CloseRefusal(NamedTuple):
    """An upgrade refused with the proxy's own 101 and *close* (``admission.reject_with:
    close``), once auth has passed; *failure* is the label, as a Refusal's."""

    failure: str
    close: ProxyClose

#: The failure label of an upgrade refused because the proxy is draining: the session
#: ends by Trigger.SHUTDOWN.
DRAINING: Final = "draining"

#: The WebSocket connection class of io.connection, as its owner's hooks receive it.
ConnT = TypeVar("ConnT")


@dataclass(frozen=True, slots=True, eq=False)
class ConnectionSettings:
    """What one client connection obeys, from accept to end: one config file's.

    Built once per config (at startup and at each reload) and replaced whole, never
    changed: a connection holds the one in force when it was accepted, so it never
    mixes two files. Its relays and any Connection its client goes back to keep it.
    """

    config: ProxyConfig
    #: Built from ``config.auth`` (None: auth is off).
    authenticator: Authenticator | None
    #: Lower-case names of the headers the proxy sets itself (the auth identity's).
    owned_headers: frozenset[bytes]
    #: ``heartbeat.*``, ``limits.idle_timeout`` and ``limits.max_connection_age``.
    liveness_rules: LivenessRules
    #: The reason of the close a client gets when its backend restarts
    #: (``drain.backend_close_code``), made only then: it may carry a random hint. One
    #: per config, not one per connection (a partial each cost ~260 B while it was open).
    restart_reason: Callable[[], str]

    @classmethod
    def build(
        cls, config: ProxyConfig, authenticator: Authenticator | None,
        restart_reason: Callable[[], str],
    ) -> ConnectionSettings:
        """The settings of *config*, with the authenticator already built from it and the
        maker of its *restart_reason*."""
        owned = authenticator.owned_headers if authenticator is not None else ()
        return cls(
            config=config,
            authenticator=authenticator,
            restart_reason=restart_reason,
            owned_headers=frozenset(name.lower().encode("latin-1") for name in owned),
            liveness_rules=LivenessRules(
                interval=config.heartbeat.interval,
                timeout=config.heartbeat.timeout,
                idle_timeout=config.limits.idle_timeout,
                max_age=config.limits.max_connection_age,
            ),
        )


class Relay(Protocol):
    """What the plain HTTP side (and a proxy drain) does to one relay (io.http_relay)."""

    @property
    def busy(self) -> bool:
        """Whether a request is in flight."""

    def close_when_idle(self) -> None:
        """Close the client connection after the request in flight, if any."""

    def terminate(self) -> None:
        """Close the client connection now."""


class PlainExchange(Protocol):
    """One plain HTTP exchange in flight on a backend, as a backend drain sees it: a
    member of the drain like a WebSocket connection, with its point of the spread."""

    @property
    def backend(self) -> BackendState | None:
        """The backend it was sent to."""

    def drain_close(self, code: int, reason: str) -> None:
        """Its point of a drain's spread: end it now (its client connection closed, so
        that a polling client reconnects); *code* and *reason* are the WebSocket's."""

    def terminate(self, code: int, reason: str) -> None:
        """The drain's deadline: end it now."""


class PlainRequests(Protocol):
    """The proxy's plain HTTP side as a relay sees it (io.plain_http.PlainHttp)."""

    @property
    def pool(self) -> BackendPool: ...

    @property
    def drains(self) -> Mapping[BackendState | None, object]:
        """The drains in progress, the key None the proxy's (empty: none is)."""

    def add(self, relay: Relay) -> None: ...

    def remove(self, relay: Relay) -> None: ...

    def exchange_started(self, exchange: PlainExchange) -> None:
        """*exchange* was sent to its backend (a backend drain counts it)."""

    def exchange_ended(self, exchange: PlainExchange) -> None:
        """*exchange* is over, however it ended."""

    def refusing(self) -> bool:
        """Whether a new request is answered 503 (a proxy drain's decision)."""


class RequestMetrics(Protocol):
    """Where a relay counts its requests (admin.metrics.Metrics)."""

    def http_request(self, status: int | None, seconds: float) -> None: ...


class PlainHttpOwner(Protocol):
    """What the plain HTTP side (io.plain_http.PlainHttp) asks of the process."""

    def refusing_requests(self) -> bool:
        """Whether a new plain request is answered 503 (control.drains decides)."""

    def relay_ended(self) -> None:
        """A plain HTTP client connection has ended (for the metrics)."""

    def exchange_started(self, exchange: PlainExchange) -> None:
        """*exchange* was sent to its backend (control.drains counts it in a drain)."""

    def exchange_ended(self, exchange: PlainExchange) -> None:
        """*exchange* is over (control.drains: no longer left in a drain)."""


class HttpRelayOwner(Protocol):
    """What a plain HTTP relay (io.http_relay.HttpRelay) asks of the process."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def engine(self) -> LinkEngine | None:
        """The process's links (wsproxy.io.links), which its ws:// dials use, if it
        has them."""

    @property
    def pass_end(self) -> PassEnd:
        """Work put off to the end of the loop's pass (wsproxy.io.pass_end): a
        connection's handshake and close writes, every write of the plain HTTP relay."""

    @property
    def config(self) -> ProxyConfig:
        """The config in force now (replaced whole on reload): only for the decisions
        the rule calls live (``balance``, ``backend_tls``)."""

    @property
    def settings(self) -> ConnectionSettings:
        """What a connection accepted now obeys (replaced whole on reload)."""

    @property
    def balancer(self) -> Balancer: ...

    @property
    def backend_ssl(self) -> ssl.SSLContext | None:
        """The backend TLS context in force now (``backend_tls`` is live)."""

    @property
    def http(self) -> PlainRequests: ...

    @property
    def metrics(self) -> RequestMetrics: ...

    @property
    def ready(self) -> bool:
        """Whether new connections are welcome (no proxy drain)."""

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *fn* (a dial, an auth check) as a task the process keeps and cancels."""

    def forwarding(
        self, client_ip: str, forwarded_for: str, request_id: str, identity: Identity | None
    ) -> Forwarding:
        """What a backend is told about the client (X-Forwarded-*, identity headers)."""

    def probe_answer(self, path: str) -> tuple[int, str]:
        """The (status, text) of a probe (``/healthz``, ``/readyz``) on the main listener."""



class ConnectionOwner(HttpRelayOwner, Protocol[ConnT]):
    """What a WebSocket connection (io.connection.Connection, the *ConnT*) asks of the
    process; a connection that turns out to carry plain HTTP hands it to its relay."""

    @property
    def registry(self) -> Registry[ConnT]: ...

    @property
    def deadlines(self) -> Deadlines:
        """The deadlines of the loop (wsproxy.io.deadlines), looked up once for all
        connections: none keeps them in a slot of its own, none calls deadlines_of()."""

    def new_conn_id(self) -> str: ...

    @property
    def handoff(self) -> Handoff | None:
        """This worker's way to its siblings (``workers: N`` without TLS), else None."""

    def close_reason(self, text: str, hint: bool) -> str:
        """*text* as a close reason, with a reconnect hint when *hint* (the
        connection's ``drain.reconnect_hint``)."""

    def hold_down(self, backend: BackendState) -> None:
        """*backend* announced a restart (1001/1012): no new upgrades for a while."""

    def ping_rtt(self, side: Side, rtt: float) -> None:
        """A heartbeat round trip on *side* took *rtt* seconds."""

    def refusal(self, conn: ConnT) -> Refusal | CloseRefusal | None:
        """Why this upgrade is answered with an error (or a close) before any backend
        is asked."""

    def drive(self, steps: Steps, coro: Coroutine[Any, Any, None]) -> None:
        """Run *coro* (a dial) on *steps* by hand, from its first step now; the process
        keeps it and cancels it as it does spawn()'s tasks (wsproxy.io.steps)."""

    def connection_started(self, conn: ConnT) -> None: ...

    def connection_opened(self, conn: ConnT) -> None: ...

    def connection_rejected(self, conn: ConnT) -> None: ...

    def connection_finished(self, conn: ConnT) -> None: ...

    def connection_moved(self, conn: ConnT) -> None:
        """*conn*'s client went to another worker (io.handoff), which counts it."""
