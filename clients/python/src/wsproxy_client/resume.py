"""``ResumableSession``: one session through wsproxy that survives a dropped connection.

The protocol is wsproxy's README "Resumable sessions" (the proxy needs
``resume: {enabled: true}``). The session opts in with ``?wsproxy_resume=1``; every
message the proxy sends starts with one byte: 0x00 before the backend's payload,
0x01 before a JSON control message (``session``, ``ack``, ``resumed``). When the
connection dies without a close frame, the session reconnects with
``?wsproxy_resume=<id>.<received>`` within the window the proxy announced, re-sends
what the proxy had not acked and goes on: every message once, in order, both ways.
A failed resume (close 4410, or the window gone) is reported as a ``ResumeFailed``
event, and the session starts afresh with a new backend connection; messages the
old one had not acked are dropped (the event says how many).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .policy import Data

#: The close code of a resume the proxy refused.
RESUME_FAILED: Final = 4410
_APP: Final = 0
_CONTROL: Final = 1


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A fresh session: a new backend connection."""

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


ResumeEvent = SessionStarted | Resumed | ResumeFailed


class SessionClosed(Exception):
    """The session ended with a close frame (*code*, *reason*): no resume follows."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"session closed: {code} {reason}")
        self.code = code
        self.reason = reason


def _url(url: str, value: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k != "wsproxy_resume"]
    query.append(("wsproxy_resume", value))
    return urlunsplit(parts._replace(query=urlencode(query)))


class ResumableSession:
    """``async with ResumableSession(url) as s``: ``send()``, ``recv()``, ``events``."""

    def __init__(
        self, url: str, *, on_event: Callable[[ResumeEvent], None] | None = None,
        retry_delay: float = 0.05,
        before_resume: Callable[[], Awaitable[None]] | None = None, **connect_kwargs: Any,
    ) -> None:
        """*retry_delay*: between two attempts to reconnect; *before_resume*: awaited
        before the first (the app may wait for the network to come back)."""
        self.url = url
        self.on_event = on_event
        self.events: list[ResumeEvent] = []
        self.retry_delay = retry_delay
        self.before_resume = before_resume
        self._connect_kwargs = connect_kwargs
        self.session_id: str | None = None
        self.window = 0.0
        #: Our messages the proxy has not acked: (number, message), numbered from 1.
        self._unacked: deque[tuple[int, Data]] = deque()
        self._sent = 0
        #: Backend messages received (delivered to the inbox).
        self.received = 0
        self._inbox: asyncio.Queue[Data | SessionClosed] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._opened = asyncio.Event()

    async def __aenter__(self) -> ResumableSession:
        self._task = asyncio.create_task(self._run())
        opened = asyncio.create_task(self._opened.wait())
        done, _ = await asyncio.wait({opened, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            opened.cancel()
            self._task.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connection(self) -> ClientConnection | None:
        """The connection of the moment (None while reconnecting)."""
        return self._ws

    def _emit(self, event: ResumeEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    async def send(self, message: Data) -> None:
        """Send *message*: at once if connected, else when the session is back."""
        async with self._send_lock:
            self._sent += 1
            self._unacked.append((self._sent, message))
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(message)

    async def recv(self) -> Data:
        """The next backend message. Raises SessionClosed once the session ended."""
        item = await self._inbox.get()
        if isinstance(item, SessionClosed):
            self._inbox.put_nowait(item)
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._closing = True
        ws = self._ws
        if ws is not None:
            await ws.close(code, reason)
        task = self._task
        if task is not None:
            if ws is None:
                task.cancel()  # reconnecting: nothing to close
            with contextlib.suppress(asyncio.CancelledError, SessionClosed, TimeoutError):
                await asyncio.wait_for(task, 10)
            if not task.cancelled() and task.done():
                task.result()
            self._inbox.put_nowait(SessionClosed(code, reason or "closed by the app"))

    # The loop…

    async def _run(self) -> None:
        ws = await self._fresh()
        while True:
            closed = await self._read(ws)
            if closed is not None:
                self._inbox.put_nowait(closed)
                return
            if self._closing:
                self._inbox.put_nowait(SessionClosed(1006, "closed"))
                return
            ws = await self._resume()

    async def _fresh(self) -> ClientConnection:
        """A new session (the first, or after a failed resume)."""
        while True:
            try:
                ws = await connect(_url(self.url, "1"), **self._connect_kwargs)
            except (OSError, InvalidHandshake):
                await asyncio.sleep(self.retry_delay)
                continue
            try:
                control = await self._control(ws)
            except ConnectionClosed:
                await asyncio.sleep(self.retry_delay)
                continue
            if control.get("type") != "session":
                raise RuntimeError(f"unexpected control message {control}")
            async with self._send_lock:
                self.session_id = str(control["id"])
                self.window = float(control["window"])
                self.received = 0
                # What was sent meanwhile belongs to this session: numbered from 1.
                queued = [message for _, message in self._unacked]
                self._unacked = deque(enumerate(queued, 1))
                self._sent = len(queued)
                with contextlib.suppress(ConnectionClosed):
                    for message in queued:
                        await ws.send(message)
                self._ws = ws
            self._emit(SessionStarted(self.session_id))
            self._opened.set()
            return ws

    async def _control(self, ws: ClientConnection) -> dict[str, Any]:
        message = await ws.recv()
        raw = message.encode() if isinstance(message, str) else message
        if raw[:1] != b"\x01":
            raise RuntimeError("the proxy did not speak the resume protocol")
        result: dict[str, Any] = json.loads(raw[1:])
        return result

    async def _read(self, ws: ClientConnection) -> SessionClosed | None:
        """Read until the connection ends: a SessionClosed if by a close frame."""
        try:
            async for message in ws:
                self._take(message)
        except ConnectionClosed:
            pass
        self._ws = None
        rcvd = ws.protocol.close_rcvd
        if rcvd is not None:
            return SessionClosed(rcvd.code, rcvd.reason)
        return None

    def _take(self, message: Data) -> None:
        kind = message[0] if isinstance(message, bytes) else ord(message[0])
        if kind == _APP:
            self.received += 1
            self._inbox.put_nowait(message[1:])
        elif kind == _CONTROL:
            raw = message[1:].encode() if isinstance(message, str) else message[1:]
            control = json.loads(raw)
            if control.get("type") == "ack":
                self._acked(int(control["n"]))

    def _acked(self, n: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0][0] <= n:
            unacked.popleft()

    async def _resume(self) -> ClientConnection:
        """Reconnect within the window; a fresh session if that fails."""
        deadline = time.monotonic() + self.window
        if self.before_resume is not None:
            await self.before_resume()
        reason = "window passed"
        while time.monotonic() < deadline:
            try:
                ws = await connect(_url(self.url, f"{self.session_id}.{self.received}"),
                                   **self._connect_kwargs)
            except (OSError, InvalidHandshake):
                await asyncio.sleep(self.retry_delay)
                continue
            try:
                control = await self._control(ws)
            except ConnectionClosed:
                rcvd = ws.protocol.close_rcvd
                if rcvd is not None and rcvd.code == RESUME_FAILED:
                    reason = rcvd.reason.removeprefix("resume failed: ")
                    break
                await asyncio.sleep(self.retry_delay)
                continue
            if control.get("type") != "resumed":
                raise RuntimeError(f"unexpected control message {control}")
            async with self._send_lock:
                self._acked(int(control["acked"]))
                pending = [m for _, m in self._unacked]
                try:
                    for message in pending:
                        await ws.send(message)
                except ConnectionClosed:
                    pass
                self._ws = ws
            self._emit(Resumed(len(pending)))
            return ws
        async with self._send_lock:
            unacked = len(self._unacked)
            self._unacked.clear()  # the old backend may or may not have had them
        self._emit(ResumeFailed(reason, unacked))
        return await self._fresh()
