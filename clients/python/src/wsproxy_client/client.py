"""``WsproxyClient``: the reconnecting client, on ``websockets``' asyncio connection.

One task per client (started by ``start()`` or ``async with``) runs the loop: ask the
token hook, connect, send what was queued, wait for the close, ask ``policy`` what
next, wait, and again, until the policy says stop or the app calls ``close()``. The app
reads messages with ``async for`` / ``recv()`` (from each connection in turn, to its
end, so nothing a connection delivered is skipped), sends with ``send()`` (queued
while not connected), and follows the lifecycle through ``on_event`` or ``events()``.
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
            # (whether the server got it is unknown; resending could deliver it twice).
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
        while True:
            self._state = ClientState.CONNECTING
            self._notify()
            ws, failure = await self._connect_once()
            if ws is not None:
                self._reconnects.opened(loop.time())
                await self._serve(ws)
                close = _close_of(ws)
            else:
                assert failure is not None
                close = failure
            decision = self._reconnects.decide(close, loop.time())
            if not decision.reconnects:
                self._emit(_closed_event(close, terminal=True))
                self._end(close.code, close.reason, requested=False)
                return
            self._emit(_closed_event(close, retry_in=decision.delay, hinted=decision.hinted))
            self._emit(Reconnecting(decision.attempt, decision.delay, decision.hinted,
                                    decision.token_refresh))
            await asyncio.sleep(decision.delay)

    async def _connect_once(self) -> tuple[ClientConnection | None, Close | None]:
        """One connect: the open connection, or how it failed."""
        token: str | None = None
        if self._token is not None:
            try:
                token = await self._token()
            except Exception as exc:  # a token service briefly down is retried, not fatal
                self._emit(Failed(exc))
                return None, Close(1006, "token hook failed", before_open=True)
        url, headers, subprotocols = self._request(token)
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
        return ws, None

    async def _serve(self, ws: ClientConnection) -> None:
        """Send the queue on *ws*, report it open, and wait until it closes."""
        self._connection = ws
        self._unread.append(ws)
        flushed = 0
        while ws.protocol.state is State.OPEN and (message := self._queue.pop()) is not None:
            flushed += 1
            with contextlib.suppress(ConnectionClosed):  # handed over: not sent again
                await ws.send(message)
        self._state = ClientState.OPEN
        self._emit(Opened(self.subprotocol, flushed))
        await ws.wait_closed()
        self._state = ClientState.CONNECTING

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
