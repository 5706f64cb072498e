"""``ResumableSession``: one session through wsproxy that survives a dropped connection,
and ends at the first real close.

The single-purpose form of ``WsproxyClient(resume=True)`` (README.md), kept for the
code written against it: the same protocol, by the same code (``resumption`` decides,
``WsproxyClient`` connects), with these differences. Any close frame ends the session
for good (``recv()`` raises ``SessionClosed``), where ``WsproxyClient`` reconnects after
a drain's 1001/1012 and its hint; a connect that fails before a session has started is
retried after *retry_delay*, as a resume attempt is; sends are never refused (no queue
bound); ``on_event`` and ``events`` see only the session's events (``SessionStarted``,
``Resumed``, ``ResumeFailed``); keyword arguments other than its own go to
``websockets``' ``connect()``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

from websockets.asyncio.client import ClientConnection

from .client import WsproxyClient
from .events import (
    ClientClosed,
    Closed,
    Event,
    Opened,
    Resumed,
    ResumeEvent,
    ResumeFailed,
    SessionStarted,
)
from .policy import Backoff, Data
from .resumption import RESUME_FAILED

__all__ = [
    "RESUME_FAILED",
    "ResumableSession",
    "ResumeEvent",
    "ResumeFailed",
    "Resumed",
    "SessionClosed",
    "SessionStarted",
]

#: The ``connect()`` arguments that ``WsproxyClient`` takes as its own.
_OWN: Final = {"additional_headers": "headers", "subprotocols": "subprotocols",
               "open_timeout": "open_timeout"}


class SessionClosed(Exception):
    """The session ended with a close frame (*code*, *reason*): no resume follows."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"session closed: {code} {reason}")
        self.code = code
        self.reason = reason


class ResumableSession:
    """``async with ResumableSession(url) as s``: ``send()``, ``recv()``, ``events``."""

    def __init__(
        self, url: str, *, on_event: Callable[[ResumeEvent], None] | None = None,
        retry_delay: float = 0.05,
        before_resume: Callable[[], Awaitable[None]] | None = None, **connect_kwargs: Any,
    ) -> None:
        """*retry_delay*: the most between two attempts to connect or resume (full
        jitter below it); *before_resume*: awaited before the first attempt to resume
        (the app may wait for the network to come back)."""
        self.on_event = on_event
        self.events: list[ResumeEvent] = []
        own = {_OWN[key]: connect_kwargs.pop(key) for key in list(connect_kwargs)
               if key in _OWN}
        self._client = WsproxyClient(
            url, on_event=self._on_event, resume=True, before_resume=before_resume,
            backoff=Backoff(base=retry_delay, max=retry_delay, max_hint=retry_delay),
            should_reconnect=self._should_reconnect,
            max_queued_messages=sys.maxsize, max_queued_bytes=sys.maxsize,
            connect_kwargs=connect_kwargs, **own)
        #: Whether the connection of the moment opened (set by the client's events).
        self._open = False

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Opened | Closed):
            self._open = isinstance(event, Opened)
        if isinstance(event, SessionStarted | Resumed | ResumeFailed):
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)

    def _should_reconnect(self, code: int, reason: str, attempt: int) -> bool:
        """Asked (before its ``Closed`` event) of a close that does not resume: a
        connect that failed before a session opened is retried; a real close of an open
        session is the end."""
        del code, reason, attempt
        return not self._open

    async def __aenter__(self) -> ResumableSession:
        self._client.start()
        await self._client.wait_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The URL of the next connect (an app may change it, say with a new token)."""
        return self._client.url

    @url.setter
    def url(self, value: str) -> None:
        self._client.url = value

    @property
    def connection(self) -> ClientConnection | None:
        """The connection of the moment (None while reconnecting)."""
        return self._client.connection

    @property
    def session_id(self) -> str | None:
        session = self._client.session
        return session.id if session is not None else None

    @property
    def window(self) -> float:
        session = self._client.session
        return session.window if session is not None else 0.0

    @property
    def received(self) -> int:
        """Backend messages received in this session."""
        session = self._client.session
        return session.received if session is not None else 0

    async def send(self, message: Data) -> None:
        """Send *message*: at once if connected, else when the session is back."""
        try:
            await self._client.send(message)
        except ClientClosed as exc:
            raise SessionClosed(exc.code, exc.reason) from None

    async def recv(self) -> Data:
        """The next backend message. Raises SessionClosed once the session ended."""
        try:
            return await self._client.recv()
        except ClientClosed as exc:
            reason = exc.reason or ("closed by the app" if exc.requested else "")
            raise SessionClosed(exc.code, reason) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._client.close(code, reason)
