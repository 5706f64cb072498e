"""Listening sockets, bound the way the proxy means its ``host``.

asyncio's and uvloop's ``create_server`` (and anyio's listeners) set IPV6_V6ONLY on
every IPv6 socket, so ``host: "::"`` would serve IPv6 clients only. An operator who
writes ``::`` means every address (as nginx's ``[::]:80 ipv6only=off`` and most
servers do): one socket with IPV6_V6ONLY off takes both families, its IPv4 clients
showing up as ``::ffff:a.b.c.d`` (see io.connection.plain_ip).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from typing import Any, Final

#: Errors of socket(), accept() and connect() that mean "the proxy has no resources
#: right now", not "the peer failed" (trio's ACCEPT_CAPACITY_ERRNOS).
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def is_ipv6_wildcard(host: str) -> bool:
    """Whether *host* is ``::`` however it is spelled (``::0``, ``0:0:0:0:0:0:0:0``)."""
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def dual_stack_socket(host: str, port: int) -> socket.socket | None:
    """A bound, non-blocking socket serving IPv6 and IPv4 when *host* is ``::``, else
    None (the caller binds *host* as usual). The caller listens and owns it.

    Raises:
        OSError: the address cannot be bound (in use, no IPv6 on this machine).
    """
    if not is_ipv6_wildcard(host):
        return None
    return _bound(socket.AF_INET6, ("::", port), v6only=False)


async def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening, non-blocking sockets on *host*:*port*, as ``create_server`` binds
    them (one per address *host* resolves to), but ``::`` as one dual-stack socket.

    Raises:
        OSError: an address cannot be bound; none of the sockets is left open.
    """
    dual = dual_stack_socket(host, port)
    if dual is not None:
        sockets = [dual]
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets = []
        try:
            for family, _, _, _, address in dict.fromkeys(infos):
                sockets.append(_bound(family, address, v6only=True))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
    for sock in sockets:
        sock.listen(backlog)
    return sockets


def _bound(family: int, address: tuple[Any, ...], *, v6only: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.setblocking(False)
        try:
            sock.bind(address)
        except OSError as exc:  # the same words as create_server's
            raise OSError(exc.errno, f"error while attempting to bind on address "
                                     f"{address!r}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock
