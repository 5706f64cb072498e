"""The connection lifecycle as data: the session's table and the legs'.

Theory of operation
-------------------
One proxied connection has two legs: CLIENT (the proxy is the WebSocket server) and
UPSTREAM (the proxy is the client of a backend). Each leg has its own close
handshake (RFC 6455 §7.1), and the connection as a whole has a joint state. This
module holds both, and the only tables that change them, as h11's ``_state.py``
does; wsproxy.core.session fires the triggers.

The joint state (``SessionState``, ``next_state``)::

    AWAIT_REQUEST --REQUEST_ACCEPTED--> CONNECTING_UPSTREAM --UPSTREAM_ACCEPTED--> OPEN
          |                                  |   ^  UPSTREAM_RETRY (next backend) |
          +--REQUEST_REJECTED/SHUTDOWN--> REJECTED <--UPSTREAM_REJECTED/SHUTDOWN-+ |
                                                                                   v
    OPEN --CLOSE_STARTED--> CLOSING --BOTH_CLOSED--> CLOSED
    CONNECTING_UPSTREAM --REFUSED_WITH_CLOSE--> CLOSING   (the proxy's own 101 and close)
    any non-terminal state --TRANSPORT_LOST/TIMED_OUT--> FAILED

One leg's close handshake (``LegState``, ``next_leg_state``)::

          +--SEND_CLOSE-----> CLOSE_SENT -----RECEIVE_CLOSE----+
          |                                                    v
        OPEN                                                 CLOSED --ABANDON--> FAILED
          |                                                    ^
          +--RECEIVE_CLOSE--> CLOSE_RECEIVED ----SEND_CLOSE----+
          +--PROTOCOL_BROKEN------^
    any state but CLOSED --GIVE_UP--> FAILED
    OPEN --UNUSED--> CLOSED   (the UPSTREAM leg of an upgrade refused with a close)

A leg whose peer breaks the protocol while the other leg is open is read no more
(PROTOCOL_BROKEN: as if its close had come). Once the other leg has closed, it is
sent its close, which completes its handshake as far as the proxy cares (CLOSED),
and its transport is closed without waiting for an answer (ABANDON). A leg that is
lost, times out, or breaks the protocol mid-frame is given up on at once (GIVE_UP).
CLOSED and FAILED are where a leg's transport is closed; the session is CLOSED when
both legs are CLOSED, FAILED when both are finished and one of them FAILED.

An upgrade refused with a close (``admission.reject_with: close``) opens the CLIENT
leg only: the proxy answers 101 itself and sends its close at once, and the UPSTREAM
leg, which never had a transport, is CLOSED as UNUSED. The session then ends as any
CLOSING one does, when the client's answer comes or the close handshake times out.

A pair missing from either table is a bug in wsproxy and raises InvalidTransition.
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
    __hash__ = object.__hash__  # next_state hashes (state, trigger) pairs: in C (see Side)

    REQUEST_ACCEPTED = "request_accepted"
    REQUEST_REJECTED = "request_rejected"
    UPSTREAM_ACCEPTED = "upstream_accepted"
    UPSTREAM_RETRY = "upstream_retry"
    UPSTREAM_REJECTED = "upstream_rejected"
    #: Refused with the proxy's own 101 and a close (admission.reject_with: close).
    REFUSED_WITH_CLOSE = "refused_with_close"
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
    (S.CONNECTING_UPSTREAM, T.REFUSED_WITH_CLOSE): S.CLOSING,
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



class LegState(enum.Enum):
    """The close handshake of one leg (§7.1)."""

    __hash__ = object.__hash__  # C-speed set membership on the hot path (see Side)

    #: Data flows both ways.
    OPEN = "open"
    #: We sent a close frame; waiting for the peer's.
    CLOSE_SENT = "close_sent"
    #: The peer sent a close frame; ours is still to go.
    CLOSE_RECEIVED = "close_received"
    #: Both close frames went; the transport can close.
    CLOSED = "closed"
    #: Given up on: lost, timed out or broke the protocol. Close the transport now.
    FAILED = "failed"


class LegTrigger(enum.Enum):
    __hash__ = object.__hash__

    #: A close frame went to the peer: ours, or the other side's relayed.
    SEND_CLOSE = "send_close"
    #: The peer's close frame came.
    RECEIVE_CLOSE = "receive_close"
    #: The peer broke the protocol while the other leg is open: it is read no more,
    #: and its close waits for the other leg's.
    PROTOCOL_BROKEN = "protocol_broken"
    #: The peer that broke the protocol has been sent its close: its answer is not
    #: awaited.
    ABANDON = "abandon"
    #: The transport ended, a timer ran out, or the peer broke the protocol where no
    #: close can reach it in order: close the transport without a handshake.
    GIVE_UP = "give_up"
    #: The leg never had a transport (an upgrade refused with a close of the proxy's
    #: own): there is nothing to close.
    UNUSED = "unused"


L = LegState
LT = LegTrigger

LEG_TRANSITIONS: Final[Mapping[tuple[LegState, LegTrigger], LegState]] = {
    (L.OPEN, LT.SEND_CLOSE): L.CLOSE_SENT,
    (L.OPEN, LT.RECEIVE_CLOSE): L.CLOSE_RECEIVED,
    (L.OPEN, LT.PROTOCOL_BROKEN): L.CLOSE_RECEIVED,
    (L.CLOSE_SENT, LT.RECEIVE_CLOSE): L.CLOSED,
    (L.CLOSE_RECEIVED, LT.SEND_CLOSE): L.CLOSED,
    (L.CLOSED, LT.ABANDON): L.FAILED,
    (L.OPEN, LT.UNUSED): L.CLOSED,
    # A failed leg's transport may still report its end: giving up again is no news.
    **{(s, LT.GIVE_UP): L.FAILED for s in LegState if s is not L.CLOSED},
}

#: The states in which a leg may still be sent frames, and still be read.
LEG_CAN_SEND: Final = frozenset({L.OPEN, L.CLOSE_RECEIVED})
LEG_CAN_RECEIVE: Final = frozenset({L.OPEN, L.CLOSE_SENT})
#: The states in which a leg's transport is done with.
LEG_FINISHED: Final = frozenset({L.CLOSED, L.FAILED})


def next_leg_state(state: LegState, trigger: LegTrigger) -> LegState:
    """The state *trigger* leads a leg to from *state*.

    Raises:
        InvalidTransition: the table has no such pair.
    """
    try:
        return LEG_TRANSITIONS[state, trigger]
    except KeyError:
        raise InvalidTransition(state, trigger) from None
