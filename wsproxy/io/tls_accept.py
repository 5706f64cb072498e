"""The TLS listener's driver: bounded, counted handshakes before a Connection.

With ``create_server(ssl=...)`` the event loop does the TLS handshake out of the
proxy's sight: the protocol's ``connection_made`` comes only once it is done, so a
client that opens TCP and never sends its ClientHello holds a socket (for the loop's
60 s default) without counting against any limit. Instead the listener accepts plain
TCP with a ``TlsAcceptor``, which

1. asks its owner for a slot in the connection limits under the peer's address; a
   connection over a limit is closed at once (nothing can be answered before TLS);
2. runs ``loop.start_tls()`` with what is left of ``limits.handshake_timeout``;
3. gives the slot back however the handshake ended, and on success hands the TLS
   transport to the protocol its owner makes, whose request must be in by the same
   deadline: TLS and the request head together get ``handshake_timeout``.

A handshake costs one small task besides the TLS work itself, which dominates it by
far (milliseconds of CPU); plain listeners do not use this module at all.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from wsproxy.io.connection import plain_ip

#: Ends a handshake's slot in the limits: called once, with the failure label
#: (a metrics label) or None when the handshake succeeded.
EndHandshake = Callable[[str | None], None]


class HandshakeOwner(Protocol):
    """What a TlsAcceptor asks of the proxy it serves."""

    def admit_handshake(self, peer_ip: str) -> EndHandshake | None:
        """Count a TLS handshake from *peer_ip* in; None when it is over a limit (the
        owner has logged and counted the refusal)."""

    def tls_established(self, transport: asyncio.Transport, deadline: float) -> asyncio.Protocol:
        """The protocol that takes over *transport*, already attached to it; the
        client's request must be in by *deadline* (on the loop's clock)."""

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *fn* as a task the owner keeps track of (and cancels when it stops)."""


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The peer's IP address as the limits count it (see plain_ip)."""
    peer = transport.get_extra_info("peername")
    return plain_ip(peer[0]) if peer else "unknown"


def failure_label(exc: BaseException, timed_out: bool) -> str:
    """The metrics label of a handshake that did not complete."""
    if timed_out:
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls_handshake"  # not TLS, or nothing we share (versions, ciphers)
    return "client_gone"


class TlsAcceptor(asyncio.Protocol):
    """The TLS listener's protocol: one per accepted TCP connection, until TLS is up.

    During start_tls() it is also the application protocol of the TLS transport:
    what the client sends right after its Finished can be decrypted in the same read
    as the handshake's end, before the handshake's task has resumed, and a loss can
    be reported by a callback scheduled then. Until the hand-over those are kept
    here (at most one read's worth of data), then replayed to the protocol that took
    over; after it, they are passed on.
    """

    __slots__ = ("_context", "_deadline", "_eof", "_lost", "_next", "_owner", "_received",
                 "_timeout")

    def __init__(self, owner: HandshakeOwner, context: ssl.SSLContext, timeout: float) -> None:
        self._owner = owner
        self._context = context
        self._timeout = timeout
        self._deadline = 0.0
        #: The protocol that took the connection over, once TLS is up.
        self._next: asyncio.Protocol | None = None
        self._received: list[bytes] = []
        self._eof = False
        #: connection_lost() came before the hand-over: (its exception,).
        self._lost: tuple[Exception | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        tcp = cast(asyncio.Transport, transport)
        end = self._owner.admit_handshake(peer_address(tcp))
        if end is None:
            tcp.abort()
            return
        self._deadline = asyncio.get_running_loop().time() + self._timeout
        self._owner.spawn(lambda: self._handshake(tcp, end))

    async def _handshake(self, tcp: asyncio.Transport, end: EndHandshake) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                tcp, self, self._context, server_side=True,
                ssl_handshake_timeout=max(self._deadline - loop.time(), 0.001),
            )
        except OSError as exc:  # ssl.SSLError, a reset, the handshake timeout
            tcp.abort()
            end(failure_label(exc, timed_out=loop.time() >= self._deadline))
            return
        except BaseException:  # cancelled (the proxy stops), or a bug: the slot goes back
            tcp.abort()
            end("client_gone")
            raise
        end(None if transport is not None else "client_gone")
        if transport is not None:
            self._hand_over(transport)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        protocol = self._next = self._owner.tls_established(transport, self._deadline)
        if self._received:
            protocol.data_received(b"".join(self._received))
            self._received.clear()
        if self._eof:
            protocol.eof_received()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])

    # The TLS transport's callbacks that reach the acceptor…

    def data_received(self, data: bytes) -> None:
        if self._next is not None:
            self._next.data_received(data)
        else:
            self._received.append(data)

    def eof_received(self) -> bool:
        if self._next is not None:
            return bool(self._next.eof_received())
        self._eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._next is not None:
            self._next.connection_lost(exc)
        else:
            self._lost = (exc,)
