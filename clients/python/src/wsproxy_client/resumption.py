"""A resumable session's state and decisions, without sockets or clocks (sans-I/O).

The protocol is wsproxy's README "Resumable sessions". ``WsproxyClient(resume=True)``
keeps one ``Resumption``; this module decides, the client does the I/O.

Theory of operation. A session is **attached** (a connection is open on it),
**held** (the connection dropped; the client is resuming until ``deadline``), or
absent (``session_id`` is None: the next connect starts a fresh one).

- **Connect**: the URL carries ``wsproxy_resume=param()``: ``1`` for a fresh session,
  ``<id>.<R>`` while held (R: the backend messages received in the session). The first
  message on the connection is the proxy's ``session`` or ``resumed`` control
  (``opened()``); anything else means the proxy does not speak the protocol.
- **Framing** (``take()``): 0x00 before a backend payload (counted in ``received``),
  0x01 before a JSON control; ``ack`` drops the acked messages from ``unacked``.
  Every message the client sends on the session is numbered (``sending()``) and kept
  until acked; after ``resumed`` the ones past its ``acked`` are sent again.
- **After a close** (``after()``):
  1. attached, and the connection ended without a close frame (1006, having opened):
     the session is held for the window the proxy announced; the first attempt at once.
  2. held: 4410 is a failed resume (the proxy's reason); past the deadline, "window
     passed"; anything else (refused, 503, a network error, a 1013) tries again after
     the hint or the back-off, never past the deadline.
  3. attached, and a close frame came (a drain's 1001/1012, 1008, 4xxx, ...): a real
     close, the session is over; the client's usual rules decide (``ENDED``).
  4. no session (a fresh connect failed): the usual rules (``NONE``).
  A failed resume forgets the session; a fresh one follows at once. The messages the
  old one had not acked are counted for the app and dropped: the old backend may or
  may not have had them.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .policy import Backoff, Close, Data, backoff_delay, parse_retry_hint

#: The query parameter that opts in (``1``) or resumes (``<id>.<R>``).
RESUME_PARAM: Final = "wsproxy_resume"
#: The close code of a resume the proxy refused (after its 101).
RESUME_FAILED: Final = 4410
#: The framing bytes: before a backend payload, before a control message of the proxy's.
APP: Final = 0
CONTROL: Final = 1


class FramingError(ValueError):
    """A message that is not the resumable-session protocol's (the proxy does not speak
    it, or something between mangles it)."""


class Verdict(enum.Enum):
    """What a close means for the session."""

    #: Try to resume (again) after ``Step.delay``.
    RESUME = "resume"
    #: The resume failed: forget the session, start a fresh one at once.
    FAILED = "failed"
    #: A real close ended an attached session: the client's usual rules decide.
    ENDED = "ended"
    #: No session was involved (a fresh connect failed): the usual rules decide.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Step:
    """``after()``'s answer: the verdict, and for RESUME the wait; for FAILED why and
    how many of the app's messages the old session had not acked."""

    verdict: Verdict
    #: The number of this resume attempt (1: the first after the drop).
    attempt: int = 0
    delay: float = 0.0
    hinted: bool = False
    reason: str = ""
    unacked: int = 0


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of the session, for the app (``WsproxyClient.session``)."""

    #: The session's id (never logged by the proxy; do not log it either).
    id: str | None
    #: The window the proxy announced, in seconds.
    window: float
    #: Backend messages received in this session.
    received: int
    #: The app's messages sent in this session (numbered from 1).
    sent: int
    #: The connection dropped and the client is resuming.
    resuming: bool


def _control(message: Data) -> dict[str, Any]:
    if not isinstance(message, str) or message[:1] != "\x01":
        raise FramingError("not a control message of the proxy's")
    try:
        control = json.loads(message[1:])
    except ValueError as exc:
        raise FramingError(f"a control message that is not JSON: {exc}") from None
    if not isinstance(control, dict):
        raise FramingError("a control message that is not a JSON object")
    return control


class Resumption:
    """The state of one client's resumable session (see the module doc)."""

    def __init__(self, backoff: Backoff, random: Callable[[], float]) -> None:
        self.backoff = backoff
        self.random = random
        self.session_id: str | None = None
        #: The proxy's window, in seconds.
        self.window = 0.0
        #: Backend messages received in this session.
        self.received = 0
        #: The app's messages sent in this session; those not acked, numbered.
        self.sent = 0
        self.unacked: deque[tuple[int, Data]] = deque()
        #: Set while held: the time after which the session cannot come back.
        self.deadline: float | None = None
        #: The resume attempts since the drop.
        self.attempt = 0

    @property
    def held(self) -> bool:
        return self.deadline is not None

    def info(self) -> SessionInfo:
        return SessionInfo(self.session_id, self.window, self.received, self.sent, self.held)

    def param(self) -> str:
        """The value of ``wsproxy_resume`` for the next connect."""
        if self.held:
            return f"{self.session_id}.{self.received}"
        return "1"

    def expired(self, now: float) -> bool:
        """Held, and past the window: the next attempt is not worth making."""
        return self.deadline is not None and now >= self.deadline

    # A connection's first message …

    def opened(self, first: Data) -> list[Data] | None:
        """Take the first message of a connection: a fresh session's ``session`` (None
        returned) or, while held, ``resumed`` (the messages to send again, in order).

        Raises:
            FramingError: anything else.
        """
        control = _control(first)
        kind = control.get("type")
        if self.held and kind == "resumed":
            self._acked(int(control["acked"]))
            self.deadline = None
            self.attempt = 0
            return [message for _, message in self.unacked]
        if not self.held and kind == "session":
            self.session_id = str(control["id"])
            self.window = float(control["window"])
            self.received = 0
            self.sent = 0
            self.unacked.clear()
            return None
        raise FramingError(f"expected {'resumed' if self.held else 'session'}, got {kind!r}")

    # On an attached session …

    def sending(self, message: Data) -> None:
        """The app's *message* goes on the session now: numbered and kept until acked."""
        self.sent += 1
        self.unacked.append((self.sent, message))

    def take(self, message: Data) -> Data | None:
        """A message from the proxy: the backend's payload (counted), or None for a
        control message (an ack is applied).

        Raises:
            FramingError: a message without the framing byte, or a binary control.
        """
        kind = (message[0] if isinstance(message, bytes) else ord(message[0])) if message else -1
        if kind == APP:
            self.received += 1
            return message[1:]
        if kind == CONTROL:
            control = _control(message)
            if control.get("type") == "ack":
                self._acked(int(control["n"]))
            return None  # a control of a later version: not the app's
        raise FramingError("a message without the resumable session's framing byte")

    def _acked(self, n: int) -> None:
        unacked = self.unacked
        while unacked and unacked[0][0] <= n:
            unacked.popleft()

    # After a close …

    def after(self, close: Close, now: float) -> Step:
        """What *close* (a connection's end, or a failed connect) at *now* means."""
        if self.held:
            assert self.deadline is not None
            if close.code == RESUME_FAILED:
                return self.fail(close.reason.removeprefix("resume failed: "))
            if now >= self.deadline:
                return self.fail("window passed")
            self.attempt += 1
            hinted, delay = self._wait(close)
            return Step(Verdict.RESUME, self.attempt, min(delay, self.deadline - now), hinted)
        if self.session_id is None:
            return Step(Verdict.NONE)
        if close.code == 1006 and not close.before_open:
            # No close frame: the network went, not an endpoint. A close frame can never
            # carry 1006 (RFC 6455 §7.4.1), so this is the drop and only the drop.
            self.deadline = now + self.window
            self.attempt = 1
            return Step(Verdict.RESUME, 1)
        self.forget()
        return Step(Verdict.ENDED)

    def _wait(self, close: Close) -> tuple[bool, float]:
        hint_ms = parse_retry_hint(close.reason)
        hint = hint_ms / 1000.0 if hint_ms is not None else close.retry_after
        if hint is not None:
            return True, min(hint, self.backoff.max_hint)
        return False, backoff_delay(self.attempt, self.backoff, self.random)

    def fail(self, reason: str) -> Step:
        """The resume failed (*reason*): the session is forgotten."""
        unacked = len(self.unacked)
        self.forget()
        return Step(Verdict.FAILED, self.attempt, reason=reason, unacked=unacked)

    def forget(self) -> None:
        """No session any more: the next connect starts a fresh one."""
        self.session_id = None
        self.deadline = None
        self.attempt = 0
        self.received = 0
        self.sent = 0
        self.unacked.clear()
