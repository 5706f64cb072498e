"""A reconnecting asyncio WebSocket client that honours wsproxy's closes (README.md).

``WsproxyClient`` is the client; ``policy`` holds its decisions without I/O (the hint
parser, the back-off, the reconnect rule, the send queue); ``resumption`` those of a
resumable session (``WsproxyClient(resume=True)``); ``events`` its events and
exceptions. ``resume.ResumableSession`` is the single-purpose form of ``resume=True``.
"""

from __future__ import annotations

from .client import EVENTS_KEPT, INBOX_KEPT, UNREAD_CONNECTIONS_KEPT, ClientState, WsproxyClient
from .events import (
    ClientClosed,
    Closed,
    Dropped,
    Event,
    Failed,
    Opened,
    QueueFull,
    Reconnecting,
    Resumed,
    ResumeEvent,
    ResumeFailed,
    SessionStarted,
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
from .resume import ResumableSession, SessionClosed
from .resumption import RESUME_FAILED, FramingError, Resumption, SessionInfo

__all__ = [
    "EVENTS_KEPT",
    "INBOX_KEPT",
    "RECONNECT_CODES",
    "RESUME_FAILED",
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
    "FramingError",
    "Opened",
    "QueueFull",
    "Reconnecting",
    "Reconnects",
    "ResumableSession",
    "ResumeEvent",
    "ResumeFailed",
    "Resumed",
    "Resumption",
    "SendQueue",
    "SessionClosed",
    "SessionInfo",
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
