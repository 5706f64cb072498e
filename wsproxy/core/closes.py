"""Every close code the proxy knows, and every close it makes on its own behalf.

One table, used everywhere: the relay, the drains, the admin API, the config checks
and the metrics ask here rather than spell a number.

``CloseCode`` names the codes as RFC 6455 §7.4.1 and the IANA registry do (the names
of wsproto's ``CloseReason``). Which of them may travel in a close frame is
``is_sendable``: 1005, 1006 and 1015 are for reporting only, 1004 and 1016-2999 are
reserved, 3000-4999 belong to registered libraries and to applications.

``ProxyClose`` is a (code, reason) pair the proxy sends when it, not a peer, ends a
connection. The codes of the drains are configurable (``drain.shutdown_close_code``,
``drain.backend_close_code``), so those closes name only their reason here and take
the code from the config. A reconnect hint (``"; retry-after-ms=N"``) is appended
by the caller where SPEC.md asks for one.

This module imports nothing of the proxy's: the config checks may use it too.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple


class CloseCode(enum.IntEnum):
    """The close codes of RFC 6455 §7.4.1 and the IANA registry (1012-1015)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # reporting only: the close frame had no code
    ABNORMAL_CLOSURE = 1006  # reporting only: no close frame at all
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXT = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # reporting only


def is_sendable(code: int) -> bool:
    """Whether *code* may appear in a close frame on the wire (§7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


#: How the sendable ranges are written in an error message.
SENDABLE_RANGES: Final = "1000-1003, 1007-1014, 3000-4999"

#: The codes the metrics give a series of their own; any other is counted as "other".
REGISTERED: Final = frozenset(c for c in CloseCode if is_sendable(c))

#: What an operator may close connections with through the admin API: the codes
#: that make sense for a proxy to send on its own, and the applications' range.
ADMIN_CODES: Final = frozenset({
    CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.POLICY_VIOLATION,
    CloseCode.INTERNAL_ERROR, CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER,
})
ADMIN_CODES_TEXT: Final = "1000, 1001, 1008, 1011-1013 or 3000-4999"


def is_admin_code(code: int) -> bool:
    """Whether the admin API may close connections with *code*."""
    return code in ADMIN_CODES or 3000 <= code <= 4999


class ProxyClose(NamedTuple):
    """A close the proxy sends on its own behalf: the code and the reason."""

    code: int
    reason: str


def with_hint(close: ProxyClose, retry_after_ms: int) -> ProxyClose:
    """*close* with the reconnect hint ``"; retry-after-ms=N"`` on its reason."""
    return ProxyClose(int(close.code), f"{close.reason}; retry-after-ms={retry_after_ms}")


# The proxy's own closes with a fixed code…

#: The client was silent (no message either way) for ``limits.idle_timeout``.
IDLE_TIMEOUT: Final = ProxyClose(CloseCode.GOING_AWAY, "idle timeout")
#: The client's credentials expired (``auth.close_on_expiry``).
TOKEN_EXPIRED: Final = ProxyClose(CloseCode.POLICY_VIOLATION, "token expired")
#: An operator closed the connection (``DELETE /connections/ID``; the default of
#: ``POST /connections/close``).
REVOKED: Final = ProxyClose(CloseCode.POLICY_VIOLATION, "connection revoked")
#: A message over ``limits.max_message_size``: both legs get it.
TOO_BIG: Final = ProxyClose(CloseCode.MESSAGE_TOO_BIG, "message too big")
#: An upgrade refused by admission (``admission.max_upgrade_rate``) or the connection
#: limits under ``admission.reject_with: close``: the proxy's own 101, then this at
#: once, always with its hint (``with_hint``): a browser sees nothing else of a refusal.
TRY_AGAIN: Final = ProxyClose(CloseCode.TRY_AGAIN_LATER, "try again later")

#: A peer that breaks the protocol is told why: a frame length with its top bit set…
BAD_FRAME_LENGTH: Final = ProxyClose(CloseCode.PROTOCOL_ERROR, "bad frame length")
#: …a client frame not masked, or a backend frame masked (§5.1)…
BAD_MASKING: Final = ProxyClose(CloseCode.PROTOCOL_ERROR, "bad masking")
#: …a control frame fragmented, too long, with reserved bits or a reserved opcode…
BAD_CONTROL_FRAME: Final = ProxyClose(CloseCode.PROTOCOL_ERROR, "bad control frame")
#: …a data frame with a reserved opcode or reserved bits, or out of sequence. (A bad
#: close payload is described by wsproxy.core.frames.parse_close_payload.)
BAD_DATA_FRAME: Final = ProxyClose(CloseCode.PROTOCOL_ERROR, "protocol error")

#: And the other leg is told that its peer's side failed: a backend whose client
#: broke the protocol…
CLIENT_ERROR: Final = ProxyClose(CloseCode.GOING_AWAY, "client error")
#: …a client whose backend did…
BACKEND_ERROR: Final = ProxyClose(CloseCode.BAD_GATEWAY, "backend error")
#: …a backend whose client's connection ended without a close handshake…
CLIENT_LOST: Final = ProxyClose(CloseCode.GOING_AWAY, "connection lost")
#: …and a client whose backend's did.
BACKEND_LOST: Final = ProxyClose(CloseCode.BAD_GATEWAY, "connection lost")

# …and the reasons of those whose code is configured (drain.*_close_code).

#: The proxy's drain (SIGTERM, ``POST /drain``): ``drain.shutdown_close_code``.
PROXY_DRAINING: Final = "proxy draining"
#: A backend's drain: ``drain.backend_close_code``.
BACKEND_DRAINING: Final = "backend draining"
#: The backend closed with 1001/1012 and the client is told it restarts.
BACKEND_RESTARTING: Final = "backend restarting"
#: ``limits.max_connection_age`` reached: ``drain.backend_close_code``.
AGE_LIMIT: Final = "connection age limit"
#: The proxy stops with connections still open: ``drain.shutdown_close_code``.
PROXY_STOPPED: Final = "proxy stopped"

# …and a close of its own with a fixed code and a reconnect hint.

#: A rebalancing round moves the connection to a less loaded backend (``rebalance``):
#: 1012, so that clients reconnect as to a restarted server; the caller appends the
#: reconnect hint (``drain.reconnect_hint``).
REBALANCING: Final = ProxyClose(CloseCode.SERVICE_RESTART, "rebalancing")
