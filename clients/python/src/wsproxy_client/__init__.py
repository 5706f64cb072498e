"""A reconnecting asyncio WebSocket client that honours wsproxy's closes (README.md).

``WsproxyClient`` is the client; ``policy`` holds its decisions without I/O (the hint
parser, the back-off, the reconnect rule, the send queue); ``events`` its events and
exceptions.
"""

from __future__ import annotations

from .client import EVENTS_KEPT, UNREAD_CONNECTIONS_KEPT, ClientState, WsproxyClient
from .events import (
    ClientClosed,
    Closed,
    Dropped,
    Event,
    Failed,
    Opened,
    QueueFull,
    Reconnecting,
    Terminated,
    WsproxyClientError,
)
from .policy import (
    RECONNECT_CODES,
    Action,
    Backoff,
    Close,
    Data,
    Decision,
    Reconnects,
    SendQueue,
    backoff_delay,
    default_rule,
    parse_retry_after,
    parse_retry_hint,
)
from .resume import (
    ResumableSession,
    Resumed,
    ResumeEvent,
    ResumeFailed,
    SessionClosed,
    SessionStarted,
)

__all__ = [
    "EVENTS_KEPT",
    "RECONNECT_CODES",
    "UNREAD_CONNECTIONS_KEPT",
    "Action",
    "Backoff",
    "ClientClosed",
    "ClientState",
    "Close",
    "Closed",
    "Data",
    "Decision",
    "Dropped",
    "Event",
    "Failed",
    "Opened",
    "QueueFull",
    "Reconnecting",
    "Reconnects",
    "ResumableSession",
    "ResumeEvent",
    "ResumeFailed",
    "Resumed",
    "SendQueue",
    "SessionClosed",
    "SessionStarted",
    "Terminated",
    "WsproxyClient",
    "WsproxyClientError",
    "backoff_delay",
    "default_rule",
    "parse_retry_after",
    "parse_retry_hint",
]

__version__ = "0.1.0"
