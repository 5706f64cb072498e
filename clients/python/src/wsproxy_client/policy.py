"""The client's decisions, without sockets, clocks or an event loop (sans-I/O).

Theory of operation. A close (or a failed connect, reported as 1006 with the HTTP
status when there was one) goes through three steps:

1. **Whether to come back** (``default_rule``): the codes that mean "come back"
   (``RECONNECT_CODES``: 1001, 1006, 1011, 1012, 1013, 1014) reconnect; 1008 whose
   reason's text before any ``;`` is ``token expired`` reconnects with a fresh token
   when the app gave a token hook (``Action.REFRESH``); everything else (1000 from the
   server, 1008, 4000-4999, the protocol errors) stops for good. The app's
   ``should_reconnect(code, reason, attempt)`` is asked first and may say ``True``
   (reconnect), ``False`` (stop) or ``None`` (the rule decides).
2. **How long to wait** (``Reconnects.decide``): the server's hint when there is one
   (``retry-after-ms=N`` in the close reason, or a ``Retry-After`` header on
   a refused upgrade), exactly, clamped to ``Backoff.max_hint``; otherwise full-jitter
   exponential back-off, attempt *n* waiting ``uniform(0, min(max, base * 2**(n-1)))``.
3. **Which attempt this is**: the count starts at 1 after a connection that stayed
   open at least ``Backoff.reset_after`` and grows with every reconnect until one does,
   so a server that accepts and at once closes cannot hold the client in a fast loop.

``SendQueue`` holds what the app sends while no connection is open, bounded in
messages and bytes; a message that would cross a bound is refused (the newest goes,
the queued ones stay, in order).

Everything here takes the time (``now``) and the randomness (``random``) as arguments,
so the unit tests drive it without sockets or sleeps.
"""

from __future__ import annotations

import enum
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

#: What a WebSocket message is: text or binary.
Data = str | bytes

#: The close codes that mean "come back" (RFC 6455 §7.4.1, IANA 1012-1014); 1006 is
#: also what every failed connect is reported as.
RECONNECT_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})

#: wsproxy's token-expiry close: 1008 with this text (before any ``;``).
TOKEN_EXPIRED: Final = "token expired"

#: ``retry-after-ms=N`` in a close reason (wsproxy writes ``"<text>; retry-after-ms=N"``),
#: as a word of its own: the first one, at most nine ASCII digits (anything longer is
#: past any clamp). The same expression as clients/js's ``parseRetryHint``.
_HINT: Final = re.compile(r"(?:^|[\s;,])retry-after-ms=([0-9]{1,9})(?=\Z|[\s;,])")
#: A ``Retry-After`` header's delta-seconds form (RFC 9110 §10.2.3).
_DELTA_SECONDS: Final = re.compile(r"\d{1,15}")


class Action(enum.Enum):
    """What a close leads to."""

    #: Reconnect after the wait.
    RECONNECT = "reconnect"
    #: 1008 "token expired" with a token hook: ask the hook again, then reconnect.
    REFRESH = "refresh"
    #: Stop for good.
    STOP = "stop"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """The bounds of the waits, in seconds (the defaults are those of clients/js)."""

    #: First back-off ceiling: attempt n waits uniform(0, min(max, base * 2**(n-1))).
    base: float = 0.5
    #: Ceiling of any back-off wait.
    max: float = 30.0
    #: Ceiling of a server's hint (``retry-after-ms``, ``Retry-After``).
    max_hint: float = 60.0
    #: A connection open at least this long resets the attempt count to 1.
    reset_after: float = 5.0

    def __post_init__(self) -> None:
        for name in ("base", "max", "max_hint", "reset_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"backoff.{name}: expected a finite number >= 0, got {value!r}")
        if self.base <= 0 or self.max <= 0:
            raise ValueError(f"backoff.base and backoff.max must be > 0, got {self.base!r} "
                             f"and {self.max!r}")
        if self.max < self.base:
            raise ValueError(f"backoff.max ({self.max!r}) must be >= backoff.base "
                             f"({self.base!r})")


@dataclass(frozen=True, slots=True)
class Close:
    """How a connection (or a connect) ended, as the decisions see it."""

    #: The close code; 1006 for no close frame and for a failed connect.
    code: int
    #: The close reason ("" when none; "HTTP 503" and the like for a refused upgrade).
    reason: str = ""
    #: Whether a closing handshake took place.
    was_clean: bool = False
    #: The socket never opened: a failed connect or a refused upgrade.
    before_open: bool = False
    #: The HTTP status of a refused upgrade.
    status: int | None = None
    #: The refused upgrade's ``Retry-After``, in seconds (parsed).
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a close: ``action``, and for a reconnect the wait and why."""

    action: Action
    #: The number of the reconnect (1 for the first after a stable connection).
    attempt: int
    #: Seconds to wait before reconnecting (0.0 when stopping).
    delay: float = 0.0
    #: The wait is the server's hint (clamped), not the back-off.
    hinted: bool = False

    @property
    def reconnects(self) -> bool:
        return self.action is not Action.STOP

    @property
    def token_refresh(self) -> bool:
        return self.action is Action.REFRESH


# Reading the server's hints …


def parse_retry_hint(reason: str | None) -> int | None:
    """The ``retry-after-ms=N`` hint in a close reason, in ms (not clamped)."""
    if not reason:
        return None
    match = _HINT.search(reason)
    return int(match.group(1)) if match else None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header in seconds from *now* (a Unix time): delta-seconds or an
    HTTP date (a date in the past is 0); ``None`` when absent or malformed."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; the obsolete forms may lack a zone
        return None
    return max(0.0, when.timestamp() - now)


# Deciding …


def default_rule(code: int, reason: str, has_token_hook: bool) -> Action:
    """Reconnect, refresh the token and reconnect, or stop: the rule of the module doc."""
    if code in RECONNECT_CODES:
        return Action.RECONNECT
    if code == 1008 and has_token_hook and reason.split(";", 1)[0].strip() == TOKEN_EXPIRED:
        return Action.REFRESH
    return Action.STOP


def backoff_delay(attempt: int, backoff: Backoff, random: Callable[[], float]) -> float:
    """Full jitter: uniform(0, min(max, base * 2**(attempt-1))) for *random* in [0, 1)."""
    exponent = min(max(attempt, 1) - 1, 64)  # 2**64 * base is past any max already
    ceiling = min(backoff.max, backoff.base * 2.0**exponent)
    return ceiling * min(max(random(), 0.0), 1.0)


#: The app's hook: ``(code, reason, attempt) -> True | False | None``.
ShouldReconnect = Callable[[int, str, int], "bool | None"]


class Reconnects:
    """The attempt count and the decision after each close.

    Call ``opened(now)`` when a connection opens and ``decide(close, now)`` when it
    (or a connect) ends; the decision says whether and when to reconnect.
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        has_token_hook: bool,
        should_reconnect: ShouldReconnect | None = None,
        random: Callable[[], float],
    ) -> None:
        self.backoff = backoff
        self.has_token_hook = has_token_hook
        self.should_reconnect = should_reconnect
        self.random = random
        #: The number of the last reconnect (0: none yet since a stable connection).
        self.attempt = 0
        self._opened_at: float | None = None

    def opened(self, now: float) -> None:
        """A connection opened at *now*."""
        self._opened_at = now

    def next_attempt(self, now: float) -> int:
        """The number the next reconnect would have, if one follows a close at *now*."""
        opened_at = self._opened_at
        if opened_at is not None and now - opened_at >= self.backoff.reset_after:
            return 1
        return self.attempt + 1

    def decide(self, close: Close, now: float) -> Decision:
        """Whether, and after how long, to reconnect after *close* (at *now*)."""
        attempt = self.next_attempt(now)
        self._opened_at = None
        action = default_rule(close.code, close.reason, self.has_token_hook)
        override = (self.should_reconnect(close.code, close.reason, attempt)
                    if self.should_reconnect is not None else None)
        if override is True and action is Action.STOP:
            action = Action.RECONNECT
        elif override is False:
            action = Action.STOP
        if action is Action.STOP:
            return Decision(Action.STOP, attempt)
        self.attempt = attempt
        hint = self._hint(close)
        if hint is not None:
            return Decision(action, attempt, min(hint, self.backoff.max_hint), hinted=True)
        return Decision(action, attempt, backoff_delay(attempt, self.backoff, self.random))

    @staticmethod
    def _hint(close: Close) -> float | None:
        hint_ms = parse_retry_hint(close.reason)
        if hint_ms is not None:
            return hint_ms / 1000.0
        return close.retry_after


# The send queue …


def message_size(message: Data) -> int:
    """The bytes a message holds in the queue: its length, text counted as UTF-8."""
    return len(message.encode("utf-8")) if isinstance(message, str) else len(message)


class SendQueue:
    """Messages held while not connected, bounded by *max_messages* and *max_bytes*.

    ``push`` refuses (returns False) a message that would cross either bound and keeps
    the queued ones: the newest is dropped, never one the app was told was accepted.
    """

    def __init__(self, max_messages: int = 1000, max_bytes: int = 1 << 20) -> None:
        for name, value in (("max_messages", max_messages), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"queue.{name}: expected an integer >= 0, got {value!r}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: deque[tuple[Data, int]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def bytes(self) -> int:
        """The bytes held (text counted as UTF-8)."""
        return self._bytes

    def push(self, message: Data) -> bool:
        """Hold *message*; False (nothing held) when it would cross a bound."""
        size = message_size(message)
        if len(self._messages) + 1 > self.max_messages or self._bytes + size > self.max_bytes:
            return False
        self._messages.append((message, size))
        self._bytes += size
        return True

    def peek(self) -> Data | None:
        """The oldest message, left in the queue; None when empty."""
        return self._messages[0][0] if self._messages else None

    def pop(self) -> Data | None:
        """Remove and return the oldest message; None when empty."""
        if not self._messages:
            return None
        message, size = self._messages.popleft()
        self._bytes -= size
        return message

    def clear(self) -> int:
        """Discard everything; how many messages were discarded."""
        count = len(self._messages)
        self._messages.clear()
        self._bytes = 0
        return count
