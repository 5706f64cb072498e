"""The per-connection driver: asyncio Protocols around one sans-I/O Session.

The data plane runs on asyncio Protocols rather than anyio streams: measured here,
streams cost about five times more per small message and several times the memory
per idle connection (PERF-NOTES.md). Backpressure is the transports' own: when one
side's write buffer fills (``pause_writing``), the other side stops being read.
An OPEN connection's reads are relayed at once (wsproxy.io.direct); what the session
makes for the handshake and the closes waits in its queues for the end of the loop's
pass (``_flush_soon``, wsproxy.io.pass_end), so that a pass's writes wake each peer's
CPU once, not once a write.

A connection holds no task while it relays: only two transports and the session.
Its deadlines are entries of wsproxy.io.deadlines (the request's, the dial's) or
nothing at all (the close handshake's and the wait for the backend's EOF, which the
sweeper's ``tick`` checks: most closes are answered at once, and a deadline armed and
disarmed for each cost ~4k instructions). Not even the upgrade makes a task: a
backend's link (wsproxy.io.links: plain, at a numeric address) is connected with no
coroutine at all, the engine telling the attempt's UpstreamProtocol as it would tell
a future; and the coroutine that connects through the loop otherwise (TLS, a name;
the loop's create_connection is one) is run by hand by that UpstreamProtocol
(wsproxy.io.steps), which the process keeps and cancels as it does its tasks
(``ctx.drive``). limits.backend_timeout
is a deadline, and the backend's answer is settled where it is read (``_tried``).

The listener's protocols that feed a Connection, and the hand-over to plain HTTP
and back, are wsproxy.io.front's.

A connection obeys the config it was accepted under (wsproxy.config, "When a value
is read"): ``settings``, taken once in ``__init__`` and handed on to the HttpRelay its
client may move to. ``self.ctx`` is asked only for what the rule calls live: the
refusals, the balancer and its hash key, the backend TLS context.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

from wsproxy.auth import AuthFailed
from wsproxy.core import closes
from wsproxy.core.handshake import UpgradeRequest, client_address, plain_ip
from wsproxy.core.http import ParsedRequest
from wsproxy.core.liveness import Due, Liveness, ping_payload, ping_sent_at
from wsproxy.core.resume import ResumeAsk, take_param
from wsproxy.core.session import Ending, Session
from wsproxy.core.states import TERMINAL, LegState, SessionState, Side
from wsproxy.io import direct
from wsproxy.io.pass_end import close_in_time
from wsproxy.io.ports import DRAINING, CloseRefusal
from wsproxy.io.resume import ResumeState, hand_over, resume_into
from wsproxy.io.steps import Steps
from wsproxy.io.upstream import (
    NO_BACKEND,
    OUT_OF_DESCRIPTORS,
    OutOfDescriptors,
    authenticate,
    candidates,
    dial_backend,
    start_link,
    sticky_header,
    take_sticky,
)
from wsproxy.log import closed_line_of, get_logger

if TYPE_CHECKING:
    from wsproxy.auth import Identity
    from wsproxy.core.balance import BackendState
    from wsproxy.io.ports import ConnectionOwner, ConnectionSettings

log = get_logger()

#: How long a backend may take to close its socket after both close frames went
#: (RFC 6455 §7.1.1: the server closes first, which keeps TIME_WAIT on its side).
UPSTREAM_EOF_WAIT: Final = 2.0

CLIENT: Final = Side.CLIENT
UPSTREAM: Final = Side.UPSTREAM
_OPEN: Final = SessionState.OPEN
# The states as plain globals: an Enum class's attribute goes through EnumType's
# __getattr__ hook on Python 3.11 (~900 instructions a look-up, a global ~40).
_AWAIT_REQUEST: Final = SessionState.AWAIT_REQUEST
_CONNECTING: Final = SessionState.CONNECTING_UPSTREAM
_CLOSING: Final = SessionState.CLOSING
_REJECTED: Final = SessionState.REJECTED
_OTHER: Final = {CLIENT: UPSTREAM, UPSTREAM: CLIENT}
#: The failures the session answers by itself, by status.
_STATUS_FAILURES: Final = {400: "bad_request", 426: "bad_version", 431: "head_too_large"}
#: SessionState.value without the Enum's Python-level descriptor (~2k instructions).
_STATE_VALUE: Final = {state: state.value for state in SessionState}
#: Which of a connection's two timers is armed (Connection._timer).
_HANDSHAKE: Final = 1
_CLOSE: Final = 2


class HttpDoor(Protocol):
    """Where a Connection hands its client over when the first request is plain HTTP
    (``plain_http: proxy``): the front door (wsproxy.io.front)."""

    #: The process its connections belong to (each one's ``ctx``).
    ctx: ConnectionOwner[Connection]

    def to_http(
        self, transport: asyncio.Transport, parsed: ParsedRequest, *, conn_id: str, peer_ip: str,
        settings: ConnectionSettings,
    ) -> None:
        """Let an HTTP relay serve *transport*, starting with the request in *parsed*,
        under the connection's *settings*."""


class UpstreamProtocol(Steps, asyncio.Protocol):
    """The protocol of one connection to a backend, and its dial: one object an attempt.

    The dial is either a link's connect (io.links, ``start_link``: no coroutine, the
    engine tells this object as it would tell a future: ``done``, ``set_result``,
    ``set_exception``) or the coroutine that connects through the loop (TLS, a backend
    by name, no links), run by hand (the steps: wsproxy.io.steps).

    A backend given up on during the upgrade is ``detach()``ed, so that its late
    callbacks cannot touch the connection that has moved on to the next backend.
    """

    __slots__ = ("_conn", "link")

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn
        #: The link being connected, while it is (a link's dial).
        self.link: asyncio.Transport | None = None
        self._coro = None  # (Steps': ``running`` is false until a coroutine is started)

    def detach(self) -> None:
        self._conn = None

    def give_up(self) -> None:
        """The dial is abandoned (limits.backend_timeout): its socket closes."""
        link, self.link = self.link, None
        if link is not None:
            link.abort()
        elif self.running:
            self.cancel()

    def begin(self) -> None:
        """The dial starts (the end of the pass it was chosen in: Connection's
        ``begin_attempt``)."""
        if self._conn is not None:
            self._conn.begin_attempt(self)

    # The link's dial, as the engine tells a future (io.links).

    def done(self) -> bool:
        """Whether nobody waits for this link any more (given up on: closed unused)."""
        conn = self._conn
        return conn is None or conn.dialling is not self

    def set_result(self, link: asyncio.Transport) -> None:
        self.link = None
        conn = self._conn
        if conn is not None:
            conn.dialled(self, link)

    def set_exception(self, exc: OSError | OutOfDescriptors) -> None:
        self.link = None
        conn = self._conn
        if conn is not None:
            # Never within the attempt's own call (a refusal in place: ECONNREFUSED),
            # so that a run of backends failing at once does not nest one in another.
            conn.ctx.loop.call_soon(conn.dial_failed, self, exc)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None:
            conn.receive(UPSTREAM, data)

    def eof_received(self) -> bool:
        if self._conn is not None:
            self._conn.receive_eof(UPSTREAM)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._conn.transport_lost(UPSTREAM)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._conn.pause_reading(CLIENT)

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._conn.resume_reading(CLIENT)


class _Dial:
    """One upgrade's search for a backend: the candidates left, the one being tried
    (its protocol, which also runs the connect, and the deadline of
    limits.backend_timeout), and whether its handshake has gone and its answer is
    awaited."""

    __slots__ = ("backend", "backends", "protocol", "sticky", "timer", "waiting")

    def __init__(self, backends: Iterator[BackendState], sticky: tuple[str, ...] | None) -> None:
        self.backends = backends
        #: The request's sticky cookie values under ``balance: cookie``, else None.
        self.sticky = sticky
        self.backend: BackendState | None = None
        self.protocol: UpstreamProtocol | None = None
        #: The deadline armed for ``_dial_timed_out`` (wsproxy.io.deadlines), if one is.
        self.timer: float | None = None
        self.waiting = False


class Connection(asyncio.Protocol):
    """Drives one Session between a client transport and a backend transport.

    It is the client transport's protocol itself (one object per connection, one
    Python call fewer on every client callback than a protocol that passes them on):
    made by the listener before its transport (then ``connection_made`` starts it),
    or with the transport of a client that comes from elsewhere (TLS, an HTTP relay),
    whose protocol it is then made.
    """

    # Slots, and a slot per side rather than a dict keyed by side: 10,000 idle
    # connections must stay cheap.
    __slots__ = (
        "_client", "_close_rounds", "_dial", "_door", "_eof_wait", "_flush_due",
        "_forwarded_for", "_open_transports", "_relayed", "_resume", "_rtt_client",
        "_rtt_upstream",
        "_timer", "_timer_at", "_upstream", "backend", "client_ip",
        "ctx", "failure", "id", "identity", "liveness", "peer_ip", "session", "settings",
        "started",
    )

    # Not keyword-only, and the process taken from *door*: the listener's protocol
    # (io.front.ClientProtocol) is this class without an __init__ of its own, made
    # with the door alone (a subclass's __init__ passing on three keywords through
    # super() cost ~2.3k instructions a connection more, measured end to end).
    def __init__(
        self, door: HttpDoor, client: asyncio.Transport | None = None,
        deadline: float | None = None, settings: ConnectionSettings | None = None,
    ) -> None:
        """*door*: where a plain HTTP request goes; its ``ctx`` is the process.
        *client*: the client's transport, or None for a listener's protocol, which
        starts at ``connection_made``.
        *deadline*: when the request must be in, on the loop's clock (default: in
        ``limits.handshake_timeout``; a TLS listener's began before the handshake).
        *settings*: the ones the client was accepted under (default: ``ctx.settings``,
        those in force now)."""
        self.ctx = door.ctx
        self._door = door
        #: Each side's transport while it is open (see _transport()).
        self._client: asyncio.Transport | None = None
        #: Relay protocols are on the transports (io.direct), and may feed: until the
        #: session leaves OPEN (_flush).
        self._relayed = False
        if client is not None:
            self._start(client, deadline, settings)

    def _start(
        self, client: asyncio.Transport, deadline: float | None,
        settings: ConnectionSettings | None,
    ) -> None:
        ctx = self.ctx
        if settings is None:
            settings = ctx.settings
        #: What this connection obeys until it ends (taken once: see the module doc).
        self.settings = settings
        cfg = settings.config
        self.id = ctx.new_conn_id()
        self.started = time.monotonic()
        peer = client.get_extra_info("peername")
        peer_ip: str = peer[0] if peer else "unknown"
        if ":" in peer_ip:  # IPv6, or an IPv4 client of a dual-stack listener
            peer_ip = plain_ip(peer_ip)
        self.peer_ip = self.client_ip = self._forwarded_for = peer_ip
        self.identity: Identity | None = None
        self.backend: BackendState | None = None
        # In order, without keywords (Session.__init__): conn_id, max_message_size,
        # max_request_head, restart_code, restart_reason (made only if a backend
        # restarts: a random hint cost ~4k an upgrade), plain_http.
        self.session = Session(
            self.id, cfg.limits.max_message_size, cfg.limits.max_request_head,
            cfg.drain.backend_close_code, settings.restart_reason, cfg.plain_http == "proxy",
        )
        #: Why the upgrade did not open (a metrics label), when it did not.
        self.failure: str | None = None
        self.liveness: Liveness | None = None
        #: The latest heartbeat round-trip time of each leg, in seconds (see rtt).
        self._rtt_client: float | None = None
        self._rtt_upstream: float | None = None
        self._client = client
        self._upstream: asyncio.Transport | None = None
        self._open_transports = 1
        #: A flush put off to the end of the loop's pass is due (``_flush_soon``).
        self._flush_due = False
        if deadline is None:
            deadline = ctx.loop.time() + cfg.limits.handshake_timeout
        #: _HANDSHAKE (_handshake_timed_out armed for ``_timer_at``), _CLOSE (a close
        #: handshake in flight since before ``_timer_at`` - heartbeat.timeout: tick()
        #: looks), or 0.
        self._timer = _HANDSHAKE
        self._timer_at = deadline
        # (The connection's timers: wsproxy.io.deadlines, no loop timer each.)
        ctx.deadlines.arm(deadline, self._handshake_timed_out)
        #: The search for a backend, while it lasts (``_start_dial``).
        self._dial: _Dial | None = None
        self._close_rounds = 0
        #: The end of the wait for the backend to close its socket first
        #: (_close_upstream; tick() looks), while it lasts.
        self._eof_wait: float | None = None
        #: A client that opted in to resumable sessions (wsproxy.io.resume): its
        #: session's state, or the resume it asks for. None for all others.
        self._resume: ResumeState | ResumeAsk | None = None
        ctx.connection_started(self)

    # The client transport's protocol…

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._client is None:  # a listener's protocol: it starts now
            # (uvloop's transports implement asyncio.Transport without subclassing it;
            # no typing.cast: a Python call an upgrade.)
            self._start(transport, None, None)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.receive(CLIENT, data)

    def eof_received(self) -> bool:
        self.receive_eof(CLIENT)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport_lost(CLIENT)

    def pause_writing(self) -> None:
        self.pause_reading(UPSTREAM)

    def resume_writing(self) -> None:
        self.resume_reading(UPSTREAM)

    def _transport(self, side: Side) -> asyncio.Transport | None:
        return self._client if side is CLIENT else self._upstream

    def _set_transport(self, side: Side, transport: asyncio.Transport | None) -> None:
        if side is CLIENT:
            self._client = transport
        else:
            self._upstream = transport

    @property
    def rtt(self) -> dict[Side, float]:
        """The latest heartbeat round-trip time of each leg that has answered, in seconds."""
        pairs = ((CLIENT, self._rtt_client), (UPSTREAM, self._rtt_upstream))
        return {side: rtt for side, rtt in pairs if rtt is not None}

    # Reading…

    def receive(self, side: Side, data: bytes) -> None:
        session = self.session
        if session.state is _OPEN and self._dial is None:
            # A read of whole data messages goes on as it came, one call to the session
            # and one write (Session.relay): where io.direct's relay protocols are not
            # on (a resumable session), or a read they handed back.
            through = session.relay(side, data)
            if through is not None:
                transport = self._upstream if side is CLIENT else self._client
                if transport is not None:
                    transport.write(through)
                return
        else:
            session.receive_data(side, data)
        state = session.state
        if state is _OPEN and self._dial is None:
            # The hot path. While the session stays OPEN, bytes read from one side can
            # only produce bytes for the other: whatever else the proxy might write
            # (a close of its own, say) moves the session to CLOSING first.
            other = _OTHER[side]
            out = session.data_to_send(other)
            if out:
                transport = self._upstream if other is UPSTREAM else self._client
                if transport is not None:
                    transport.write(out[0]) if len(out) == 1 else transport.writelines(out)
            if session.last_pong:
                self._pongs()
            return
        dial = self._dial
        if dial is not None and dial.waiting and (
            state is not _CONNECTING or session.upstream_failure
        ):
            # The backend's answer settles the attempt; _tried() flushes what it made
            # (the client's 101, an error): one flush an upgrade, not two (~2k).
            self._tried()
        elif state is _OPEN or state is _CLOSING:
            self._flush_soon()
            if session.backend_restarting and self.backend is not None:
                self.ctx.hold_down(self.backend)
        elif state is _AWAIT_REQUEST:
            self._request_read()
        elif state is not _CONNECTING:
            self._flush_soon()

    def receive_close(self, side: Side, frame: bytes, code: int | None, reason: str) -> bool:
        """A read from *side* that is one whole close frame (*code*, *reason*), checked by
        its relay protocol: when the session relays it as it came (Session.relay_close
        queues *frame* for the other side), what receive() would do with it, without its
        general path (the end of nearly every connection, twice); False: nothing was
        done, receive() is to read it. (The relay protocols stay on: no longer OPEN,
        they hand every read but such a close to this driver.)"""
        if not self.session.relay_close(side, frame, code, reason):
            return False
        self._flush_soon()  # the frame, and the closes of the transports done with
        return True

    def receive_parsed(self, parsed: ParsedRequest) -> None:
        """The client's request, parsed by the HTTP relay it came back from."""
        self.session.receive_parsed(parsed)
        if self.session.state is _AWAIT_REQUEST:
            self._request_read()
        else:
            self._flush()

    def _request_read(self) -> None:
        """What the client sent while AWAIT_REQUEST: act once its request is in."""
        session = self.session
        request = session.request
        if request is not None:
            self._route(request)
        elif session.probe is not None:
            self._answer_probe(session.probe)
        elif session.plain is not None:
            self._to_http(session.plain)

    def receive_eof(self, side: Side) -> None:
        session = self.session
        session.receive_eof(side)
        if (self._eof_wait is not None and side is UPSTREAM and session.state in TERMINAL
                and self._resume is None):
            # The backend's EOF that _close_upstream waits for, both close handshakes
            # done: a flush would find nothing to write (a terminal session makes no
            # more bytes, each flush takes what it made) and the client closing
            # already (no resumable client to come back), so closing this transport
            # is all it would do, and its eof_received() answering False does that
            # (UpstreamProtocol's, the only caller with UPSTREAM): only a write buffer
            # still full needs _close_soon()'s abort if the backend stops reading.
            transport = self._upstream
            if transport is not None and transport.get_write_buffer_size():
                self._close_soon(transport)
            return
        self._flush_soon()

    def transport_lost(self, side: Side) -> None:
        if side is CLIENT:
            if self._client is None:
                return
            self._client = None
        else:
            if self._upstream is None:
                return
            self._upstream = None
        self._open_transports -= 1
        session = self.session
        if session.state not in TERMINAL and not session.should_close(side):
            session.receive_eof(side)
            self._flush_soon()
        dial = self._dial
        if dial is not None and dial.waiting and (
            session.state is not _CONNECTING or session.upstream_failure
        ):
            self._tried()
        if self._open_transports == 0:
            self._finished()

    def pause_reading(self, side: Side) -> None:
        transport = self._transport(side)
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self, side: Side) -> None:
        transport = self._transport(side)
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # Writing…

    def _flush_soon(self) -> None:
        """``_flush()`` at the end of the loop's pass (wsproxy.io.pass_end: the writes
        of a pass together, each peer woken once): for the handshake and the closes,
        not for an OPEN connection's relaying. Until then what the session made waits
        in its queues, which any earlier flush or relay takes in order."""
        if not self._flush_due:
            self._flush_due = True
            self.ctx.pass_end.add(self._flush)

    def _flush(self) -> None:
        # (Any flush takes what a put-off one would: that one then finds nothing.)
        self._flush_due = False
        session = self.session
        # Both sides at once (Session.outputs), unrolled: four calls a side before.
        client, upstream = self._client, self._upstream
        client_out, close_client, upstream_out, close_upstream = session.outputs(
            client is not None, upstream is not None
        )
        if client is not None:
            if client_out:
                client.writelines(client_out) if len(client_out) > 1 else client.write(
                    client_out[0]
                )
            if close_client and not client.is_closing():
                self._close_soon(client)
        if upstream is not None:
            if upstream_out:
                upstream.writelines(upstream_out) if len(upstream_out) > 1 else upstream.write(
                    upstream_out[0]
                )
            if close_upstream:
                self._close_upstream(upstream)
        if session.state is _CLOSING and not self._timer:
            # A close handshake in flight: a peer that never answers is dead (tick()
            # looks at ``_timer_at``: no deadline armed, none disarmed at the answer).
            self._timer = _CLOSE
            self._timer_at = self.ctx.loop.time() + self.settings.config.heartbeat.timeout
        if self._relayed and session.state is not _OPEN:
            # The relays hand every read to this driver now (io.direct); a feed stops.
            self._relayed = False
            direct.stop_feed(client if client is not None else upstream)

    def _close_upstream(self, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        if self.session.upstream_eof_awaited():
            # Let the backend close first (§7.1.1), but not for ever (tick() looks). One
            # wait per connection (most backends do close first).
            if self._eof_wait is None:
                self._eof_wait = self.ctx.loop.time() + UPSTREAM_EOF_WAIT
            return
        self._close_soon(transport)

    def _eof_waited(self) -> None:
        """The backend did not close its socket within UPSTREAM_EOF_WAIT: we do."""
        self._eof_wait = None
        transport = self._upstream
        if transport is not None and not transport.is_closing():
            self._close_soon(transport)

    def _close_soon(self, transport: asyncio.Transport) -> None:
        """Close *transport*, aborted if its peer has not taken what is buffered within
        heartbeat.timeout (``close_in_time``)."""
        close_in_time(transport, self.ctx.loop, self.settings.config.heartbeat.timeout)

    def set_peer(self, ip: str) -> None:
        """The client's real address, from a PROXY protocol header."""
        self.peer_ip = self.client_ip = self._forwarded_for = plain_ip(ip)

    def refuse(self, failure: str, reason: str) -> None:
        """Drop a connection before its request: nothing sensible can be answered."""
        log.warning("connection.refused", conn_id=self.id, peer=self.peer_ip,
                    failure=failure, reason=reason)
        self.failure = failure
        self.session.abort()
        self._flush()

    # Closing on the proxy's behalf…

    @property
    def opened(self) -> bool:
        """Whether the backend accepted: the connection is relaying, or has been."""
        return self.backend is not None

    def drain_close(self, code: int, reason: str) -> None:
        """Start the client's close handshake (drain, age, idle); its answer goes on."""
        self.session.close(CLIENT, code, reason)
        self._flush()

    def terminate(self, code: int, reason: str) -> None:
        """Close both legs now: a close frame each if still possible, then the sockets."""
        session = self.session
        session.close(CLIENT, code, reason)
        session.close(UPSTREAM, closes.CloseCode.GOING_AWAY, reason)
        session.abort()
        self._flush()
        for transport in (self._client, self._upstream):
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()  # a peer that does not read would hold the close for ever

    def kill(self, side: Side) -> None:
        """*side* missed its heartbeat: drop its socket; the other leg gets a close."""
        self.session.receive_eof(side)
        self._flush()
        transport = self._transport(side)
        if transport is not None:
            transport.abort()

    def tick(self, now: float) -> None:
        """The sweeper's visit: the close handshake's timeout and the wait for the
        backend's EOF (about once a sweep period late at most: their deadlines are not
        armed, most closes are answered at once), heartbeats, idle timeout, maximum age."""
        if self._timer == _CLOSE and now >= self._timer_at:
            self._timer = 0
            self._close_timed_out()
        if self._eof_wait is not None and now >= self._eof_wait:
            self._eof_waited()
        session = self.session
        liveness = self.liveness
        if liveness is None or session.state is not _OPEN:
            return
        due = liveness.check(now, session.messages(CLIENT) + session.messages(UPSTREAM))
        if due is Due.NOTHING:
            return
        if due is Due.PING:
            for side, sent_at in liveness.pings_out():
                session.send_ping(side, ping_payload(sent_at))
            self._flush()
        elif due is Due.CLIENT_DEAD and self.held:
            liveness.forget_ping(CLIENT)  # it went nowhere: the client is away
        elif due is Due.CLIENT_DEAD or due is Due.UPSTREAM_DEAD:
            log.info("heartbeat.timeout", conn_id=self.id,
                     leg=CLIENT.value if due is Due.CLIENT_DEAD else UPSTREAM.value)
            self.kill(CLIENT if due is Due.CLIENT_DEAD else UPSTREAM)
        elif due is Due.IDLE:
            self.drain_close(*closes.IDLE_TIMEOUT)
        elif due is Due.EXPIRED:
            self.drain_close(*closes.TOKEN_EXPIRED)
        elif due is Due.AGED:
            drain = self.settings.config.drain
            self.drain_close(drain.backend_close_code,
                             self.ctx.close_reason(closes.AGE_LIMIT, drain.reconnect_hint))

    def _pongs(self) -> None:
        liveness = self.liveness
        now = self.ctx.loop.time()
        for side, payload in self.session.take_pongs().items():
            sent_at = ping_sent_at(payload)
            if liveness is not None and sent_at is not None:
                rtt = liveness.pong(side, sent_at, now)
                if rtt is not None:
                    if side is CLIENT:
                        self._rtt_client = rtt
                    else:
                        self._rtt_upstream = rtt
                    self.ctx.ping_rtt(side, rtt)

    # Timers…

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer:
            self._timer = 0
            if timer == _HANDSHAKE:  # (the close's is tick()'s: nothing armed)
                self.ctx.deadlines.disarm(self._timer_at, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._timer = 0
        if self.session.state in (_AWAIT_REQUEST, _CONNECTING):
            self.failure = "timeout"
            self.session.abort()
            self._flush()

    def _close_timed_out(self) -> None:
        """A close handshake took longer than heartbeat.timeout (tick() saw it).

        The legs still waiting for their peer's close are given up as lost, so the
        other leg gets its close (or the answer it waits for) all the same; if that
        one then hangs too, the next timeout aborts everything.
        """
        self._timer = 0
        session = self.session
        stuck = [side for side in (CLIENT, UPSTREAM)
                 if session.leg_state(side) is LegState.CLOSE_SENT]
        if not stuck or self._close_rounds > 0:
            session.abort()
        for side in stuck:
            session.receive_eof(side)
        self._close_rounds += 1
        self._flush()
        for side in stuck:
            transport = self._transport(side)
            if transport is not None:
                transport.abort()

    # The upgrade…

    def _answer_probe(self, path: str) -> None:
        self._cancel_timer()
        self.session.reject(*self.ctx.probe_answer(path))
        self._flush()

    def _to_http(self, parsed: ParsedRequest) -> None:
        """A request without Upgrade (``plain_http: proxy``): an HttpRelay takes over."""
        self._cancel_timer()
        self.ctx.registry.remove(self.id)
        transport = self._client
        assert transport is not None
        self._client = None
        self._door.to_http(transport, parsed, conn_id=self.id, peer_ip=self.peer_ip,
                           settings=self.settings)

    def _route(self, request: UpgradeRequest) -> None:
        """The client's *request* is in: refuse it, or go and find a backend."""
        session = self.session
        trusted = self.settings.config.trusted_proxies
        if trusted:
            self.client_ip, self._forwarded_for = client_address(
                self.peer_ip, request.header(b"x-forwarded-for"), trusted
            )
        else:  # what client_address() says without a trusted proxy, without the look-ups
            self.client_ip = self._forwarded_for = self.peer_ip
        self._cancel_timer()  # the client's part is done; backend_timeout bounds the rest
        if self.settings.config.resume.enabled and self._take_resume_param():
            return  # handed to the worker that holds the session (io.handoff)
        refusal = self.ctx.refusal(self)
        if refusal is not None and not isinstance(refusal, CloseRefusal):
            self._reject(*refusal)
            return
        session.accept()
        transport = self._client
        assert transport is not None
        transport.pause_reading()  # nothing to relay to until a backend said 101
        if refusal is None:
            if self.settings.authenticator is None and self._resume is None:
                self._start_dial(request)  # no task until the dial's own
            else:
                self.ctx.spawn(self._connect_upstream)
        elif self.settings.authenticator is None:
            self._refuse_with_close(refusal)
        else:  # auth before any 101: a client that fails it gets its 401/403
            self.ctx.spawn(lambda: self._authenticate_refused(refusal))

    def _take_resume_param(self) -> bool:
        """``wsproxy_resume`` (wsproxy.core.resume): taken out of the request before
        auth, logs and the backend see it. True: the client went to a sibling worker."""
        request = self.session.request
        assert request is not None
        target, ask, malformed = take_param(request.target)
        if ask is None and not malformed:
            return False
        if ask is not None and ask.session_id and hand_over(self, ask.session_id):
            return True
        self.session.request = dataclasses.replace(request, target=target)
        if ask is not None and ask.session_id is None:
            client = self._client
            assert client is not None
            state = self._resume = ResumeState(self, client)
            self._client = state.link  # type: ignore[assignment]
        else:
            self._resume = ask or ResumeAsk("", 0)
        return False

    @property
    def resuming(self) -> str | None:
        """The session this upgrade asks to resume, if it is a resume attempt."""
        ask = self._resume
        return ask.session_id if isinstance(ask, ResumeAsk) else None

    @property
    def client_transport(self) -> asyncio.Transport | None:
        return self._client

    def forget(self) -> None:
        """The client went to another process (io.handoff) with the bytes it sent:
        this connection ends without a trace, closing only its own descriptor."""
        transport = self._let_client_go()
        self.ctx.connection_moved(self)
        transport.set_protocol(asyncio.Protocol())  # its connection_lost is no news
        transport.abort()

    def _let_client_go(self) -> asyncio.Transport:
        """The client's transport, no longer this connection's (it goes elsewhere)."""
        transport = self._client
        assert transport is not None
        self._client = None
        self._open_transports -= 1
        self.session.abort()
        self._cancel_timer()
        return transport

    @property
    def held(self) -> bool:
        """An opted-in session whose client is away (the backend leg waits)."""
        return isinstance(self._resume, ResumeState) and self._resume.held

    def take_client(self) -> asyncio.Transport:
        """A resume attempt hands its socket to the session it resumes; this
        connection ends (its outcome: failed, "resumed")."""
        self.failure = "resumed"
        transport = self._let_client_go()
        if self._open_transports == 0:
            self._finished()
        return transport

    def resumed_by(self, other: Connection) -> None:
        """The client is back, through *other*'s socket (before *other* hands it
        over): the session goes on under *other*'s address, in the connection-limit
        slot *other* was admitted to, and with *other*'s credentials (the same
        subject): ``auth.close_on_expiry`` now watches the new token's expiry."""
        self.peer_ip, self.client_ip = other.peer_ip, other.client_ip
        self.ctx.registry.take_over(self.id, other.id)
        self.identity = other.identity
        if self.liveness is not None:
            self.liveness.forget_ping(CLIENT)
            self.liveness.expires_at = self._expiry()

    def refuse_resume(self, refusal: CloseRefusal) -> None:
        """A resume attempt that failed: the proxy's own 101 and *refusal*'s close."""
        self._refuse_with_close(refusal)

    async def _authenticate_refused(self, refusal: CloseRefusal) -> None:
        if await self._authenticate():
            self._refuse_with_close(refusal)

    def _refuse_with_close(self, refusal: CloseRefusal) -> None:
        """``admission.reject_with: close``: the proxy's own 101 and *refusal*'s close;
        the client's answer completes the handshake (or heartbeat.timeout does)."""
        self.failure = refusal.failure
        self.session.refuse_with_close(refusal.close)
        self.ctx.connection_rejected(self)
        self._flush()
        self.resume_reading(CLIENT)

    async def _authenticate(self) -> bool:
        """Run the configured auth; False when the upgrade was refused (or abandoned)."""
        settings = self.settings
        authenticator = settings.authenticator
        session = self.session
        request = session.request
        if authenticator is None or request is None:
            return True
        try:
            admitted = await authenticate(authenticator, settings.config.auth, request,
                                          client_ip=self.client_ip, conn_id=self.id)
        except AuthFailed as exc:
            if session.state is _CONNECTING:
                self._reject(f"auth_{exc.reason}", exc.status, exc.message, exc.headers)
            return False
        self.identity = admitted.identity
        if session.state is not _CONNECTING:
            return False  # the client went away meanwhile
        session.request = admitted.request
        session.auth_subprotocol = admitted.auth_subprotocol
        return True

    async def _connect_upstream(self) -> None:
        """Auth first (it may ask a service), then the session resumed, or the backends."""
        if not await self._authenticate():
            return
        if isinstance(self._resume, ResumeAsk):
            resume_into(self, self._resume)
            return
        request = self.session.request
        assert request is not None
        self._start_dial(request)

    def _start_dial(self, request: UpgradeRequest) -> None:
        """Try the backends for *request* (the session's), best first (``_next_backend``)."""
        config = self.ctx.config  # balance.* and sticky_cookie.* are live: each pick
        sticky: tuple[str, ...] | None = None  # not balance: cookie
        if config.balance.policy == "cookie":
            # The proxy's cookie: read here, and never seen by the backend.
            request, sticky = take_sticky(request, config.sticky_cookie.name)
            self.session.request = request
        self._dial = _Dial(iter(candidates(self.ctx.balancer, request,
                                           config.balance.hash_key, sticky or ())), sticky)
        self._next_backend()

    def _next_backend(self) -> None:
        """Dial the next candidate, bounded by limits.backend_timeout (one timer, no
        asyncio.timeout); or, when none is left, answer the client."""
        dial = self._dial
        assert dial is not None
        session = self.session
        for backend in dial.backends:
            if session.state is not _CONNECTING:
                break
            dial.backend = backend
            backend.dialing += 1  # until _end_dial: least_connections counts it
            protocol = dial.protocol = UpstreamProtocol(self)
            ctx = self.ctx
            dial.timer = at = ctx.loop.time() + self.settings.config.limits.backend_timeout
            ctx.deadlines.arm(at, self._dial_timed_out, protocol)
            # The connect at the end of the loop's pass, after the pass's writes
            # (wsproxy.io.pass_end): those woke the backend's process, which then
            # finds the new connection awake, where a connect of its own would wake it
            # again (an inter-processor interrupt: upgrade benchmark, 1.0 an upgrade
            # before, 0.4 after; upgrades/s +11 %). A retry, called from inside the
            # failed attempt's own step, then never nests a step in a step either.
            ctx.pass_end.add(protocol.begin)
            return
        self._dial = None
        if session.state is _CONNECTING:
            if session.upstream_failure is None:
                self._reject("no_backend", *NO_BACKEND)
            else:
                self._reject("backend_unreachable", 502, "backend unreachable")

    def begin_attempt(self, protocol: UpstreamProtocol) -> None:
        """*protocol*'s attempt begins (at the end of the pass ``_next_backend`` chose
        it in): a link's connect, or the loop's (``_dial_one``) for what a link cannot
        reach."""
        dial = self._dial
        if dial is None or dial.protocol is not protocol:
            return  # given up on meanwhile (the client left, the proxy stops)
        ctx = self.ctx
        engine = ctx.engine
        if engine is not None:
            backend = dial.backend
            assert backend is not None
            try:  # a link's connect: no coroutine (UpstreamProtocol's doc)
                protocol.link = start_link(engine, backend.config, protocol)
            except (OSError, OutOfDescriptors) as exc:  # no socket to be had
                protocol.set_exception(exc)  # (told a loop pass later, as any failure)
                return
            if protocol.link is not None:
                return
        ctx.drive(protocol, self._dial_one(dial, protocol))  # (no task: wsproxy.io.steps)

    async def _dial_one(self, dial: _Dial, protocol: UpstreamProtocol) -> None:
        """Open the TCP (TLS) connection to ``dial.backend`` and send it the handshake;
        its answer comes through ``receive()``, which settles the attempt (``_tried``).
        An upgrade's only coroutine (the loop's create_connection is one), run by
        *protocol* itself (``ctx.drive``), not as a task."""
        ctx = self.ctx
        backend = dial.backend
        assert backend is not None
        try:
            # backend_tls is live: the context and server name in force now. (No engine:
            # a backend a link can reach never gets here, begin_attempt's start_link
            # took it.)
            transport = await dial_backend(
                ctx.loop, lambda: protocol, backend, ctx.backend_ssl, ctx.config.backend_tls
            )
        except asyncio.CancelledError:
            if dial.protocol is protocol:  # not by _dial_timed_out: the proxy stops
                self._end_dial(dial)
            raise
        except (OSError, OutOfDescriptors) as exc:  # (ssl.SSLError is an OSError)
            self.dial_failed(protocol, exc)
            return
        self.dialled(protocol, transport)

    @property
    def dialling(self) -> UpstreamProtocol | None:
        """The attempt whose dial or answer is awaited, if one is."""
        dial = self._dial
        return None if dial is None else dial.protocol

    def dial_failed(self, protocol: UpstreamProtocol, exc: OSError | OutOfDescriptors) -> None:
        """*protocol*'s dial failed: the next backend, or the client's answer."""
        dial = self._dial
        if dial is None or dial.protocol is not protocol:
            return  # given up on already
        if isinstance(exc, OutOfDescriptors):
            # The proxy's own trouble: no backend is blamed, none other tried.
            self._end_dial(dial)
            if self.session.state is _CONNECTING:
                self._reject("out_of_descriptors", *OUT_OF_DESCRIPTORS)
            return
        self.session.upstream_failed(str(exc) or type(exc).__name__)
        self._tried()

    def dialled(self, protocol: UpstreamProtocol, transport: asyncio.Transport) -> None:
        """*protocol*'s dial connected *transport*: the backend's handshake goes."""
        dial = self._dial
        if dial is None or dial.protocol is not protocol:  # timed out as it connected
            transport.close()
            return
        ctx = self.ctx
        backend = dial.backend
        assert backend is not None
        session = self.session
        if session.state is not _CONNECTING:
            transport.close()  # the client went away meanwhile
            self._tried()
            return
        if isinstance(self._resume, ResumeState):  # its messages reach the backend whole
            transport = self._resume.upstream(transport)  # type: ignore[assignment]
        self._upstream = transport
        self._open_transports += 1
        settings = self.settings
        forwarding = ctx.forwarding(self.client_ip, self._forwarded_for, self.id, self.identity)
        session.connect_upstream(
            target=backend.name,
            authority=backend.authority,
            path_prefix=backend.config.path,
            forwarding=forwarding,
            # An opted-in client's messages get a byte more: none compressed.
            pass_extensions=settings.config.compression == "passthrough" and self._resume is None,
            owned_headers=settings.owned_headers,
            client_headers=() if dial.sticky is None else sticky_header(
                ctx.config.sticky_cookie, backend.name, dial.sticky,
                https=forwarding.proto == "https",
            ),
        )
        self._flush_soon()  # the request
        if session.state is _CONNECTING and session.upstream_failure is None:
            dial.waiting = True  # for the backend's answer: receive() or transport_lost()
        else:
            self._tried()

    def _dial_timed_out(self, protocol: UpstreamProtocol) -> None:
        """limits.backend_timeout: the dial, or the backend's answer, took too long."""
        dial = self._dial
        if dial is None or dial.protocol is not protocol:
            return
        dial.timer = None
        protocol.give_up()  # still connecting: the socket closes
        self.session.upstream_failed("TimeoutError")  # what asyncio.timeout's said
        self._tried()

    def _end_dial(self, dial: _Dial) -> None:
        if dial.protocol is not None and dial.backend is not None:  # once per attempt
            dial.backend.dialing -= 1
        if dial.timer is not None:
            self.ctx.deadlines.disarm(dial.timer, self._dial_timed_out)
            dial.timer = None
        dial.protocol = None
        dial.waiting = False
        self._dial = None

    def _tried(self) -> None:
        """The backend being tried is settled: it accepted, refused, failed or was
        given up on, or the client went away. Go on accordingly."""
        dial = self._dial
        assert dial is not None
        protocol = dial.protocol
        assert protocol is not None
        self._end_dial(dial)
        session = self.session
        backend = dial.backend
        assert backend is not None
        if session.accepted is not None:
            # The 101 may have come with frames that moved the session on already
            # (a backend that closes at once): accepted, whatever the state now. (No
            # upstream_failure then: asked only below, a property's call less.)
            self._opened(backend)
            return
        if session.upstream_failure is not None:
            self._drop_upstream(protocol)
        state = session.state
        if state is not _CONNECTING:
            if state is _REJECTED:
                self.failure = "backend_refused"
                self._rejected()
            else:
                self._flush()
            return
        log.warning("upstream.failed", conn_id=self.id, backend=backend.name,
                    error=session.upstream_failure)
        self._dial = dial
        self._next_backend()

    def _drop_upstream(self, protocol: UpstreamProtocol) -> None:
        protocol.detach()
        transport = self._upstream
        if transport is not None:
            self._upstream = None
            self._open_transports -= 1
            transport.abort()

    def _opened(self, backend: BackendState) -> None:
        # (No _cancel_timer(): _route() disarmed the request's deadline, and nothing
        # arms one before this flush.)
        self.backend = backend
        backend.active += 1
        # (rules, now, rng: None for the shared one, expires_at) in order: a keyword to a
        # class goes through a dict (~1.1k instructions).
        self.liveness = Liveness(self.settings.liveness_rules, self.ctx.loop.time(), None,
                                 self._expiry())
        if self.session.backend_restarting:  # its close came with its 101
            self.ctx.hold_down(backend)
        self.ctx.connection_opened(self)
        self._flush_soon()  # the 101
        client = self._client  # resume_reading(CLIENT), without its two calls
        if client is not None and not client.is_closing():
            client.resume_reading()
        if self._resume is None and self._dial is None:  # reads straight through (io.direct)
            self._relayed = direct.relay_directly(self, self.session, self._client,
                                                  self._upstream)

    def _reject(
        self, kind: str, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.failure = kind
        self.session.reject(status, reason, headers, shutting_down=kind == DRAINING)
        self._rejected()

    def _expiry(self) -> float | None:
        """When the credentials expire, on the loop's clock (auth.close_on_expiry)."""
        expires = self.identity.expires_at if self.identity is not None else None
        if expires is None or not self.settings.config.auth.close_on_expiry:
            return None
        return self.ctx.loop.time() + (expires - time.time())

    def _rejected(self) -> None:
        self._cancel_timer()
        self.ctx.connection_rejected(self)
        self._flush()

    def _finished(self) -> None:
        self._cancel_timer()
        self._eof_wait = None
        if isinstance(self._resume, ResumeState):
            self._resume.finished()
        if self.backend is not None:
            self.backend.active -= 1
        self.ctx.connection_finished(self)

    def age(self) -> float:
        return time.monotonic() - self.started

    def outcome(self) -> tuple[str, str | None]:
        """How the handshake ended, and why it failed: labels for the metrics."""
        if self.opened:
            return "upgraded", None
        if self.session.probe is not None:
            return "probe", None
        status = self.session.rejected_status
        if status is not None:  # an HTTP error, or 101 and the proxy's own close
            return "rejected", self.failure or _STATUS_FAILURES.get(status or 0, "bad_request")
        return "failed", self.failure or "client_gone"

    @property
    def subject(self) -> str | None:
        """Who the client authenticated as, if auth is on."""
        return self.identity.subject if self.identity is not None else None

    def view(self) -> dict[str, Any]:
        """This connection for ``GET /connections``."""
        s = self.session
        return {
            "id": self.id,
            "client": self.client_ip,
            "backend": self.backend.name if self.backend else None,
            "subject": self.subject,
            "age_s": round(self.age(), 3),
            "messages_to_backend": s.messages(UPSTREAM),
            "messages_to_client": s.messages(CLIENT),
            "bytes_to_backend": s.bytes_relayed(UPSTREAM),
            "bytes_to_client": s.bytes_relayed(CLIENT),
            **({"resume": "held" if self.held else "attached"}
               if isinstance(self._resume, ResumeState) else {}),
        }

    def closed_line(self, age: float | None = None, ending: Ending | None = None) -> str:
        """``connection.closed`` rendered (wsproxy.log.closed_line_of) from the session
        directly: the fields of summary(), without the dict. *age*: age(), if read;
        *ending*: the session's ``ending()``, if read (the metrics read it too)."""
        s = self.session
        (messages_to_backend, messages_to_client, bytes_to_backend, bytes_to_client,
         undelivered_to_backend, undelivered_to_client, client_code, upstream_code, _) = (
            s.ending() if ending is None else ending
        )
        backend = self.backend
        identity = self.identity
        if age is None:
            age = time.monotonic() - self.started
        return closed_line_of(
            self.id, self.client_ip, None if backend is None else backend.name,
            None if identity is None else identity.subject, _STATE_VALUE[s.state],
            age, client_code, upstream_code,  # (closed_line_of rounds it as summary() does)
            s.initiator, s.close_reason, messages_to_backend, messages_to_client,
            bytes_to_backend, bytes_to_client, undelivered_to_client, undelivered_to_backend,
        )

    def summary(self) -> dict[str, Any]:
        """The fields of the canonical ``connection.closed`` log line."""
        s = self.session
        codes = s.close_codes()
        return {
            "conn_id": self.id,
            "client": self.client_ip,
            "backend": self.backend.name if self.backend else None,
            "subject": self.subject,
            "state": s.state.value,
            "duration_s": round(self.age(), 3),
            "close_code_client": codes["client"],
            "close_code_upstream": codes["upstream"],
            "initiator": s.initiator,
            "reason": s.close_reason,
            "messages_to_backend": s.messages(UPSTREAM),
            "messages_to_client": s.messages(CLIENT),
            "bytes_to_backend": s.bytes_relayed(UPSTREAM),
            "bytes_to_client": s.bytes_relayed(CLIENT),
            "undelivered_to_client": s.undelivered(CLIENT),
            "undelivered_to_backend": s.undelivered(UPSTREAM),
        }

