"""Session: one proxied connection, sans I/O.

Bytes go in with ``receive_data(side, data)`` / ``receive_eof(side)``; bytes to write
come out of ``data_to_send(side)``, and ``should_close(side)`` says when a transport
is done. The session never awaits, reads a clock or touches a socket.

The opening handshakes are wsproxy.core.upgrade's: until OPEN the session hands
the client's request and each backend's answer to its ``Upgrade`` and turns the
outcome into states and bytes (that module says why the driver holds one object).

Relaying without decoding
-------------------------
A client's frames are already masked as a backend expects, and a backend's frames are
unmasked as a client expects, so frames are forwarded as they came (PERF-NOTES.md). A
``_Flow`` per direction walks frame headers in place and skips payloads by arithmetic:
enough to keep frame boundaries (the proxy's own pings and closes go in between
frames), count messages, enforce the size limit and check what is visible without
reading payloads (opcodes, reserved bits, masking, control-frame rules, close codes
and reasons, §5). UTF-8 in text messages is the endpoints' business.

Closing
-------
Each leg has its own close handshake (LegState, whose table is in wsproxy.core.states
beside the session's: the session fires LegTriggers, it never assigns a leg state). A
close frame from one side is relayed to the other unless a close has already been
sent there; the peer's answer completes that leg. When the proxy itself closes a leg
(drain, revocation), the peer's answer is relayed on, which starts the other leg's
handshake with the same code. A leg that is lost or breaks the protocol is failed,
and the other leg gets a close of the proxy's own (wsproxy.core.closes): 1001 to a
backend whose client went away, 1014 to a client whose backend did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from operator import xor as _xor
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar

from wsproxy.core import frames
from wsproxy.core.closes import (
    BACKEND_ERROR,
    BACKEND_LOST,
    BAD_CONTROL_FRAME,
    BAD_DATA_FRAME,
    BAD_FRAME_LENGTH,
    BAD_MASKING,
    CLIENT_ERROR,
    CLIENT_LOST,
    TOO_BIG,
    CloseCode,
    ProxyClose,
    is_sendable,
)
from wsproxy.core.frames import CloseFrameError
from wsproxy.core.handshake import (
    Forwarding,
    Header,
    UpgradeRequest,
    UpstreamAccepted,
    error_response,
)
from wsproxy.core.http import ParsedRequest
from wsproxy.core.scan import SPEEDUPS, WHOLE_MESSAGE, PyRelay, RelayedProtocol
from wsproxy.core.scan import session_whole_messages as _whole_messages
from wsproxy.core.states import (
    LEG_CAN_RECEIVE,
    LEG_CAN_SEND,
    LEG_FINISHED,
    LEG_TRANSITIONS,
    TERMINAL,
    TRANSITIONS,
    LegState,
    LegTrigger,
    SessionState,
    Side,
    Trigger,
)
from wsproxy.core.upgrade import Opened, Upgrade
from wsproxy.errors import HandshakeRejected, InvalidTransition, UpstreamHandshakeFailed

if TYPE_CHECKING:  # the C twins are typed as their Python references
    from wsproxy.core.scan import PyFlowState as _FlowState
    from wsproxy.core.scan import PyRelay as _Relay
else:
    from wsproxy.core.scan import FlowState as _FlowState
    from wsproxy.core.scan import Relay as _Relay

#: Heartbeat pings carry this prefix (plus a per-process token) so that their pongs
#: are recognised and not relayed, while a peer's own pings pass end to end.
PING_PREFIX: Final = b"wsproxy:" + os.urandom(6).hex().encode()


#: ``last_pong`` while no heartbeat pong is waiting: shared, never written to (a pong
#: replaces it with a dict of its own), so an idle session holds no dict for it.
_NO_PONGS: Final[Mapping[Side, bytes]] = {}
_CLIENT: Final = Side.CLIENT
_OPEN: Final = SessionState.OPEN
#: What the other leg is told when one side breaks the protocol…
_FAILED_PEER: Final = {Side.CLIENT: CLIENT_ERROR, Side.UPSTREAM: BACKEND_ERROR}
#: …and when one side's transport ends without a close handshake.
_LOST_PEER: Final = {Side.CLIENT: CLIENT_LOST, Side.UPSTREAM: BACKEND_LOST}
_RESTART_CODES: Final = frozenset({CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART})
#: The codes _check_data_header answers with, as plain int globals: _scan compares
#: with one, and an int compares faster with an int than with an IntEnum member.
_PROTOCOL_ERROR: Final = int(CloseCode.PROTOCOL_ERROR)
_MESSAGE_TOO_BIG: Final = int(CloseCode.MESSAGE_TOO_BIG)
#: Whether _scan leaves a read's first frame to its own loop and asks the scanner only
#: from the second: on the Python fallback, where a call costs more than the loop's
#: take on one frame (ping-pong has one a read); not in C, which takes them all.
_HOLD_FIRST = SPEEDUPS != "c"
#: The first byte of a final close frame without RSV bits (Session._lone_close).
_CLOSE_B0: Final = bytes((0x88,))
# The opening's and the closing's states and triggers as plain globals: an Enum class's
# attribute goes through EnumType's __getattr__ hook on Python 3.11 (~900 instructions
# a look-up, a global ~40), and an upgrade took some ninety of them.
_UPSTREAM: Final = Side.UPSTREAM
_S_AWAIT_REQUEST: Final = SessionState.AWAIT_REQUEST
_S_CONNECTING: Final = SessionState.CONNECTING_UPSTREAM
_S_OPEN: Final = SessionState.OPEN
_S_CLOSING: Final = SessionState.CLOSING
_L_OPEN: Final = LegState.OPEN
_L_CLOSE_RECEIVED: Final = LegState.CLOSE_RECEIVED
_L_CLOSE_SENT: Final = LegState.CLOSE_SENT
_L_CLOSED: Final = LegState.CLOSED
_LT_SEND_CLOSE: Final = LegTrigger.SEND_CLOSE
_LT_RECEIVE_CLOSE: Final = LegTrigger.RECEIVE_CLOSE
_LT_GIVE_UP: Final = LegTrigger.GIVE_UP
_T_REQUEST_ACCEPTED: Final = Trigger.REQUEST_ACCEPTED
_T_UPSTREAM_ACCEPTED: Final = Trigger.UPSTREAM_ACCEPTED
_T_CLOSE_STARTED: Final = Trigger.CLOSE_STARTED
_T_BOTH_CLOSED: Final = Trigger.BOTH_CLOSED
_T_TRANSPORT_LOST: Final = Trigger.TRANSPORT_LOST
#: Side.value, and Side.other, without their Python-level descriptors.
_SIDE_NAME: Final = {Side.CLIENT: "client", Side.UPSTREAM: "upstream"}
_OTHER_SIDE: Final = {Side.CLIENT: Side.UPSTREAM, Side.UPSTREAM: Side.CLIENT}
#: parse_close_payload() of the payloads that are a code from 1000 to 1014 and no reason
#: (the closes of nearly every connection), looked up (~2k instructions less a close).
_BARE_CLOSES: Final[dict[bytes, tuple[int | None, str]]] = {
    code.to_bytes(2, "big"): (code, "") for code in range(1000, 1015) if is_sendable(code)
}


_State = TypeVar("_State")
_Trigger = TypeVar("_Trigger")


def _by_state(
    table: Mapping[tuple[_State, _Trigger], _State], states: Iterable[_State]
) -> dict[_State, dict[_Trigger, _State]]:
    """A transition table by state, then trigger (every state there, with no triggers if
    none moves it): a fire looks up without a (state, trigger) tuple made, hashed and
    compared (~300 instructions less a fire, eight an upgrade)."""
    by_state: dict[_State, dict[_Trigger, _State]] = {state: {} for state in states}
    for (state, trigger), after in table.items():
        by_state[state][trigger] = after
    return by_state


#: The transition tables by state, then trigger, for _fire and _Leg.fire.
_NEXT: Final = _by_state(TRANSITIONS, SessionState)
_LEG_NEXT: Final = _by_state(LEG_TRANSITIONS, LegState)


class _Leg:
    """One side's transport: its close handshake and what is waiting to be written."""

    __slots__ = ("close_received", "close_sent", "eof", "fail_close", "out", "side", "state")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.state = _L_OPEN
        self.out: list[bytes] = []
        #: (code, reason) of the close frames that went each way on this leg.
        self.close_received: tuple[int | None, str] | None = None
        self.close_sent: tuple[int | None, str] | None = None
        self.eof = False
        #: The close this leg gets once the other leg has closed: it broke the protocol.
        self.fail_close: ProxyClose | None = None

    def fire(self, trigger: LegTrigger) -> None:
        """Move this leg by its table (wsproxy.core.states): the only way it moves."""
        # next_leg_state()'s look-up, without its call (several fires a connection).
        state = _LEG_NEXT[self.state].get(trigger)
        if state is None:
            raise InvalidTransition(self.state, trigger)
        self.state = state


def _unmasked(payload: bytes, key: bytes) -> bytes:
    """A control frame's *payload* unmasked with *key*: a close code or a short ping
    (up to 4 bytes) XORed in one C call (~2k instructions less than unmask())."""
    if len(payload) <= 4:
        return bytes(map(_xor, payload, key))
    return frames.unmask(payload, key)


class _Flow(_FlowState):
    """Frame-boundary tracking for one direction: frames read from *src*, sent to *dst*.

    The state a read of whole messages touches (what remains of a frame in flight, a
    partial header, a message in progress, our frames waiting, the counters) is the
    base class's: wsproxy.core.scan.FlowState, compiled where it can be, so that the
    hot path is one ``take(data)`` per read (Session.relay).

    The rest of a flow is the base class's too, which starts it all:
    ``_Flow(src, dst, src_leg, dst_leg, max_size, masked)`` (the order of
    wsproxy.core.scan.PyFlowState's parameters), no Python ``__init__`` (~1.2k
    instructions a flow, two a connection).
    """

    __slots__ = ()

    src_leg: _Leg
    dst_leg: _Leg


#: Session.ending()'s answer: the data messages, bytes and undelivered messages to the
#: backend and to the client (messages_to_backend, messages_to_client, bytes_to_backend,
#: bytes_to_client, undelivered_to_backend, undelivered_to_client: the flows' counters),
#: the close code the client sent, the backend's, and the code the client was sent.
Ending: TypeAlias = tuple[int, int, int, int, int, int, int | None, int | None, int | None]


#: The longest frame (§5.2).
_MAX_FLOW: Final = (1 << 63) - 1


def _flow_limit(max_size: int) -> int:
    """*max_size* within the C twin's range: no frame is longer than 2^63 - 1 (§5.2),
    so a larger limit or a more negative one decides the same."""
    return max(-1, min(max_size, _MAX_FLOW))


class Session:
    """One proxied connection, from the client's first byte to both legs closed.

    The driver's loop: feed every read to ``receive_data(side, data)`` and every EOF to
    ``receive_eof(side)``, then write ``data_to_send(side)`` for both sides and close
    a transport once ``should_close(side)`` is true. In AWAIT_REQUEST, once
    ``request`` is set, the driver either ``reject()``s or ``accept()``s and calls
    ``connect_upstream()`` for a backend it has dialled; ``upstream_failure`` set
    means: try the next backend with ``connect_upstream()``, or ``reject()``; or,
    refusing it with a close of the proxy's own, ``refuse_with_close()``. A
    ``probe`` instead of a request is answered with ``reject()``; a ``plain`` one
    goes to an HTTP relay with its parser.
    """

    # Slots: an idle connection's memory is mostly its objects (10,000 held is a goal).
    # Hence also a slot per leg and per flow rather than a dict keyed by side.
    __slots__ = (
        "_client_flow", "_client_leg", "_upstream_flow", "_upstream_leg", "accepted",
        "backend_restarting", "close_reason", "conn_id", "initiator", "last_pong",
        "max_message_size", "rejected_status", "restart_code", "restart_reason", "state",
        "upgrade",
    )

    # Not keyword-only: a driver passes them in order, as keywords to a class go
    # through a dict (slot_tp_init), ~0.5k instructions each.
    def __init__(
        self,
        conn_id: str,
        max_message_size: int = 1 << 20,
        max_request_head: int = 16 << 10,
        restart_code: int | None = None,
        restart_reason: str | Callable[[], str] = "",
        plain_http: bool = False,
    ) -> None:
        self.conn_id = conn_id
        #: A backend closing with 1001/1012 is restarting: its client gets this code
        #: (SPEC: drain.backend_close_code) and reason instead of the backend's close;
        #: the reason may be given as a function, called only then.
        self.restart_code = restart_code
        self.restart_reason = restart_reason
        self.backend_restarting = False
        #: The opening handshakes while they last (None once OPEN).
        self.upgrade: Upgrade | None = Upgrade(max_request_head, plain_http)
        self.state = _S_AWAIT_REQUEST
        self.max_message_size = max_message_size
        self._client_leg = client_leg = _Leg(_CLIENT)
        self._upstream_leg = upstream_leg = _Leg(_UPSTREAM)
        #: The frames read from each side (see _flow()).
        limit = max_message_size  # _flow_limit()'s answer, without its call if in range
        if not -1 <= limit <= _MAX_FLOW:
            limit = _flow_limit(limit)
        # (src, dst, src_leg, dst_leg, max_size, masked): a client's frames are masked.
        self._client_flow = _Flow(_CLIENT, _UPSTREAM, client_leg, upstream_leg, limit, True)
        self._upstream_flow = _Flow(_UPSTREAM, _CLIENT, upstream_leg, client_leg, limit, False)
        #: Which side closed first: "client", "upstream" or "proxy".
        self.initiator: str | None = None
        self.close_reason: str | None = None
        #: The backend's 101, as the client's repeated it (headers not kept).
        self.accepted: UpstreamAccepted | None = None
        #: Status answered to the client when the upgrade was refused (101: with the
        #: proxy's own close, see refuse_with_close).
        self.rejected_status: int | None = None
        #: The payload of the latest heartbeat pong of each side, until take_pongs().
        self.last_pong: Mapping[Side, bytes] = _NO_PONGS

    def __repr__(self) -> str:
        return f"<Session {self.conn_id} {self.state.name}>"

    def _fire(self, trigger: Trigger) -> None:
        state = _NEXT[self.state].get(trigger)  # next_state()'s look-up (see _Leg.fire)
        if state is None:
            raise InvalidTransition(self.state, trigger)
        self.state = state

    def _leg(self, side: Side) -> _Leg:
        return self._client_leg if side is _CLIENT else self._upstream_leg

    def _flow(self, src: Side) -> _Flow:
        """The frames read from *src* (and written to the other side)."""
        return self._client_flow if src is _CLIENT else self._upstream_flow

    # Receiving…

    def receive_data(self, side: Side, data: bytes) -> None:
        """Feed bytes read from *side*'s transport. Then call data_to_send()."""
        state = self.state
        if state is _S_OPEN or state is _S_CLOSING:
            f = self._client_flow if side is _CLIENT else self._upstream_flow
            if data[:1] == _CLOSE_B0 and self._lone_close(f, data):
                return
            self._scan(f, data)
        elif state is _S_AWAIT_REQUEST and side is _CLIENT and self.request is None:
            self._receive_request(data)
        elif state is _S_CONNECTING and side is _UPSTREAM:
            self._receive_response(data)
        elif state is _S_CONNECTING or (
            state is _S_AWAIT_REQUEST and self.request is not None
        ):
            # A client that does not wait for our 101: keep its bytes for later. The
            # driver pauses reading the client meanwhile, so this stays small.
            assert self.upgrade is not None
            self.upgrade.keep_early(side, data)

    def relay(self, side: Side, data: bytes) -> bytes | None:
        """``receive_data`` for the driver's hot path: *data* itself when it is all
        that is to be written to the other side (a read of whole data messages while
        OPEN, and nothing else waiting there), else None: call data_to_send() as
        after receive_data().

        One call decides (``take``, wsproxy.core.scan.FlowState, compiled where it
        can be): the frame state is checked and counted as ``_scan`` would, without
        its loop.
        """
        f = self._client_flow if side is _CLIENT else self._upstream_flow
        if self.state is _OPEN and f.take(data):
            out = f.dst_leg.out
            if not out:
                return data
            out.append(data)
            return None
        self.receive_data(side, data)
        return None

    def relay_protocol(
        self, side: Side, write: Callable[[bytes], object], original: RelayedProtocol
    ) -> PyRelay:
        """A protocol for *side*'s transport while OPEN: ``relay`` and the write to the
        other side in one call per read (wsproxy.core.scan.PyRelay, compiled where it
        can be). *write*: the other transport's write; *original*: the protocol it
        stands in for, which gets every read the relay does not pass straight on (and
        every other callback), so the driver's path stays the one that decides.
        Once the session leaves OPEN every read goes there too.
        """
        f = self._client_flow if side is _CLIENT else self._upstream_flow
        return _Relay(f, f.dst_leg, self, _OPEN, write, original)

    def receive_eof(self, side: Side) -> None:
        """*side*'s transport ended (EOF or error). Then call data_to_send()."""
        leg = self._client_leg if side is _CLIENT else self._upstream_leg
        leg.eof = True
        state = self.state
        if state in TERMINAL:
            return
        if state is _S_AWAIT_REQUEST or (state is _S_CONNECTING and side is _CLIENT):
            self._terminate(_T_TRANSPORT_LOST)
            return
        if state is _S_CONNECTING:
            self.upstream_failed("connection closed during the handshake")
            return
        if leg.state is not _L_CLOSED:
            lost = _LOST_PEER[side]
            if self.initiator is None:
                self.initiator, self.close_reason = _SIDE_NAME[side], lost.reason
            self._lose(side, lost)
        self._settle()

    # The opening, decided by the Upgrade…

    @property
    def request(self) -> UpgradeRequest | None:
        """The upgrade request once it has arrived and passed the checks."""
        return None if self.upgrade is None else self.upgrade.request

    @request.setter
    def request(self, request: UpgradeRequest) -> None:
        """The request as the backend is to see it (auth took its credentials out)."""
        assert self.upgrade is not None
        self.upgrade.request = request

    @property
    def probe(self) -> str | None:
        """The path of a probe that came instead of an upgrade (see Upgrade.probe)."""
        return None if self.upgrade is None else self.upgrade.probe

    @property
    def plain(self) -> ParsedRequest | None:
        """A request without Upgrade, for an HTTP relay (see Upgrade.plain)."""
        return None if self.upgrade is None else self.upgrade.plain

    @property
    def upstream_failure(self) -> str | None:
        """Why the backend being tried failed: try the next with connect_upstream()."""
        return None if self.upgrade is None else self.upgrade.upstream_failure

    @property
    def auth_subprotocol(self) -> str | None:
        """The auth subprotocol offer the 101 selects if the backend selects none."""
        return None if self.upgrade is None else self.upgrade.auth_subprotocol

    @auth_subprotocol.setter
    def auth_subprotocol(self, offer: str | None) -> None:
        assert self.upgrade is not None
        self.upgrade.auth_subprotocol = offer

    def _receive_request(self, data: bytes) -> None:
        assert self.upgrade is not None
        try:
            self.upgrade.receive_request(data)
        except HandshakeRejected as exc:
            self._reject(exc.status, exc.reason, exc.headers)

    def receive_parsed(self, parsed: ParsedRequest) -> None:
        """Take a request an HTTP relay parsed on a keep-alive connection, as if it had
        just arrived (instead of receive_data()). Then call data_to_send()."""
        if self.upgrade is None or self.state is not SessionState.AWAIT_REQUEST:
            raise InvalidTransition(self.state, "receive_parsed")
        try:
            self.upgrade.receive_parsed(parsed)
        except HandshakeRejected as exc:
            self._reject(exc.status, exc.reason, exc.headers)

    def accept(self) -> None:
        """The driver's checks passed (limits, origin, auth): go on to a backend."""
        self._fire(_T_REQUEST_ACCEPTED)

    def reject(
        self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
        *, shutting_down: bool = False,
    ) -> None:
        """Answer the client with an HTTP error instead of 101 and end the connection.

        *shutting_down*: the proxy refuses because it is draining (Trigger.SHUTDOWN).
        """
        self._reject(status, reason, headers, Trigger.SHUTDOWN if shutting_down else None)

    def _reject(
        self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
        trigger: Trigger | None = None,
    ) -> None:
        if trigger is None:
            trigger = (
                Trigger.REQUEST_REJECTED
                if self.state is SessionState.AWAIT_REQUEST
                else Trigger.UPSTREAM_REJECTED
            )
        self._terminate(trigger)
        self.rejected_status = status
        self.close_reason = reason
        self._client_leg.out.append(error_response(status, reason, headers))
        self._upstream_leg.out = []

    def refuse_with_close(self, close: ProxyClose) -> None:
        """Answer the client with the proxy's own 101 and close it at once with
        *close* (``admission.reject_with: close``): no backend is asked.

        After the driver's checks (auth included) passed: the UPSTREAM leg is never
        used, the client's close handshake runs as any other (its answer ends the
        session as CLOSED; none within the driver's close timeout, as FAILED), and
        what it sends meanwhile goes nowhere. ``rejected_status`` is 101.
        """
        upgrade = self.upgrade
        if upgrade is None or upgrade.request is None or (
            self.state is not SessionState.CONNECTING_UPSTREAM
        ):
            raise InvalidTransition(self.state, "refuse_with_close")
        response, early = upgrade.own_accept()
        self._fire(Trigger.REFUSED_WITH_CLOSE)
        self._upstream_leg.fire(LegTrigger.UNUSED)
        self._upstream_leg.out = []
        self.upgrade = None
        self.rejected_status = 101
        self._client_leg.out.append(response)
        self._send_close(Side.CLIENT, close.code, close.reason, initiator="proxy")
        if early:
            self._scan(self._client_flow, early)
        self._settle()

    def connect_upstream(
        self, *, target: str, authority: str, path_prefix: str, forwarding: Forwarding,
        pass_extensions: bool,
        owned_headers: frozenset[bytes] = frozenset(),
        client_headers: tuple[Header, ...] = (),
    ) -> None:
        """A transport to backend *target* is up: write our handshake on it; the
        client's 101 carries *client_headers* too (a sticky cookie) if it accepts.

        Call again on a new transport to retry with another backend after
        ``upstream_failure`` was set.
        """
        upgrade = self.upgrade
        if upgrade is None or upgrade.request is None:
            raise InvalidTransition(self.state, "connect_upstream")
        if upgrade.upstream_failure is not None:
            self._fire(Trigger.UPSTREAM_RETRY)
        request = upgrade.connect(
            target=target, authority=authority, path_prefix=path_prefix,
            forwarding=forwarding, pass_extensions=pass_extensions, owned_headers=owned_headers,
            client_headers=client_headers,
        )
        upstream = self._upstream_leg
        upstream.out = [request]
        upstream.eof = False

    def upstream_failed(self, reason: str) -> None:
        """Dialling or the handshake failed: set ``upstream_failure``."""
        if self.upgrade is not None:
            self.upgrade.upstream_failure = reason
        self._upstream_leg.out = []

    def _receive_response(self, data: bytes) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        try:
            opened = upgrade.receive_response(data)
        except UpstreamHandshakeFailed as exc:
            self._reject(exc.status, "backend refused the upgrade")
            return
        if opened is not None:
            self._open(opened)
        elif upgrade.upstream_failure is not None:
            self._upstream_leg.out = []

    def _open(self, opened: Opened) -> None:
        """The relay takes over from the Upgrade, with what came early on each side."""
        self._fire(_T_UPSTREAM_ACCEPTED)
        accepted, response, client_early, upstream_early = opened
        self.accepted = accepted
        if accepted.extensions and b"permessage-deflate" in accepted.extensions:
            for flow in (self._client_flow, self._upstream_flow):
                flow.rsv_allowed = frames.RSV1
        elif accepted.extensions:
            # An extension we do not know: its reserved bits are its own business.
            for flow in (self._client_flow, self._upstream_flow):
                flow.rsv_allowed = frames.RSV_BITS
        self._client_leg.out.append(response)
        # The HTTP state machines and headers are done with: an open connection keeps
        # only its legs (10,000 idle connections should cost little).
        self.upgrade = None
        if client_early:
            self._scan(self._client_flow, client_early)
        if upstream_early:
            self._scan(self._upstream_flow, upstream_early)

    # Sending…

    def data_to_send(self, side: Side) -> list[bytes]:
        """Bytes to write on *side*'s transport, in order; call after every input."""
        leg = self._client_leg if side is _CLIENT else self._upstream_leg
        out = leg.out
        if out:
            leg.out = []
        return out

    def outputs(
        self, client: bool, upstream: bool
    ) -> tuple[list[bytes], bool, list[bytes], bool]:
        """data_to_send() and should_close() of the CLIENT side (if *client*) and of the
        UPSTREAM side (if *upstream*) in one call, for a driver's flush of both: (the
        client's bytes, close it, the backend's bytes, close it). A side not asked for
        keeps its bytes and reads ([], False)."""
        client_out: list[bytes] = []
        upstream_out: list[bytes] = []
        close_client = close_upstream = False
        if client:
            leg = self._client_leg
            client_out = leg.out
            if client_out:
                leg.out = []
            close_client = leg.state in LEG_FINISHED
        if upstream:
            leg = self._upstream_leg
            upstream_out = leg.out
            if upstream_out:
                leg.out = []
            close_upstream = leg.state in LEG_FINISHED
        return client_out, close_client, upstream_out, close_upstream

    def should_close(self, side: Side) -> bool:
        """Whether *side*'s transport is done: close it after writing data_to_send().

        A finished UPSTREAM leg ends cleanly when the backend closes first (§7.1.1):
        the driver may wait for its EOF a little before closing itself.
        """
        return self._leg(side).state in LEG_FINISHED

    def leg_state(self, side: Side) -> LegState:
        return self._leg(side).state

    def eof_received(self, side: Side) -> bool:
        """Whether *side*'s peer has closed its end of the transport."""
        return self._leg(side).eof

    def upstream_eof_awaited(self) -> bool:
        """Whether the backend's close handshake is done and its end of the transport
        not closed yet (§7.1.1: the driver may wait a little for it to close first)."""
        leg = self._upstream_leg
        return leg.state is _L_CLOSED and not leg.eof

    def take_pongs(self) -> Mapping[Side, bytes]:
        """The heartbeat pongs that came in (``last_pong``), which is then emptied."""
        pongs, self.last_pong = self.last_pong, _NO_PONGS
        return pongs

    def send_ping(self, side: Side, payload: bytes) -> None:
        """Send a heartbeat ping to *side*; its pong appears in ``last_pong[side]``."""
        if self._leg(side).state is LegState.OPEN:
            self._inject(side, frames.build_frame(
                frames.PING, PING_PREFIX + payload, mask=side is Side.UPSTREAM))

    def close(self, side: Side, code: int, reason: str = "") -> None:
        """Start a close handshake of our own on *side* (drain, revocation).

        The peer's answer is relayed to the other side, as if it had closed first;
        messages it sends before answering are still delivered.
        """
        if self.state in (SessionState.OPEN, SessionState.CLOSING):
            self._send_close(side, code, reason, initiator="proxy")
            self._settle()

    def abort(self) -> None:
        """Give up on both legs at once (a timer ran out): close both transports."""
        if self.state not in TERMINAL:
            self._terminate(Trigger.TIMED_OUT)

    def _terminate(self, trigger: Trigger) -> None:
        self._fire(trigger)
        for leg in (self._client_leg, self._upstream_leg):
            if leg.state is not _L_CLOSED:
                leg.fire(_LT_GIVE_UP)

    # Resumable sessions (wsproxy.io.resume)…

    def client_at_boundary(self) -> bool:
        """Whether no message of the client is half relayed (a resume can start over)."""
        flow = self._client_flow
        return not flow.remaining and not flow.in_message and not flow.pending

    def client_last_frame_open(self) -> bool:
        """Whether a message of the client's is on its way in its last frame (the only
        one of a message sent whole, as most clients send them): counted already,
        from that frame's header, and not whole yet."""
        flow = self._client_flow
        return bool(flow.remaining) and not flow.in_message

    def client_messages_whole(self) -> int:
        """The client's data messages relayed whole (``messages(UPSTREAM)`` less one
        whose last frame is still on its way)."""
        return self._client_flow.messages - (1 if self.client_last_frame_open() else 0)

    def drop_client_partial(self) -> None:
        """Forget the start of a frame header of a client socket that is gone."""
        self._client_flow.partial = b""

    def rewind_client(self, messages: int, relayed: int) -> None:
        """The client's socket died in the middle of a message of which nothing has
        reached the backend (a resumable session holds such a message back until it is
        whole: wsproxy.io.resume's UpstreamGate, which keeps its bytes): the client's
        flow goes back to the boundary after its first *messages* messages
        (*relayed* bytes), as if those after had never come; the client sends them
        again once it resumes. Our own frames that waited for its frame in flight are
        queued now, at that boundary."""
        flow = self._client_flow
        flow.messages = messages
        flow.bytes = relayed
        flow.remaining = 0
        flow.in_message = False
        flow.partial = b""
        if flow.pending:
            self._flush_pending(flow)

    # Accounting…

    def messages(self, side: Side) -> int:
        """Data messages relayed *to* side."""
        # The flow *from* the other side; no Side.other (a property costs ~2.5k
        # instructions): metrics and the closing summary ask six of these per connection.
        return (self._upstream_flow if side is _CLIENT else self._client_flow).messages

    def bytes_relayed(self, side: Side) -> int:
        """Bytes relayed *to* side, frame headers included."""
        return (self._upstream_flow if side is _CLIENT else self._client_flow).bytes

    def undelivered(self, side: Side) -> int:
        """Messages for side dropped because it had already been sent a close."""
        return (self._upstream_flow if side is _CLIENT else self._client_flow).undelivered

    def close_codes(self) -> dict[str, int | None]:
        """The close code each side sent (None: none, or an empty close frame)."""
        client, upstream = self.close_codes_received()
        return {"client": client, "upstream": upstream}

    def close_codes_received(self) -> tuple[int | None, int | None]:
        """close_codes() as a tuple: (the client's, the backend's)."""
        client, upstream = self._client_leg.close_received, self._upstream_leg.close_received
        return client[0] if client else None, upstream[0] if upstream else None

    def flows_to(self) -> tuple[_Flow, _Flow]:
        """The counters of what went (to the client, to the backend): ``messages``,
        ``bytes`` and ``undelivered`` (as messages(), bytes_relayed(), undelivered()),
        read in one call at the end of a connection."""
        return self._upstream_flow, self._client_flow

    def ending(self) -> Ending:
        """What the end of a connection reports, read in one call: the counters of
        flows_to()'s two flows, close_codes_received()'s two codes and
        close_code_sent(CLIENT). The metrics and the connection.closed line both read
        this, each counter read once (a C flow's costs ~200 instructions a read)."""
        to_client, to_backend = self.flows_to()
        client_code, upstream_code = self.close_codes_received()
        return (
            to_backend.messages, to_client.messages, to_backend.bytes, to_client.bytes,
            to_backend.undelivered, to_client.undelivered, client_code, upstream_code,
            self.close_code_sent(_CLIENT),
        )

    def close_code_sent(self, side: Side) -> int | None:
        """The code of the close frame *side* was sent (relayed or ours), if any."""
        sent = self._leg(side).close_sent
        return sent[0] if sent else None

    # The relay: frame boundaries in place…

    def _scan(self, f: _Flow, data: bytes) -> None:
        if f.src_leg.state not in LEG_CAN_RECEIVE:
            return  # §5.5.1: nothing may follow a close; a failed leg is not read.
        if f.partial:
            data = f.partial + data
            f.partial = b""
        dst = f.dst_leg
        deliver = dst.state in LEG_CAN_SEND
        n = len(data)
        pos = 0
        if f.remaining:
            pos = min(f.remaining, n)
            f.remaining -= pos
            if f.remaining == 0 and (f.pending or f.pending_close):
                self._forward(f, data, 0, pos, 0, deliver)
                self._flush_pending(f)
                deliver = dst.state in LEG_CAN_SEND
                data, n, pos = data[pos:], n - pos, 0
        start = 0
        messages = 0
        mask_bit = 0x80 if f.masked else 0
        mask_len = 4 if f.masked else 0
        max_size = self.max_message_size
        rsv_allowed = f.rsv_allowed
        in_message = f.in_message
        inject = True if f.pending else f.pending_close is not None
        whole = WHOLE_MESSAGE[rsv_allowed]
        skip = _whole_messages
        hold = inject or _HOLD_FIRST  # no scanner for now (see _HOLD_FIRST)
        while pos + 1 < n:
            if not in_message and not hold:
                # The common case, compiled where it can be (wsproxy.core.scan): whole
                # messages in one frame each, skipped up to the first frame that needs
                # a decision below.
                pos, skipped = skip(data, pos, mask_bit, rsv_allowed, max_size)
                messages += skipped
                if pos + 1 >= n:
                    if pos > n:  # the last one goes on in the next reads
                        f.remaining = pos - n
                        pos = n
                    break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                head = 2 + mask_len
            elif length == 126:
                head = 4 + mask_len
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            else:
                head = 10 + mask_len
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length >> 63:  # §5.2: the most significant bit MUST be 0
                    self._forward(f, data, start, pos, messages, deliver)
                    return self._fail(f.src, BAD_FRAME_LENGTH)
            if b1 & 0x80 != mask_bit:
                self._forward(f, data, start, pos, messages, deliver)
                return self._fail(f.src, BAD_MASKING)
            if whole[b0] and not in_message and length <= max_size:
                messages += 1  # a whole message in one frame, a longer one
            elif b0 & 0x08:  # a control frame
                if length > frames.MAX_CONTROL_PAYLOAD:  # fail on the header, buffer nothing
                    self._forward(f, data, start, pos, messages, deliver)
                    return self._fail(f.src, BAD_CONTROL_FRAME)
                if n - pos < head + length:
                    break  # a control frame is kept whole: it is at most 131 bytes
                self._forward(f, data, start, pos, messages, deliver)
                messages = 0
                end = pos + head + length
                f.in_message = in_message
                if not self._control(f, b0, data[pos:end], head, length):
                    return
                pos = start = end
                deliver = dst.state in LEG_CAN_SEND
                hold = inject = True if f.pending else f.pending_close is not None
                if f.src_leg.state not in LEG_CAN_RECEIVE:
                    return
                continue
            else:
                f.in_message = in_message
                error = self._check_data_header(f, b0, b0 & 0x0F, length, max_size)
                in_message = f.in_message
                if error == _PROTOCOL_ERROR:
                    self._forward(f, data, start, pos, messages, deliver)
                    return self._fail(f.src, BAD_DATA_FRAME)
                if error:  # too big: this frame is never forwarded, but still skipped
                    self._forward(f, data, start, pos, messages, deliver)
                    messages = 0
                    start = pos
                    self._close_too_big(f)
                    deliver = False
                if b0 & 0x80:
                    messages += 1
            end = pos + head + length
            if end > n:
                f.remaining = end - n
                pos = n
                break
            pos = end
            hold = inject
            if inject:
                self._forward(f, data, start, pos, messages, deliver)
                messages = 0
                start = pos
                self._flush_pending(f)
                deliver = dst.state in LEG_CAN_SEND
                hold = inject = False
        f.in_message = in_message
        if pos < n:
            f.partial = data[pos:]
        self._forward(f, data, start, pos, messages, deliver)

    def _lone_close(self, f: _Flow, data: bytes) -> bool:
        """A read that is one whole close frame and nothing else, where _scan() would
        read nothing before it (no frame in flight, no partial header, nothing of ours
        waiting): handled as _scan() and _control() would (the end of every
        connection, twice; their loop's setup cost ~8k instructions a frame).
        False: _scan() is to read it."""
        n = len(data)
        head = 6 if f.masked else 2
        length = n - head
        if not 0 <= length < 126 or data[1] != f.mask_bit | length or f.partial or (
            f.remaining or f.pending or f.pending_close is not None
            or f.src_leg.state not in LEG_CAN_RECEIVE
        ):
            return False
        if head == 2:
            payload = data[2:]
        elif length == 2:  # a code and no reason, the usual close: unmasked by hand
            payload = bytes((data[6] ^ data[2], data[7] ^ data[3]))
        else:
            payload = _unmasked(data[6:], data[2:6])
        self._receive_close(f, data, payload)
        return True

    def _forward(
        self, f: _Flow, data: bytes, start: int, end: int, messages: int, deliver: bool
    ) -> None:
        if start >= end:
            return
        if not deliver:
            f.undelivered += messages
            return
        chunk = data if start == 0 and end == len(data) else data[start:end]
        f.dst_leg.out.append(chunk)
        f.messages += messages
        f.bytes += end - start

    def _check_data_header(
        self, f: _Flow, b0: int, opcode: int, length: int, max_size: int
    ) -> int:
        """0 when a data frame's header is fine, else the close code to fail with."""
        if opcode > 2:
            return _PROTOCOL_ERROR  # reserved opcode (§5.2)
        rsv = b0 & frames.RSV_BITS
        if opcode == frames.CONTINUATION:
            if not f.in_message or (rsv and f.rsv_allowed != frames.RSV_BITS):
                return _PROTOCOL_ERROR
            room = f.message_room - length
        else:
            if f.in_message or rsv & ~f.rsv_allowed:
                return _PROTOCOL_ERROR
            if rsv and f.rsv_allowed == frames.RSV1:
                # Compressed (permessage-deflate): a message of max_size bytes may take
                # deflate's worst case on the wire, which is all the proxy sees.
                room = frames.deflate_bound(max_size) - length
            else:
                room = max_size - length
        f.message_room = room
        f.in_message = not b0 & 0x80
        return _MESSAGE_TOO_BIG if room < 0 else 0

    def _close_too_big(self, f: _Flow) -> None:
        # SPEC: a message over the limit closes the whole connection with 1009. Both
        # legs get our close; each peer's answer completes its own leg.
        for side in (f.dst, f.src):
            self._send_close(side, *TOO_BIG, initiator="proxy")
        self._settle()

    def _control(self, f: _Flow, b0: int, frame: bytes, head: int, length: int) -> bool:
        """Handle one whole control frame; False when the source leg was failed."""
        opcode = b0 & 0x0F
        if opcode > frames.PONG or not b0 & 0x80 or b0 & frames.RSV_BITS or length > 125:
            self._fail(f.src, BAD_CONTROL_FRAME)
            return False
        payload = frame[head:]
        if f.masked:
            payload = _unmasked(payload, frame[head - 4 : head])
        if opcode == frames.CLOSE:
            return self._receive_close(f, frame, payload)
        if opcode == frames.PONG and payload.startswith(PING_PREFIX):
            self.last_pong = {**self.last_pong, f.src: payload[len(PING_PREFIX) :]}
            return True
        if f.dst_leg.state in LEG_CAN_SEND:
            f.dst_leg.out.append(frame)  # a peer's ping or pong: end to end
        return True

    def _receive_close(self, f: _Flow, frame: bytes, payload: bytes) -> bool:
        parsed = _BARE_CLOSES.get(payload)  # the usual close: a code, no reason
        if parsed is None:
            try:
                parsed = frames.parse_close_payload(payload)
            except CloseFrameError as exc:
                self._fail(f.src, ProxyClose(exc.code, str(exc)))
                return False
        code, reason = parsed
        src = f.src_leg
        dst = f.dst_leg
        as_it_came = self._relays_as_it_came(f.src, src.state, dst, code)
        src.close_received = parsed
        src.fire(_LT_RECEIVE_CLOSE)
        if self.initiator is None:
            self.initiator = _SIDE_NAME[f.src]
        if as_it_came:
            # Relayed as it came, its answer to come back the same way (the first close
            # of the connection, or the answer to the other side's).
            dst.out.append(frame)
            self._sent_close(dst, code, reason)
            self._settle()
            return True
        if dst.fail_close is not None and dst.state in LEG_CAN_SEND:
            # The answer we waited for before telling a broken peer why (see _fail);
            # its own close is not awaited: it broke the protocol.
            self._send_close(f.dst, *dst.fail_close, initiator=None)
            dst.fire(LegTrigger.ABANDON)
        elif dst.state in LEG_CAN_SEND:
            # The backend is going away (_relays_as_it_came): its client gets a restart
            # close of ours at once, and we answer the backend ourselves.
            self.backend_restarting = True
            self._send_close(f.src, code, reason, initiator=None)
            restart = self.restart_reason  # made when needed: it may carry a random hint
            reason = restart if isinstance(restart, str) else restart()
            self._send_close(f.dst, self.restart_code, reason, initiator=None)
        elif src.state is _L_CLOSE_RECEIVED:
            # The other side is gone or closing already: answer this one ourselves.
            self._send_close(f.src, code, reason, initiator=None)
        self._settle()
        return True

    def _relays_as_it_came(
        self, side: Side, src_before: LegState, dst: _Leg, code: int | None
    ) -> bool:
        """Whether a close read from *side* (whose leg was *src_before*) goes on to the
        other leg *dst* as it came: that leg can still send and waits for no broken
        peer's answer (see _fail), and it is not a backend going away (1001/1012, the
        first close, ``restart_code`` set), whose client gets the proxy's restart close
        instead. The one rule of _receive_close and relay_close."""
        return dst.fail_close is None and dst.state in LEG_CAN_SEND and not (
            side is _UPSTREAM and src_before is _L_OPEN and code in _RESTART_CODES
            and self.restart_code is not None
        )

    # Closing…

    def relay_close(self, side: Side, frame: bytes, code: int | None, reason: str) -> bool:
        """A read from *side* that is one whole close *frame* (*code*, *reason*: what
        frames.parse_close_payload reads from it), checked by a relay protocol
        (wsproxy.core.scan.PyRelay._close: nothing of a frame in flight, no partial
        header, none of our frames waiting). When the session would relay it as it came
        (``_receive_close``'s usual ways: the first close of the connection, or the
        answer to the other side's) and nothing waits on either leg, the legs and the
        state move as they would there and *frame* itself is queued for the other side:
        True (then call data_to_send() and should_close(), as after receive_data()).
        Else False, with nothing changed: the read goes the driver's way
        (``receive_data``)."""
        state = self.state
        if state is not _S_OPEN and state is not _S_CLOSING:
            return False
        if side is _CLIENT:
            src, dst = self._client_leg, self._upstream_leg
        else:
            src, dst = self._upstream_leg, self._client_leg
        before = src.state
        if (before is not _L_OPEN and before is not _L_CLOSE_SENT) or src.out or dst.out:
            return False
        if not self._relays_as_it_came(side, before, dst, code):
            return False
        src.close_received = (code, reason)
        src.fire(_LT_RECEIVE_CLOSE)
        if self.initiator is None:
            self.initiator = _SIDE_NAME[side]
        self._sent_close(dst, code, reason)
        dst.out.append(frame)
        self._settle()
        return True

    def _send_close(
        self, side: Side, code: int | None, reason: str, *, initiator: str | None
    ) -> None:
        leg = self._leg(side)
        if leg.state not in LEG_CAN_SEND:
            return
        if initiator is not None and self.initiator is None:
            self.initiator = initiator
            self.close_reason = reason
        frame = frames.build_close(code, reason, mask=side is _UPSTREAM)
        flow = self._upstream_flow if side is _CLIENT else self._client_flow  # towards side
        if flow.remaining:
            flow.pending_close = (frame, code, reason)  # after the frame in flight
        else:
            leg.out.append(frame)
            self._sent_close(leg, code, reason)

    def _sent_close(self, leg: _Leg, code: int | None, reason: str) -> None:
        leg.close_sent = (code, reason)
        leg.fire(_LT_SEND_CLOSE)

    def _inject(self, side: Side, frame: bytes) -> None:
        flow = self._flow(side.other)
        if flow.remaining:
            flow.pending += (frame,)
        else:
            self._leg(side).out.append(frame)

    def _flush_pending(self, f: _Flow) -> None:
        leg = f.dst_leg
        if f.pending:
            if leg.state in LEG_CAN_SEND:
                leg.out.extend(f.pending)
            f.pending = ()
        if f.pending_close is not None:
            frame, code, reason = f.pending_close
            f.pending_close = None
            if leg.state in LEG_CAN_SEND:
                leg.out.append(frame)
                self._sent_close(leg, code, reason)
                self._settle()

    def _fail(self, side: Side, close: ProxyClose) -> None:
        """*side* broke the protocol: stop reading it, close the other leg, tell it why.

        Messages of *side* that were relayed before the bad frame were accepted: the
        other side's answers to them still reach *side*. So the other leg is closed
        first, what it sends until its close is relayed, and *side* gets *code* when
        that close comes back (or when the close handshake times out).
        """
        if self.initiator is None:
            self.initiator = "proxy"
            self.close_reason = close.reason
        other_side = _OTHER_SIDE[side]
        leg, other = self._leg(side), self._leg(other_side)
        in_flight = self._flow(side).remaining or self._flow(other_side).remaining
        if leg.state is LegState.OPEN and other.state is LegState.OPEN and not in_flight:
            leg.fire(LegTrigger.PROTOCOL_BROKEN)  # nothing more is read from it
            leg.fail_close = close
            self._send_close(other_side, *_FAILED_PEER[side], initiator=None)
            self._settle()
            return
        self._send_close(side, *close, initiator=None)
        self._lose(side, _FAILED_PEER[side])
        self._settle()

    def _lose(self, side: Side, close: ProxyClose) -> None:
        """Give up on *side*; the other leg gets *close*, or the answer it waits for."""
        self._leg(side).fire(_LT_GIVE_UP)
        other_side = _OTHER_SIDE[side]
        towards = self._flow(other_side)
        towards.pending, towards.pending_close = (), None  # nothing more goes to side
        other = self._leg(other_side)
        if self._flow(side).remaining and other.state in LEG_CAN_SEND:
            # The frame in flight to the other side can never be completed, so no
            # close frame can follow it: that transport has to end without one.
            other.fire(_LT_GIVE_UP)
        elif other.state is _L_OPEN:
            self._send_close(other_side, *close, initiator="proxy")
        elif other.state is _L_CLOSE_RECEIVED:
            answer = other.fail_close or other.close_received
            if answer is not None:
                self._send_close(other_side, *answer, initiator=None)
            if other.fail_close is not None:
                other.fire(LegTrigger.ABANDON)

    def _settle(self) -> None:
        """Derive the joint state from the two legs (h11's state-triggered transitions)."""
        client, upstream = self._client_leg.state, self._upstream_leg.state
        if self.state is _S_OPEN and (client is not _L_OPEN or upstream is not _L_OPEN):
            self._fire(_T_CLOSE_STARTED)
        if self.state is _S_CLOSING:
            if client is _L_CLOSED and upstream is _L_CLOSED:
                self._fire(_T_BOTH_CLOSED)
            elif client in LEG_FINISHED and upstream in LEG_FINISHED:
                self._fire(_T_TRANSPORT_LOST)

