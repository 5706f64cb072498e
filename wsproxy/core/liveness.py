"""Per-connection timers as pure decisions: heartbeats, idle timeout, maximum age.

One sweeper task visits every open connection about once a second and asks its
``Liveness`` what is due; the answer depends only on the ``now`` passed in. This
keeps the clock out of the core and the per-connection cost to a few attributes (no
timer handle or task per connection: 10,000 idle connections must stay cheap).
"""

from __future__ import annotations

import enum
import random
import struct
from dataclasses import dataclass

from wsproxy.core.states import Side

_RNG = random.Random()
_DRAW = _RNG.random


class Due(enum.Enum):
    """What a connection needs now, in order of precedence."""

    NOTHING = "nothing"
    #: Send a heartbeat ping on both legs.
    PING = "ping"
    #: The client leg missed its pong: it is dead.
    CLIENT_DEAD = "client_dead"
    #: The backend leg missed its pong: it is dead.
    UPSTREAM_DEAD = "upstream_dead"
    #: No data message either way for ``idle_timeout``.
    IDLE = "idle"
    #: Older than ``max_connection_age`` (plus its jitter).
    AGED = "aged"
    #: The client's credentials expired (auth.close_on_expiry).
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class LivenessRules:
    interval: float
    timeout: float
    #: 0: off.
    idle_timeout: float = 0.0
    #: 0: off.
    max_age: float = 0.0
    #: Ages are stretched by up to this fraction, so that a scale-out's connections do
    #: not all come due in the same second.
    age_jitter: float = 0.1


def ping_payload(sent_at: float) -> bytes:
    """The heartbeat's own bytes: when it was sent (so any pong tells its RTT)."""
    return struct.pack("!d", sent_at)


def ping_sent_at(payload: bytes) -> float | None:
    return struct.unpack("!d", payload)[0] if len(payload) == 8 else None


class Liveness:
    """The timers of one open connection."""

    __slots__ = (
        "_activity", "_messages", "_next_ping", "_ping_client", "_ping_upstream", "age_deadline",
        "expires_at", "rules",
    )

    def __init__(
        self, rules: LivenessRules, now: float, rng: random.Random | None = None,
        expires_at: float | None = None,
    ) -> None:
        #: When the client's credentials expire, on the same clock as *now*.
        self.expires_at = expires_at
        # One seeded generator (seeding per connection costs a syscall), its bound
        # method at hand.
        draw = _DRAW if rng is None else rng.random
        self.rules = rules
        # The first ping at a random point of the first interval: pings of connections
        # opened together (after a drain elsewhere) do not stay in lockstep.
        self._next_ping = now + rules.interval * (0.5 + draw() / 2)
        #: When each leg's unanswered heartbeat ping went (None: none is out). Two
        #: slots rather than a dict: there is one Liveness per open connection.
        self._ping_client: float | None = None
        self._ping_upstream: float | None = None
        self._activity = now
        self._messages = 0
        max_age = rules.max_age
        self.age_deadline = now + max_age * (1 + rules.age_jitter * draw()) if max_age else None

    def pong(self, side: Side, sent_at: float, now: float) -> float | None:
        """A heartbeat pong came back on *side*; returns its round-trip time."""
        if side is Side.CLIENT:
            if self._ping_client != sent_at:
                return None  # a late answer to an earlier ping: already judged
            self._ping_client = None
        else:
            if self._ping_upstream != sent_at:
                return None
            self._ping_upstream = None
        return now - sent_at

    def forget_ping(self, side: Side) -> None:
        """*side*'s unanswered ping went to a socket that is gone (a held session)."""
        if side is Side.CLIENT:
            self._ping_client = None
        else:
            self._ping_upstream = None

    def pings_out(self) -> list[tuple[Side, float]]:
        """The heartbeat pings to (re)send after a PING: each leg's oldest unanswered,
        the oldest first."""
        client, upstream = self._ping_client, self._ping_upstream
        if client is None:
            return [] if upstream is None else [(Side.UPSTREAM, upstream)]
        if upstream is None:
            return [(Side.CLIENT, client)]
        if upstream < client:
            return [(Side.UPSTREAM, upstream), (Side.CLIENT, client)]
        return [(Side.CLIENT, client), (Side.UPSTREAM, upstream)]

    def check(self, now: float, messages: int) -> Due:
        """What is due at *now*; *messages* is the data messages relayed so far."""
        if self._ping_client is not None or self._ping_upstream is not None:
            for side, sent in self.pings_out():
                if now - sent >= self.rules.timeout:
                    return Due.CLIENT_DEAD if side is Side.CLIENT else Due.UPSTREAM_DEAD
        if self.expires_at is not None and now >= self.expires_at:
            return Due.EXPIRED
        if messages != self._messages:
            self._messages, self._activity = messages, now
        if self.age_deadline is not None and now >= self.age_deadline:
            return Due.AGED
        if self.rules.idle_timeout and now - self._activity >= self.rules.idle_timeout:
            return Due.IDLE
        if now >= self._next_ping:
            self._next_ping = now + self.rules.interval
            if self._ping_client is None:
                self._ping_client = now
            if self._ping_upstream is None:
                self._ping_upstream = now
            return Due.PING
        return Due.NOTHING
