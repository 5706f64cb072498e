"""The connection lifecycle as data.

Theory of operation
-------------------
One proxied connection has two legs: CLIENT (the proxy is the WebSocket server) and
UPSTREAM (the proxy is the client of a backend). Each leg's close handshake is
tracked by the session (wsproxy.core.session); this module holds the *joint* state of
the connection and the only table that changes it, as h11's ``_state.py`` does.

    AWAIT_REQUEST --REQUEST_ACCEPTED--> CONNECTING_UPSTREAM --UPSTREAM_ACCEPTED--> OPEN
          |                                  |   ^  UPSTREAM_RETRY (next backend) |
          +--REQUEST_REJECTED/SHUTDOWN--> REJECTED <--UPSTREAM_REJECTED/SHUTDOWN-+ |
                                                                                   v
    OPEN --CLOSE_STARTED--> CLOSING --BOTH_CLOSED--> CLOSED
    any non-terminal state --TRANSPORT_LOST/TIMED_OUT--> FAILED

A pair missing from the table is a bug in wsproxy and raises InvalidTransition.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from wsproxy.errors import InvalidTransition


class Side(enum.Enum):
    """One leg of a proxied connection."""

    # Members are singletons, so identity hashing is exact, and it runs in C: the
    # relay looks sides and states up in dicts and sets on every chunk, where
    # Enum.__hash__ (Python code) showed in profiles.
    __hash__ = object.__hash__

    #: The client that sent the upgrade; the proxy is its WebSocket server.
    CLIENT = "client"
    #: The backend; the proxy is its WebSocket client.
    UPSTREAM = "upstream"

    @property
    def other(self) -> Side:
        return Side.UPSTREAM if self is Side.CLIENT else Side.CLIENT


#: Both sides, as a tuple: iterating an Enum class is slow, and connections do it.
SIDES: Final = (Side.CLIENT, Side.UPSTREAM)


class SessionState(enum.Enum):
    __hash__ = object.__hash__

    #: Reading the client's upgrade request.
    AWAIT_REQUEST = "await_request"
    #: Connecting to a backend and doing its handshake; the client is paused.
    CONNECTING_UPSTREAM = "connecting_upstream"
    #: Both handshakes done; relaying frames.
    OPEN = "open"
    #: A close frame is in flight on at least one leg.
    CLOSING = "closing"
    #: Terminal: an HTTP error was sent instead of 101.
    REJECTED = "rejected"
    #: Terminal: both close handshakes completed.
    CLOSED = "closed"
    #: Terminal: a transport was lost, a peer broke the protocol, or a timer ran out.
    FAILED = "failed"


class Trigger(enum.Enum):
    REQUEST_ACCEPTED = "request_accepted"
    REQUEST_REJECTED = "request_rejected"
    UPSTREAM_ACCEPTED = "upstream_accepted"
    UPSTREAM_RETRY = "upstream_retry"
    UPSTREAM_REJECTED = "upstream_rejected"
    CLOSE_STARTED = "close_started"
    SHUTDOWN = "shutdown"
    BOTH_CLOSED = "both_closed"
    TRANSPORT_LOST = "transport_lost"
    TIMED_OUT = "timed_out"


S = SessionState
T = Trigger

TERMINAL: Final = frozenset({S.REJECTED, S.CLOSED, S.FAILED})
NON_TERMINAL: Final = frozenset(SessionState) - TERMINAL

TRANSITIONS: Final[Mapping[tuple[SessionState, Trigger], SessionState]] = {
    (S.AWAIT_REQUEST, T.REQUEST_ACCEPTED): S.CONNECTING_UPSTREAM,
    (S.AWAIT_REQUEST, T.REQUEST_REJECTED): S.REJECTED,
    (S.CONNECTING_UPSTREAM, T.UPSTREAM_ACCEPTED): S.OPEN,
    (S.CONNECTING_UPSTREAM, T.UPSTREAM_RETRY): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, T.UPSTREAM_REJECTED): S.REJECTED,
    (S.OPEN, T.CLOSE_STARTED): S.CLOSING,
    (S.CLOSING, T.CLOSE_STARTED): S.CLOSING,
    (S.CLOSING, T.BOTH_CLOSED): S.CLOSED,
    **{(s, T.SHUTDOWN): S.REJECTED for s in (S.AWAIT_REQUEST, S.CONNECTING_UPSTREAM)},
    **{(s, t): S.FAILED for s in NON_TERMINAL for t in (T.TRANSPORT_LOST, T.TIMED_OUT)},
}


def next_state(state: SessionState, trigger: Trigger) -> SessionState:
    """The state *trigger* leads to from *state*.

    Raises:
        InvalidTransition: the table has no such pair.
    """
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise InvalidTransition(state, trigger) from None
