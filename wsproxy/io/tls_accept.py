"""The TLS listener's driver: bounded, counted handshakes before a Connection.

With ``create_server(ssl=...)`` the event loop does the TLS handshake out of the
proxy's sight: the protocol's ``connection_made`` comes only once it is done, so a
client that opens TCP and never sends its ClientHello holds a socket (for the loop's
60 s default) without counting against any limit. Instead the proxy accepts on its
TLS sockets itself (``accept_tls``), and for each client

1. asks its owner for a slot in the connection limits under the peer's address; a
   connection over a limit is reset at once (nothing can be answered before TLS);
2. has the loop do the handshake on the accepted socket
   (``connect_accepted_socket``) within what is left of ``limits.handshake_timeout``;
3. gives the slot back however the handshake ended and, once TLS is up, hands the
   transport to the protocol its owner makes, whose request must be in by the same
   deadline: TLS and the request head together get ``handshake_timeout``.

Why not ``start_tls()`` on a plain-TCP protocol: uvloop starts reading a socket as
soon as its protocol's ``connection_made`` returns, so the ClientHello reaches the
plain protocol before any task could call ``start_tls()``, and the handshake stalls.
An accepted socket handed to ``connect_accepted_socket`` is read by the TLS layer
from its first byte, on both loops.

A handshake costs one small task besides the TLS work itself, which dominates it by
far (milliseconds of CPU); plain listeners do not use this module at all.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from wsproxy.core.handshake import plain_ip
from wsproxy.io.listen_socket import CAPACITY_ERRNOS

if TYPE_CHECKING:
    from wsproxy.io.ports import ConnectionSettings

#: How long accepting rests after running out of descriptors or memory.
ACCEPT_RETRY_DELAY: Final = 0.1
#: Accepts in a row before the loop gets a turn: a flood must not starve it.
ACCEPT_BURST: Final = 16
#: SO_LINGER on, zero seconds: close() resets the connection.
_RESET: Final = struct.pack("ii", 1, 0)

#: Ends a handshake's slot in the limits: called once, with the failure label
#: (a metrics label) or None when the handshake succeeded.
EndHandshake = Callable[[str | None], None]


class HandshakeOwner(Protocol):
    """What the TLS listener asks of the proxy it serves."""

    def admit_handshake(self, peer_ip: str) -> EndHandshake | None:
        """Count a TLS handshake from *peer_ip* in; None when it is over a limit (the
        owner has logged and counted the refusal)."""

    @property
    def settings(self) -> ConnectionSettings:
        """What a connection accepted now obeys (``limits.handshake_timeout``...)."""

    def tls_established(
        self, transport: asyncio.Transport, deadline: float, settings: ConnectionSettings
    ) -> None:
        """Attach the protocol that takes *transport* over, under the *settings* it
        was accepted with; the client's request must be in by *deadline* (on the
        loop's clock)."""

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *fn* as a task the owner keeps track of (and cancels when it stops)."""


async def accept_tls(
    listening: socket.socket, owner: HandshakeOwner, context: ssl.SSLContext
) -> None:
    """Accept TLS clients on *listening* until cancelled (the caller closes it).

    Each client is accepted under ``owner.settings`` as they are at its accept (a
    reload changes them for the clients accepted after it): its handshake timeout, and
    the Connection that takes it once TLS is up.
    """
    loop = asyncio.get_running_loop()
    in_a_row = 0
    while True:
        try:
            sock, address = await loop.sock_accept(listening)
        except ConnectionAbortedError:  # reset while it waited in the backlog
            continue
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            # Reported as the loop reports its own listeners' (rate-limited there).
            loop.call_exception_handler({"message": "accept failed", "exception": exc})
            await asyncio.sleep(ACCEPT_RETRY_DELAY)
            continue
        _start(sock, plain_ip(address[0]), owner, context, owner.settings, loop.time())
        in_a_row += 1
        if in_a_row >= ACCEPT_BURST:
            in_a_row = 0
            await asyncio.sleep(0)


def _start(
    sock: socket.socket, peer_ip: str, owner: HandshakeOwner, context: ssl.SSLContext,
    settings: ConnectionSettings, now: float,
) -> None:
    end = owner.admit_handshake(peer_ip)
    if end is None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.close()
        return
    deadline = now + settings.config.limits.handshake_timeout
    handshake = Handshake(owner, end, deadline, settings)
    owner.spawn(partial(handshake.run, sock, context))


def failure_label(exc: BaseException, *, timed_out: bool) -> str:
    """The metrics label of a handshake that did not complete."""
    if timed_out:
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls_handshake"  # not TLS, or nothing in common (versions, ciphers)
    return "client_gone"


class Handshake(asyncio.Protocol):
    """One client's TLS handshake: its slot in the limits, then the hand-over.

    It is the first application protocol of the TLS transport: the loop calls its
    ``connection_made`` once TLS is up, before any data, and it hands the transport
    over there, so that nothing the client sends next can reach it.
    """

    __slots__ = ("_deadline", "_end", "_owner", "_settings")

    def __init__(
        self, owner: HandshakeOwner, end: EndHandshake, deadline: float,
        settings: ConnectionSettings,
    ) -> None:
        self._owner = owner
        self._end: EndHandshake | None = end
        self._deadline = deadline
        self._settings = settings

    async def run(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        """Do the handshake on *sock* (the loop owns it from here, and closes it on
        failure); the slot is given back whatever happens."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: self, sock, ssl=context,
                ssl_handshake_timeout=max(self._deadline - loop.time(), 0.001),
            )
        except OSError as exc:  # ssl.SSLError, a reset, the handshake timeout
            self._ended(failure_label(exc, timed_out=loop.time() >= self._deadline))
        except BaseException:  # cancelled (the proxy stops), or a bug
            self._ended("client_gone")
            raise

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._ended(None)  # first: the Connection may be admitted at once
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._owner.tls_established(
            cast(asyncio.Transport, transport), self._deadline, self._settings
        )

    def _ended(self, failure: str | None) -> None:
        end, self._end = self._end, None
        if end is not None:
            end(failure)
