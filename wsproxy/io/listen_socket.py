"""Listening sockets that serve IPv4 and IPv6 when the host is ``::``.

asyncio's and uvloop's ``create_server`` (and anyio's listeners) set IPV6_V6ONLY on
every IPv6 socket, so ``host: "::"`` would serve IPv6 clients only. An operator who
writes ``::`` means every address (as nginx's ``[::]:80 ipv6only=off`` and most
servers do): one socket with IPV6_V6ONLY off takes both families, its IPv4 clients
showing up as ``::ffff:a.b.c.d`` (see io.connection.plain_ip).
"""

from __future__ import annotations

import ipaddress
import socket


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
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
