"""Opening the TCP (and TLS) transport to one backend."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from wsproxy.config import BackendConfig


async def dial(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    backend: BackendConfig,
    tls: ssl.SSLContext | None,
    server_name: str | None = None,
) -> asyncio.Transport:
    """Connect to *backend*; the caller bounds the time (limits.backend_timeout).

    Raises:
        OSError: refused, unreachable, or a TLS failure (ssl.SSLError is an OSError).
    """
    use_tls = backend.scheme == "wss"
    transport, _ = await loop.create_connection(
        protocol_factory,
        backend.host,
        backend.port,
        ssl=(tls or ssl.create_default_context()) if use_tls else None,
        server_hostname=(server_name or backend.host) if use_tls else None,
    )
    return transport
