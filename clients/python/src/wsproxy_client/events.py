"""What the client reports: its events (one frozen dataclass each) and its exceptions.

The events are those of clients/js, with Python names: ``Opened``, ``Closed``,
``Reconnecting``, ``Terminated``, ``Dropped``, ``Failed``. Every close (failed connects
too) is a ``Closed``; a reconnect follows it (``Reconnecting``, with the wait) or the
end (``Terminated``, once). With ``resume=True``, ``SessionStarted`` or ``Resumed``
comes just before each ``Opened``, and ``ResumeFailed`` when a session is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .policy import Data


@dataclass(frozen=True, slots=True)
class Opened:
    """A connection opened, after the queued messages were sent on it."""

    #: The subprotocol the server chose (None when none; never the token's entry).
    subprotocol: str | None
    #: How many queued messages were sent, in order, just before this event.
    flushed: int


@dataclass(frozen=True, slots=True)
class Closed:
    """A connection ended, or a connect failed (``before_open``)."""

    #: The close code; 1006 when there was no close frame or the connect failed.
    code: int
    reason: str
    #: Whether a closing handshake took place.
    was_clean: bool
    #: The connection never opened: a failed connect or a refused upgrade.
    before_open: bool
    #: The HTTP status of a refused upgrade (503 from admission, 401, ...).
    status: int | None = None
    #: Set when a reconnect follows: the wait before it, in seconds.
    retry_in: float | None = None
    #: Whether the server's hint (``retry-after-ms``, ``Retry-After``) set the wait.
    hinted: bool = False
    #: True when this close ends the client for good.
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """A reconnect is scheduled (right after its ``Closed``)."""

    #: 1 for the first reconnect after a stable connection, then 2, 3, ...
    attempt: int
    #: The wait, in seconds.
    delay: float
    #: The wait is the server's hint (clamped to ``Backoff.max_hint``).
    hinted: bool
    #: The close was 1008 "token expired": the token hook is asked again.
    token_refresh: bool


@dataclass(frozen=True, slots=True)
class Terminated:
    """The client stopped for good (once)."""

    code: int
    reason: str
    #: True when the app's ``close()`` ended it.
    requested: bool


@dataclass(frozen=True, slots=True)
class Dropped:
    """``send`` refused a message (it also raised ``QueueFull`` or ``ClientClosed``)."""

    data: Data
    why: Literal["queue full", "closed"]


@dataclass(frozen=True, slots=True)
class Failed:
    """The token hook raised (counted as a failed connect), or the connect failed."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A fresh resumable session (``resume=True``): a new backend connection."""

    session_id: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """The connection dropped and the session went on: *resent* messages of ours
    sent again, the proxy replaying what we had missed."""

    resent: int


@dataclass(frozen=True, slots=True)
class ResumeFailed:
    """The session could not be resumed (*reason*, the proxy's or "window passed");
    a fresh one follows. *unacked*: our messages the old backend may not have had."""

    reason: str
    unacked: int


#: The events of a resumable session.
ResumeEvent = SessionStarted | Resumed | ResumeFailed

#: Every event the client reports.
Event = Opened | Closed | Reconnecting | Terminated | Dropped | Failed | ResumeEvent


class WsproxyClientError(Exception):
    """The base of the client's own exceptions."""


class ClientClosed(WsproxyClientError):
    """The client has ended (``close()``, or a close that was not to be retried)."""

    def __init__(self, code: int, reason: str, requested: bool) -> None:
        super().__init__(f"client ended: {code} {reason!r}"
                         + (" (close() called)" if requested else ""))
        self.code = code
        self.reason = reason
        self.requested = requested


class QueueFull(WsproxyClientError):
    """``send`` while not connected, and the message would cross a queue bound."""
