"""wsproxy: a WebSocket reverse proxy that owns the connection lifecycle."""

__version__ = "0.1.0"
