"""``WsproxyClient``: the reconnecting client, on ``websockets``' asyncio connection.

One task per client (started by ``start()`` or ``async with``) runs the loop: ask the
token hook, connect, send what was queued, wait for the close, ask ``policy`` what
next, wait, and again, until the policy says stop or the app calls ``close()``. The app
reads messages with ``async for`` / ``recv()`` (from each connection in turn, to its
end, so nothing a connection delivered is skipped), sends with ``send()`` (queued
while not connected), and follows the lifecycle through ``on_event`` or ``events()``.

With ``resume=True`` the client speaks wsproxy's resumable sessions (README.md
"Resumable sessions"; ``resumption`` holds the decisions): the loop reads each
connection itself, takes the proxy's framing and acks off, and keeps the backend's
payloads in an inbox for ``recv()``; a drop without a close frame resumes the session
instead of asking ``policy``, and a real close goes to ``policy`` as without resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from enum import Enum
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

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
    ResumeFailed,
    SessionStarted,
    Terminated,
)
from .policy import (
    Backoff,
    Close,
    Data,
    Reconnects,
    SendQueue,
    ShouldReconnect,
    parse_retry_after,
)
from .resumption import RESUME_PARAM, FramingError, Resumption, SessionInfo, Step, Verdict

log = logging.getLogger("wsproxy_client")

#: How the token travels: ``header`` (``Authorization: Bearer``), ``header:NAME``
#: (the bare token in header NAME), ``query:NAME``, ``subprotocol`` (offered as
#: ``bearer.<token>``), ``subprotocol:PREFIX``.
_TOKEN_IN: Final = re.compile(
    r"header(?::[!#$%&'*+.^_`|~0-9A-Za-z-]+)?|query:.+|subprotocol(?::.+)?")
#: Events kept for an ``events()`` reader that has fallen behind (oldest dropped).
EVENTS_KEPT: Final = 1000
#: Connections whose messages ``recv()`` has yet to reach; past this many (an app that
#: does not read, over many reconnects) the oldest is forgotten with what it held.
UNREAD_CONNECTIONS_KEPT: Final = 8
#: With ``resume``: backend messages the loop reads ahead of ``recv()``; past this many
#: it stops reading, so that ``websockets``' flow control holds the backend back.
INBOX_KEPT: Final = 64


class ClientState(Enum):
    """Where the client is (the values are those of clients/js's ``readyState``)."""

    #: Connecting, or waiting to reconnect: ``send`` queues.
    CONNECTING = 0
    #: A connection is open: ``send`` sends.
    OPEN = 1
    #: ``close()`` was called and the connection is closing.
    CLOSING = 2
    #: Ended for good.
    CLOSED = 3


class WsproxyClient:
    """A WebSocket client that reconnects as wsproxy's closes ask (see README.md).

    Use it as ``async with WsproxyClient(url, ...) as client:``; leaving the block
    calls ``close()``. Or call ``start()`` and ``close()`` yourself.

    Args:
        url: ``ws://`` or ``wss://``; never contains the token (see *token_in*).
        token: ``async () -> str | None``, awaited before every connect and reconnect;
            ``None`` or ``""`` connects without a token.
        token_in: how the token travels: ``"header"`` (``Authorization: Bearer``),
            ``"header:NAME"``, ``"query:NAME"``, ``"subprotocol"`` (``bearer.<token>``)
            or ``"subprotocol:PREFIX"``.
        subprotocols: the app's subprotocols, offered on every connect.
        headers: extra headers sent on every connect.
        backoff: the bounds of the waits (``policy.Backoff``).
        should_reconnect: ``(code, reason, attempt) -> bool | None``, asked first
            after every close: True reconnects, False stops, None leaves it to the rule.
        max_queued_messages, max_queued_bytes: the bounds of the send queue.
        on_event: called with every event, synchronously, in order.
        open_timeout: bound on one connect and its handshake, in seconds.
        connect_kwargs: more keyword arguments for ``websockets.asyncio.client.connect``
            (``ssl``, ``max_size``, ``ping_interval``, ...).
        random: the source of the back-off's jitter, ``() -> float`` in [0, 1).
        resume: speak wsproxy's resumable sessions (the proxy needs
            ``resume: {enabled: true}``): a drop without a close frame resumes the
            session within the proxy's window; a real close follows the rules above.
        before_resume: with *resume*, awaited after a drop before the first attempt to
            resume (the app may wait for the network to come back).
    """

    def __init__(
        self,
        url: str,
        *,
        token: Callable[[], Awaitable[str | None]] | None = None,
        token_in: str = "header",
        subprotocols: Sequence[str] = (),
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        backoff: Backoff | None = None,
        should_reconnect: ShouldReconnect | None = None,
        max_queued_messages: int = 1000,
        max_queued_bytes: int = 1 << 20,
        on_event: Callable[[Event], object] | None = None,
        open_timeout: float | None = 10.0,
        connect_kwargs: Mapping[str, Any] | None = None,
        random: Callable[[], float] = _random.random,
        resume: bool = False,
        before_resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        parse_uri(url)  # a bad URL is the caller's error, now, not a retried connect
        if not _TOKEN_IN.fullmatch(token_in):
            raise ValueError(f"token_in: expected header, header:NAME, query:NAME, "
                             f"subprotocol or subprotocol:PREFIX, got {token_in!r}")
        clash = {"additional_headers", "subprotocols", "open_timeout"} & set(connect_kwargs or {})
        if clash:
            raise ValueError(f"connect_kwargs: {', '.join(sorted(clash))} are arguments "
                             f"of WsproxyClient itself")
        self.url = url
        self._token = token
        self._token_in = token_in
        self._subprotocols = list(subprotocols)
        items = headers.items() if isinstance(headers, Mapping) else headers
        self._headers = list(items)
        self._on_event = on_event
        self._open_timeout = open_timeout
        self._connect_kwargs = dict(connect_kwargs or {})
        self._queue = SendQueue(max_queued_messages, max_queued_bytes)
        self._should_reconnect = should_reconnect
        self._reconnects = Reconnects(
            backoff or Backoff(), has_token_hook=token is not None,
            should_reconnect=self._ask_app if should_reconnect is not None else None,
            random=random)
        self._session = Resumption(backoff or Backoff(), random) if resume else None
        self._before_resume = before_resume
        #: With resume: what a ``resumed`` asks to send again, for ``_serve``.
        self._resend: list[Data] | None = None
        #: With resume: the backend's payloads read by the loop, for recv().
        self._inbox: deque[Data] = deque()
        self._state = ClientState.CONNECTING
        self._task: asyncio.Task[None] | None = None
        #: The open connection (or the one that just closed), for send() and close().
        self._connection: ClientConnection | None = None
        #: The connection recv() reads from, then the opened ones it has yet to read.
        self._reading: ClientConnection | None = None
        self._unread: deque[ClientConnection] = deque(maxlen=UNREAD_CONNECTIONS_KEPT)
        self._token_entry: str | None = None
        self._subscribers: list[deque[Event]] = []
        self._changed = asyncio.Event()
        #: Set once: how the client ended.
        self.terminated: Terminated | None = None

    # Properties …

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def connection(self) -> ClientConnection | None:
        """The current ``websockets`` connection, None between connections."""
        return self._connection if self._state is ClientState.OPEN else None

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose on the current connection (never the token)."""
        ws = self.connection
        if ws is None or ws.subprotocol == self._token_entry:
            return None
        return ws.subprotocol

    @property
    def session(self) -> SessionInfo | None:
        """With ``resume``: the session of the moment (``id`` None between sessions);
        None without ``resume``."""
        return self._session.info() if self._session is not None else None

    @property
    def queued(self) -> tuple[int, int]:
        """Messages and bytes held for the next connection."""
        return len(self._queue), self._queue.bytes

    # Starting and ending …

    def start(self) -> None:
        """Start connecting (in the running event loop); idempotent."""
        if self._task is None and self.terminated is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """End the client for good: no reconnect, the queue discarded, the connection
        (if any) closed with *code* and *reason*. Idempotent."""
        if self.terminated is not None:
            return
        if self._state is ClientState.CLOSING:  # another close() is under way
            while self.terminated is None:
                await self._changed.wait()
            return
        self._state = ClientState.CLOSING
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ws, self._connection = self._connection, None
        if self.terminated is not None:  # the loop ended on its own meanwhile
            return
        if ws is not None and ws.protocol.state is not State.CLOSED:
            await ws.close(code, reason)
            self._emit(Closed(code, reason, was_clean=ws.protocol.close_rcvd is not None,
                              before_open=False, terminal=True))
        self._reading = None
        self._unread.clear()
        self._inbox.clear()
        self._end(code, reason, requested=True)

    # Sending …

    async def send(self, message: Data) -> None:
        """Send *message* now when open, else queue it for the next connection.

        Raises:
            QueueFull: not connected, and the message would cross a queue bound (the
                queued messages are kept; this one is not).
            ClientClosed: the client has ended.
            TypeError: *message* is neither str nor bytes.
        """
        if not isinstance(message, str | bytes):
            raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
        if self.terminated is not None or self._state is ClientState.CLOSING:
            self._emit(Dropped(message, "closed"))
            raise self._closed_error()
        ws = self._connection
        if self._state is ClientState.OPEN and ws is not None and ws.protocol.state is State.OPEN:
            # Handed to the socket: if it closes now, the message is not sent again
            # (whether the server got it is unknown; resending could deliver it twice),
            # unless a resumable session keeps it until the proxy acks it.
            if self._session is not None:
                self._session.sending(message)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(message)
            return
        if not self._queue.push(message):
            self._emit(Dropped(message, "queue full"))
            raise QueueFull(f"{len(self._queue)} messages, {self._queue.bytes} bytes queued")

    # Receiving …

    async def recv(self) -> Data:
        """The next message, from whichever connection; waits through reconnects.

        Raises:
            ClientClosed: the client has ended and every message was read.
        """
        if self._session is not None:
            return await self._recv_inbox()
        while True:
            ws = self._reading
            if ws is None:
                if self._unread:
                    self._reading = self._unread.popleft()
                    continue
                if self.terminated is not None:
                    raise self._closed_error()
                await self._changed.wait()
                continue
            try:
                return await ws.recv()
            except ConnectionClosed:
                self._reading = None

    async def _recv_inbox(self) -> Data:
        while not self._inbox:
            if self.terminated is not None:
                raise self._closed_error()
            await self._changed.wait()
        message = self._inbox.popleft()
        if len(self._inbox) == INBOX_KEPT - 1:  # room again: the loop may read on
            self._notify()
        return message

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Data:
        """The next message; the iteration ends when the app closed the client or the
        server closed it with 1000, and raises ``ClientClosed`` for any other end."""
        try:
            return await self.recv()
        except ClientClosed as exc:
            if exc.requested or exc.code == 1000:
                raise StopAsyncIteration from None
            raise

    async def wait_open(self) -> None:
        """Until a connection is open. Raises ``ClientClosed`` if the client ends first."""
        while self._state is not ClientState.OPEN:
            if self.terminated is not None:
                raise self._closed_error()
            await self._changed.wait()

    # Events …

    def events(self) -> AsyncIterator[Event]:
        """The events from now on; the iteration ends after ``Terminated``.

        A reader that falls behind by more than ``EVENTS_KEPT`` events loses the oldest.
        """
        kept: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._subscribers.append(kept)
        return self._follow(kept)

    async def _follow(self, kept: deque[Event]) -> AsyncIterator[Event]:
        try:
            while True:
                while kept:
                    event = kept.popleft()
                    yield event
                    if isinstance(event, Terminated):
                        return
                if self.terminated is not None:
                    return
                await self._changed.wait()
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(kept)

    def _emit(self, event: Event) -> None:
        log.debug("wsproxy_client.event %r", event)
        for kept in self._subscribers:
            kept.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the app's callback must not stop the client's loop
                log.exception("wsproxy_client: on_event raised")
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # The loop …

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception as exc:  # a bug: end the client rather than leave readers waiting
            log.exception("wsproxy_client: the client's loop failed")
            self._emit(Failed(exc))
            self._end(1006, "client failed", requested=False)

    def _ask_app(self, code: int, reason: str, attempt: int) -> bool | None:
        assert self._should_reconnect is not None
        try:
            return self._should_reconnect(code, reason, attempt)
        except Exception:  # a failing hook leaves the decision to the rule
            log.exception("wsproxy_client: should_reconnect raised")
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        session = self._session
        while True:
            self._state = ClientState.CONNECTING
            self._notify()
            if session is not None and session.expired(loop.time()):
                self._lost(session.fail("window passed"))
            try:
                ws, failure = await self._connect_once()
            except FramingError as exc:  # resume asked of a proxy that does not speak it
                self._emit(Failed(exc))
                close = Close(1002, f"resume: {exc}"[:123], before_open=True)
                self._emit(_closed_event(close, terminal=True))
                self._end(close.code, close.reason, requested=False)
                return
            if ws is not None:
                self._reconnects.opened(loop.time())
                close = await self._serve(ws)
            else:
                assert failure is not None
                close = failure
            if session is not None:
                step = session.after(close, loop.time())
                if step.verdict is Verdict.RESUME:
                    await self._resume_after(close, step)
                    continue
                if step.verdict is Verdict.FAILED:
                    self._emit(_closed_event(close, retry_in=0.0))
                    self._lost(step)
                    self._emit(Reconnecting(step.attempt, 0.0, False, False))
                    continue  # a fresh session, at once
            decision = self._reconnects.decide(close, loop.time())
            if not decision.reconnects:
                self._emit(_closed_event(close, terminal=True))
                self._end(close.code, close.reason, requested=False)
                return
            self._emit(_closed_event(close, retry_in=decision.delay, hinted=decision.hinted))
            self._emit(Reconnecting(decision.attempt, decision.delay, decision.hinted,
                                    decision.token_refresh))
            await asyncio.sleep(decision.delay)

    async def _resume_after(self, close: Close, step: Step) -> None:
        """Report the drop (or the failed attempt) and wait before the next attempt."""
        self._emit(_closed_event(close, retry_in=step.delay, hinted=step.hinted))
        self._emit(Reconnecting(step.attempt, step.delay, step.hinted, False))
        if step.attempt == 1 and self._before_resume is not None:
            try:
                await self._before_resume()
            except Exception as exc:  # the app's hook must not end the session
                log.exception("wsproxy_client: before_resume raised")
                self._emit(Failed(exc))
        await asyncio.sleep(step.delay)

    def _lost(self, step: Step) -> None:
        self._emit(ResumeFailed(step.reason, step.unacked))

    async def _connect_once(self) -> tuple[ClientConnection | None, Close | None]:
        """One connect: the open connection, or how it failed. With resume, open means
        the proxy's first control message was taken too.

        Raises:
            FramingError: with resume, the proxy's first message was not the protocol's.
        """
        token: str | None = None
        if self._token is not None:
            try:
                token = await self._token()
            except Exception as exc:  # a token service briefly down is retried, not fatal
                self._emit(Failed(exc))
                return None, Close(1006, "token hook failed", before_open=True)
        url, headers, subprotocols = self._request(token)
        if self._session is not None:
            url = _with_query(url, RESUME_PARAM, self._session.param())
        try:
            ws = await connect(
                url, additional_headers=headers,
                subprotocols=[Subprotocol(p) for p in subprotocols] or None,
                open_timeout=self._open_timeout, **self._connect_kwargs)
        except InvalidStatus as exc:
            response = exc.response
            self._emit(Failed(exc))
            return None, Close(
                1006, f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                before_open=True, status=response.status_code,
                retry_after=_retry_after(response.headers.get("Retry-After")))
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self._emit(Failed(exc))
            return None, Close(1006, f"connect failed: {exc}"[:123], before_open=True)
        if self._session is None:
            return ws, None
        return await self._session_opened(ws)

    async def _session_opened(
            self, ws: ClientConnection) -> tuple[ClientConnection | None, Close | None]:
        """Read the proxy's first message on *ws*: ``session`` or ``resumed``."""
        assert self._session is not None
        try:
            async with asyncio.timeout(self._open_timeout):
                first = await ws.recv()
        except ConnectionClosed as exc:  # 4410, or a refusal after the 101 (1013)
            rcvd = exc.rcvd
            return None, Close(rcvd.code if rcvd else 1006, rcvd.reason if rcvd else "",
                               was_clean=rcvd is not None and exc.sent is not None,
                               before_open=True)
        except TimeoutError:
            await ws.close(1002, "no session from the proxy")
            return None, Close(1006, "resume: no session from the proxy", before_open=True)
        try:
            self._resend = self._session.opened(first)
        except FramingError:
            await ws.close(1002, "not a resumable session")
            raise
        return ws, None

    async def _serve(self, ws: ClientConnection) -> Close:
        """Send the queue on *ws*, report it open, and wait until it closes: how it did."""
        self._connection = ws
        session = self._session
        if session is None:
            self._unread.append(ws)
        else:
            resend, self._resend = self._resend, None
            if resend is not None:  # resumed: what the proxy had not acked, again
                with contextlib.suppress(ConnectionClosed):
                    for again in resend:
                        await ws.send(again)
        flushed = 0
        while ws.protocol.state is State.OPEN and (message := self._queue.pop()) is not None:
            flushed += 1
            if session is not None:
                session.sending(message)
            with contextlib.suppress(ConnectionClosed):  # handed over: not sent again
                await ws.send(message)
        self._state = ClientState.OPEN
        if session is not None:
            assert session.session_id is not None
            self._emit(Resumed(len(resend)) if resend is not None
                       else SessionStarted(session.session_id))
        self._emit(Opened(self.subprotocol, flushed))
        if session is None:
            await ws.wait_closed()
        else:
            await self._read_session(ws, session)
        self._state = ClientState.CONNECTING
        return _close_of(ws)

    async def _read_session(self, ws: ClientConnection, session: Resumption) -> None:
        """Read *ws* to its end: the payloads to the inbox, the controls to *session*."""
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            async for message in ws:
                try:
                    payload = session.take(message)
                except FramingError as exc:
                    log.warning("wsproxy_client: %s; closing", exc)
                    await ws.close(1002, "not a resumable session")
                    break
                if payload is None:
                    continue
                self._inbox.append(payload)
                self._notify()
                while len(self._inbox) >= INBOX_KEPT and not closed.done():
                    changed = asyncio.ensure_future(self._changed.wait())
                    try:
                        await asyncio.wait({changed, closed},
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        changed.cancel()
        except ConnectionClosed:
            pass
        finally:
            closed.cancel()
        await ws.wait_closed()

    def _request(self, token: str | None) -> tuple[str, list[tuple[str, str]], list[str]]:
        """The URL, headers and subprotocols of one connect, with *token* in its place."""
        url, headers, protocols = self.url, list(self._headers), list(self._subprotocols)
        self._token_entry = None
        if not token:
            return url, headers, protocols
        kind, _, name = self._token_in.partition(":")
        if kind == "header":
            headers.append((name, token) if name else ("Authorization", f"Bearer {token}"))
        elif kind == "query":
            url = _with_query(url, name, token)
        else:
            self._token_entry = (name or "bearer.") + token
            protocols.insert(0, self._token_entry)
        return url, headers, protocols

    def _end(self, code: int, reason: str, *, requested: bool) -> None:
        self._state = ClientState.CLOSED
        self._queue.clear()
        self.terminated = Terminated(code, reason, requested)
        self._emit(self.terminated)

    def _closed_error(self) -> ClientClosed:
        end = self.terminated
        if end is None:  # close() is under way
            return ClientClosed(1000, "", requested=True)
        return ClientClosed(end.code, end.reason, end.requested)


def _close_of(ws: ClientConnection) -> Close:
    """How an opened connection ended, from what ``websockets`` recorded."""
    protocol = ws.protocol  # websockets 13 has these on the protocol only
    code = protocol.close_code if protocol.close_code is not None else 1006
    clean = protocol.close_rcvd is not None and protocol.close_sent is not None
    return Close(int(code), protocol.close_reason or "", was_clean=clean)


def _closed_event(close: Close, *, terminal: bool = False, retry_in: float | None = None,
                  hinted: bool = False) -> Closed:
    return Closed(close.code, close.reason, close.was_clean, close.before_open, close.status,
                  retry_in, hinted, terminal)


def _retry_after(value: str | None) -> float | None:
    return parse_retry_after(value, time.time())


def _with_query(url: str, name: str, value: str) -> str:
    """*url* with the query parameter *name* set to *value* (any earlier one replaced)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    query.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(query)))
