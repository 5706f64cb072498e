"""Opening the TCP (and TLS) transport to one backend.

A caller with bytes to send first (an upgrade's request head: ``first``) has them go
with the connection where the backend is plain TCP at a literal address: the socket
is made and connect() called here, and the bytes are sent straight after it, before
the loop's transport exists (``_dial_sending``). On loopback, connect() returns with
the handshake done (the backend's SYN-ACK is processed as the call ends, though it
says EINPROGRESS), so the head arrives with the connection and the backend's
listener is woken once, for both, instead of once for the connection and again, a
loop pass later, for the head (the loop's own connect waits for writability first).
A connection still on its way (a backend further away) is waited for as the loop's
own connect would, and the bytes go through the transport then. The socket, connect()
and send() are ``dial_send``: in C (``_scan.dial_send``) where the speedups are built,
keeping the GIL through the three calls, else ``py_dial_send``, its twin.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Final, NoReturn

from wsproxy.config import BackendConfig
from wsproxy.core.scan import SPEEDUPS
from wsproxy.io.listen_socket import CAPACITY_ERRNOS


class OutOfDescriptors(Exception):
    """The proxy could not open a socket: out of file descriptors (or socket memory).

    Deliberately not an OSError, so that no handler of backend failures takes it for one.
    """


async def dial(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    backend: BackendConfig,
    tls: ssl.SSLContext | None,
    server_name: str | None = None,
    first: Callable[[], bytes] | None = None,
) -> asyncio.Transport:
    """Connect to *backend*; the caller bounds the time (limits.backend_timeout).
    *first*: called once the connection is made or under way, before the transport
    exists, for bytes to send on it at once (see the module doc); where it is not
    called (TLS, a host name), the caller writes its bytes itself.

    Raises:
        OutOfDescriptors: the proxy's own trouble (EMFILE, ENFILE, ENOBUFS, ENOMEM).
        OSError: refused, unreachable, or a TLS failure (ssl.SSLError is an OSError).
    """
    use_tls = backend.scheme == "wss"
    if first is not None and not use_tls:
        family = _literal_family(backend.host)
        if family:
            return await _dial_sending(loop, protocol_factory, family,
                                       (backend.host, backend.port), first)
    try:
        transport, _ = await loop.create_connection(
            protocol_factory,
            backend.host,
            backend.port,
            ssl=(tls or ssl.create_default_context()) if use_tls else None,
            server_hostname=(server_name or backend.host) if use_tls else None,
        )
    except OSError as exc:
        _raise_failed(exc)
    return transport


async def _dial_sending(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    family: int,
    address: tuple[str, int],
    first: Callable[[], bytes],
) -> asyncio.Transport:
    """dial() for a plain backend at a literal *address*, *first*'s bytes sent with the
    connection where it is made at once (the module doc)."""
    # The bytes first: made between connect() and send(), they would give the backend
    # the time to accept and wait for them, woken a second time all the same.
    data = first()
    try:
        fd, sent = dial_send(family, address[0], address[1], data)
    except OSError as exc:  # refused (ECONNREFUSED from send: connect() had said EINPROGRESS)
        _raise_failed(exc)
    try:
        sock = _Socket(family, socket.SOCK_STREAM, 0, fd)
    except BaseException:
        os.close(fd)
        raise
    try:
        if data and not sent:  # still connecting: wait as the loop's connect would
            socket.socket.setblocking(sock, False)
            await loop.sock_connect(sock, address)
        transport, _ = await loop.create_connection(protocol_factory, sock=sock)
    except OSError as exc:
        sock.close()
        _raise_failed(exc)
    except BaseException:
        sock.close()  # (detached already if the transport took it: nothing closed twice)
        raise
    if sent < len(data):
        transport.write(data[sent:])
    return transport


def py_dial_send(family: int, host: str, port: int, data: bytes) -> tuple[int, int]:
    """A TCP socket (non-blocking) to the literal address *host*:*port*, connect()
    called and *data* sent right after it: its descriptor and how much was sent (0 when
    the connection is still under way; on loopback it is made by the time connect()
    returns, though it says EINPROGRESS). OSError for a failure of either call (a
    refusal on loopback comes from the send), the socket closed; ValueError if *host*
    is not a literal address of *family*. ``_scan.dial_send`` is its C twin, which
    keeps the GIL through the calls (this one releases it at each: the log writer
    thread may take it three times a dial)."""
    try:
        socket.inet_pton(family, host)
    except OSError:
        raise ValueError(f"not a literal address of family {family}: {host}") from None
    sock = socket.socket(family, _STREAM)
    try:
        err = sock.connect_ex((host, port))  # (no exception made for EINPROGRESS)
        if err and err != errno.EINPROGRESS:
            raise OSError(err, os.strerror(err))
        sent = 0
        if data:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
    except BaseException:
        sock.close()
        raise
    return sock.detach(), sent


class _Socket(socket.socket):
    """The socket of a descriptor made by dial_send, as the loop takes it on: already
    non-blocking (``setblocking(False)`` would only cost an ioctl and a release of the
    GIL), its ``family`` and ``type`` the plain numbers (``_socket``'s), not
    socket.socket's enum members (~12k instructions a dial, callgrind)."""

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]

    def setblocking(self, flag: bool) -> None:
        if flag:
            super().setblocking(flag)


_STREAM: Final = socket.SOCK_STREAM | socket.SOCK_NONBLOCK


def _pick() -> Callable[[int, str, int, bytes], tuple[int, int]]:
    if SPEEDUPS != "c":
        return py_dial_send
    from wsproxy.core import _scan

    return _scan.dial_send


#: py_dial_send or its C twin.
dial_send: Final = _pick()


def _raise_failed(exc: OSError) -> NoReturn:
    """Raise *exc*, or OutOfDescriptors for it if the proxy has no room for another
    socket: no backend is to blame, so none is marked failed and no other is tried."""
    if exc.errno in CAPACITY_ERRNOS:
        raise OutOfDescriptors(str(exc)) from exc
    raise exc


#: Each backend host seen: its address family if it is a literal IPv4 or IPv6 address,
#: else 0 (a name, resolved by the loop's connect).
_families: dict[str, int] = {}


def _literal_family(host: str) -> int:
    family = _families.get(host)
    if family is None:
        family = 0
        for candidate in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(candidate, host)
            except (OSError, ValueError):
                continue
            family = candidate
            break
        if len(_families) < 4096:  # (discovered backends come and go: bounded)
            _families[host] = family
    return family
