"""SSL contexts for the listener (listen.tls) and for wss:// backends (backend_tls)."""

from __future__ import annotations

import ssl

from wsproxy.config import BackendTLSConfig, ListenTLS


def server_context(tls: ListenTLS) -> ssl.SSLContext:
    """The listener's context. Raises OSError/ssl.SSLError for unusable files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.certfile, tls.keyfile)
    # WebSocket is HTTP/1.1 only (RFC 8441 aside): say so in ALPN.
    context.set_alpn_protocols(["http/1.1"])
    return context


def backend_context(tls: BackendTLSConfig) -> ssl.SSLContext:
    """The context for wss:// backends: CA, verification and an optional client cert."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.certfile:
        context.load_cert_chain(tls.certfile, tls.keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context
