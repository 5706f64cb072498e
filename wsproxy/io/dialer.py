"""Opening the TCP (and TLS) transport to one backend: a link (wsproxy.io.links) for
a plain one at a numeric address where the process has links, else the loop's."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

from wsproxy.config import BackendConfig
from wsproxy.io.links import LinkEngine, dial_link
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
    engine: LinkEngine | None = None,
) -> asyncio.Transport:
    """Connect to *backend*, through *engine* if given and the backend is plain TCP at
    a numeric address; the caller bounds the time (limits.backend_timeout).

    Raises:
        OutOfDescriptors: the proxy's own trouble (EMFILE, ENFILE, ENOBUFS, ENOMEM).
        OSError: refused, unreachable, or a TLS failure (ssl.SSLError is an OSError).
    """
    use_tls = backend.scheme == "wss"
    try:
        if engine is not None and not use_tls:
            try:
                return await dial_link(engine, protocol_factory, backend.host, backend.port)
            except ValueError:  # a name, not an address: the loop resolves it
                pass
        transport, _ = await loop.create_connection(
            protocol_factory,
            backend.host,
            backend.port,
            ssl=(tls or ssl.create_default_context()) if use_tls else None,
            server_hostname=(server_name or backend.host) if use_tls else None,
        )
    except OSError as exc:
        # The proxy has no room for another socket: no backend is to blame, so none
        # is marked failed and no other is tried.
        if exc.errno in CAPACITY_ERRNOS:
            raise OutOfDescriptors(str(exc)) from exc
        raise
    return transport


def start_link(
    engine: LinkEngine, backend: BackendConfig, attempt: Any,
) -> asyncio.Transport | None:
    """A link's connect to *backend* started, with *attempt* as its protocol and told as
    a future would be (``done()``, ``set_result(link)``, ``set_exception(OSError)``:
    never from within this call): the link while it connects, or None when *backend*
    is no plain one at a numeric address (the caller dials with ``dial()``).

    Raises:
        OutOfDescriptors: the proxy's own trouble (EMFILE, ENFILE, ENOBUFS, ENOMEM).
        OSError: no socket of the address's family to be had.
    """
    if backend.scheme != "ws":
        return None
    try:
        link = engine.connect(backend.host, backend.port, attempt, attempt)
    except ValueError:  # a name, not an address: the loop resolves it
        return None
    except OSError as exc:
        if exc.errno in CAPACITY_ERRNOS:
            raise OutOfDescriptors(str(exc)) from exc
        raise
    return cast(asyncio.Transport, link)
