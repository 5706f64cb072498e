"""Resumable sessions: holding a session whose client vanished, and re-attaching it.

The protocol is README.md "Resumable sessions"; its pure part (the opt-in, the
framing, the replay buffer) is wsproxy.core.resume. Here:

- ``ResumeState``: one opted-in connection's side of it. The Connection's client
  "transport" is a ``ClientLink`` standing in front of the real one: what the relay
  writes goes through the session's ``Replay`` (prefixed, kept) to the socket, or
  only into the buffer while no client is attached. The socket's protocol is a
  ``ResumeClientProtocol``, which sends acks after reads and, when the socket dies
  without a close handshake, holds the session instead of telling the Connection.
  The backend's transport is an ``UpstreamGate`` in front of the real one: a client
  message sent as one frame reaches the backend only once it is whole, so that a
  socket that dies in its middle leaves nothing of it there, and the session can be
  held all the same (the client sends the message again).
- ``ResumeTable``: the sessions of one proxy by id, the ids of ended ones (so a late
  resume learns why), the outcome counters and the bytes kept.
- ``resume_into()``: a resume attempt, once auth passed on its own connection,
  either takes over the held session's client leg or is refused with a close.

Nothing here runs for a connection that did not opt in.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import weakref
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any, Final, Protocol

from wsproxy.core import resume as proto
from wsproxy.core.closes import ProxyClose
from wsproxy.core.handshake import UpstreamAccepted, accept_response
from wsproxy.core.states import LegState, SessionState, Side
from wsproxy.core.upgrade import proxy_subprotocol
from wsproxy.io.ports import CloseRefusal
from wsproxy.log import get_logger

if TYPE_CHECKING:
    from wsproxy.core.session import Session
    from wsproxy.io.connection import Connection
    from wsproxy.io.handoff import Handoff

log = get_logger()

CLIENT: Final = Side.CLIENT
UPSTREAM: Final = Side.UPSTREAM
#: How many ended sessions' ids are remembered, to tell a late resume why.
TOMBSTONES: Final = 10_000


class ResumeTable:
    """The resumable sessions of one proxy (one per ConnectionOwner).

    *worker*: this process's index among ``workers: N`` (None: the only one); it is
    in every id (``worker_of``), so that a sibling knows where to hand a resume.
    """

    def __init__(self, worker: int | None = None) -> None:
        #: Every id starts with this: a resume of another process's id is "restarted".
        self.boot = os.urandom(4).hex() + ("" if worker is None else f"{worker:02x}")
        self.sessions: dict[str, ResumeState] = {}
        self.ended: OrderedDict[str, str] = OrderedDict()
        #: Resume attempts by outcome ("resumed" or the failure).
        self.outcomes: Counter[str] = Counter()
        self.total = proto.Total(0)

    def new_id(self) -> str:
        return self.boot + secrets.token_urlsafe(24)

    def forget(self, sid: str, reason: str) -> None:
        self.sessions.pop(sid, None)
        self.ended[sid] = reason
        while len(self.ended) > TOMBSTONES:
            self.ended.popitem(last=False)

    def why_not(self, sid: str) -> str:
        """Why no session *sid* is here to resume."""
        if sid in self.ended:
            return self.ended[sid]
        return proto.UNKNOWN if sid.startswith(self.boot) else proto.RESTARTED

    def held(self) -> int:
        return sum(1 for s in self.sessions.values() if s.real is None)


_TABLES: weakref.WeakKeyDictionary[Any, ResumeTable] = weakref.WeakKeyDictionary()


class TableOwner(Protocol):
    """A proxy, as its resume table is made (the ConnectionOwner)."""

    @property
    def handoff(self) -> Handoff | None: ...


def table_for(owner: TableOwner) -> ResumeTable:
    """The table of the proxy *owner*."""
    table = _TABLES.get(owner)
    if table is None:
        handoff = owner.handoff
        table = _TABLES[owner] = ResumeTable(None if handoff is None else handoff.index)
    return table


def worker_of(sid: str) -> int | None:
    """The worker whose table made id *sid* (ResumeTable under ``workers: N``)."""
    index = sid[8:10]
    return int(index, 16) if len(index) == 2 and all(c in _HEX for c in index) else None


_HEX: Final = frozenset("0123456789abcdef")


def resumed_slot(owner: TableOwner, conn: Connection) -> str | None:
    """The session whose limit slot *conn*, a resume attempt, may take (Registry
    .admit's *in_place_of*): the one it resumes, while this proxy has it."""
    sid = conn.resuming
    state = table_for(owner).sessions.get(sid) if sid else None
    return None if state is None or state.ended else state.conn.id


def hand_over(conn: Connection, sid: str) -> bool:
    """A resume of session *sid*, which a sibling worker holds: send it the client
    (io.handoff), to serve as if it had accepted it. False when it cannot (a TLS
    client, a sibling not running): the resume goes on here, and fails."""
    handoff = conn.ctx.handoff
    owner = worker_of(sid)
    if handoff is None or owner is None or owner == handoff.index:
        return False
    transport = conn.client_transport
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return False
    request = conn.session.request
    upgrade = conn.session.upgrade
    assert request is not None
    assert upgrade is not None
    sock = transport.get_extra_info("socket")
    transport.pause_reading()
    data = proto.request_bytes(request) + upgrade.early_client
    if not handoff.send(owner, sock.fileno(), conn.peer_ip, data):
        transport.resume_reading()
        return False
    log.info("resume.handed_over", conn_id=conn.id, to_worker=owner)
    conn.forget()
    return True


class ResumeState:
    """One opted-in connection: its id, its replay buffer, its socket or its hold."""

    __slots__ = (
        "acked", "conn", "ended", "gate", "hold_timer", "link", "real", "replay", "sid",
        "table",
    )

    def __init__(self, conn: Connection, real: asyncio.Transport) -> None:
        cfg = conn.settings.config.resume
        self.table = table = table_for(conn.ctx)
        table.total.limit = conn.ctx.config.resume.max_total  # live: the latest config
        self.conn = conn
        self.sid = table.new_id()
        self.replay = proto.Replay(
            cfg.buffer, table.total,
            proto.control(type="session", id=self.sid, window=cfg.window),
        )
        self.real: asyncio.Transport | None = real
        self.link = ClientLink(self)
        #: The backend's transport as the Connection writes to it, once dialled.
        self.gate: UpstreamGate | None = None
        self.hold_timer: asyncio.TimerHandle | None = None
        self.ended = False
        #: The latest ack sent (or due) to the client.
        self.acked = 0
        table.sessions[self.sid] = self
        real.set_protocol(ResumeClientProtocol(self, real))

    @property
    def held(self) -> bool:
        return self.real is None and not self.ended

    def write(self, pieces: list[bytes]) -> None:
        real = self.real
        if real is not None and pieces:
            real.writelines(pieces)

    def upstream(self, transport: asyncio.Transport) -> UpstreamGate:
        """The backend's *transport* as the Connection is to write to it."""
        self.gate = UpstreamGate(
            transport, self.conn.session, self.conn.settings.config.resume.buffer,
            self.table.total,
        )
        return self.gate

    def holdable(self) -> bool:
        """Whether the session can wait for its client: open both ways, not closing,
        and between two of the client's messages, or in the middle of one that the
        gate holds back whole (``rewind`` forgets it: the client sends it again)."""
        session = self.conn.session
        gate = self.gate
        return (
            not self.ended and not self.link.closing
            and session.state is SessionState.OPEN
            and session.leg_state(CLIENT) is LegState.OPEN
            and session.leg_state(UPSTREAM) is LegState.OPEN
            and self.conn.opened
            and (session.client_at_boundary() or (gate is not None and gate.clean))
        )

    def rewind(self) -> None:
        """Before a hold, or a resume: the client's message cut in its middle, if any,
        is forgotten (holdable() said that nothing of it reached the backend)."""
        gate = self.gate
        if gate is not None and not self.conn.session.client_at_boundary():
            gate.rewind()

    # The client's socket…

    def client_read(self) -> None:
        """After a read from the client: ack what reached the backend whole."""
        gate = self.gate
        if gate is None:
            return
        acked = gate.messages
        if acked != self.acked and self.real is not None:
            self.acked = acked
            self.write(self.replay.ack(proto.control(type="ack", n=acked)))

    def client_lost(self, real: asyncio.Transport) -> None:
        if real is not self.real:
            return  # a socket replaced by a resume
        self.real = None
        if self.holdable():
            self.hold()
        else:
            self.end(proto.CLOSED)

    def hold(self) -> None:
        conn = self.conn
        self.rewind()
        conn.session.drop_client_partial()
        self.replay.cut_at = self.replay.sent
        self.hold_timer = conn.ctx.loop.call_later(
            conn.settings.config.resume.window, self.end, proto.EXPIRED
        )
        conn.resume_reading(UPSTREAM)  # the dead socket may have paused the backend

    def check_held(self) -> None:
        """After a write while held: a buffer overrun, or a close of the proxy's own
        (drain, age, expiry), ends the hold."""
        if self.replay.overrun:
            self.end_soon(proto.OVERRUN)
        elif self.conn.session.state is not SessionState.OPEN:
            self.end_soon(proto.CLOSED)

    def end_soon(self, reason: str) -> None:
        if not self.ended:
            self.conn.ctx.loop.call_soon(self.end, reason)

    def end(self, reason: str) -> None:
        """No resume any more: the Connection learns its client is gone, as without
        resume (a held session's backend gets the client-gone close)."""
        if self.ended:
            return
        self.ended = True
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None
        self.table.forget(self.sid, reason)
        self.replay.release()
        if self.real is None:
            self.conn.transport_lost(CLIENT)

    def finished(self) -> None:
        """The Connection is over."""
        if self.gate is not None:
            self.gate.let_go()  # what it held never goes now
        if not self.ended:
            self.ended = True
            if self.hold_timer is not None:
                self.hold_timer.cancel()
            self.table.forget(self.sid, proto.CLOSED)
            self.replay.release()


class ClientLink:
    """The client transport as the Connection sees it: writes go through the Replay
    to the socket of the moment, or into the buffer only while held."""

    __slots__ = ("closing", "state")

    def __init__(self, state: ResumeState) -> None:
        self.state = state
        self.closing = False

    def write(self, data: bytes) -> None:
        state = self.state
        state.write(state.replay.feed(data))
        if state.real is None and not state.ended:
            state.check_held()

    def writelines(self, chunks: list[bytes]) -> None:
        state = self.state
        feed = state.replay.feed
        out: list[bytes] = []
        for chunk in chunks:
            out += feed(chunk)
        state.write(out)
        if state.real is None and not state.ended:
            state.check_held()

    def close(self) -> None:
        self.closing = True
        state = self.state
        if state.real is not None:
            state.real.close()
        else:
            state.end_soon(proto.CLOSED)

    def abort(self) -> None:
        self.closing = True
        state = self.state
        if state.real is not None:
            state.real.abort()
        else:
            state.end_soon(proto.CLOSED)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        real = self.state.real
        return real.get_write_buffer_size() if real is not None else 0

    def pause_reading(self) -> None:
        real = self.state.real
        if real is not None and not real.is_closing():
            real.pause_reading()

    def resume_reading(self) -> None:
        real = self.state.real
        if real is not None and not real.is_closing():
            real.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        real = self.state.real
        return real.get_extra_info(name, default) if real is not None else default


class UpstreamGate:
    """The backend's transport as an opted-in client's Connection writes to it.

    While the session is OPEN and a message of the client's sent as one frame (as
    browsers and most clients send them) is half relayed, what is written waits here
    (up to ``resume.buffer`` bytes), and goes on once the message is whole (with the
    write of its last bytes, which the read that ends a frame always has): so when
    the client's socket dies in the middle of it, nothing of it has reached the
    backend, the session can be held, and the client sends the message again when it
    resumes (``rewind``). Nothing of ours waits longer for it than it would anyway:
    the proxy's own frames wait for a frame in flight in any case (Session._inject),
    and a client's own control frames cannot come inside one. A fragmented message,
    and one longer than the limit, go on as they come, as for any client; a cut in
    their middle ends the session.

    What is held counts against ``resume.max_total`` (*total*) beside the replay
    buffers: a message that would take the bytes of all sessions past it goes on as
    it comes too.

    ``clean``: everything written so far ends at a boundary of the client's messages
    (the first ``messages`` of them, ``relayed`` bytes: where ``rewind`` goes back to).
    ``messages``: the client's messages the backend has whole, what the client is
    acked (after a message that went on as it came, too).
    """

    __slots__ = ("clean", "held", "held_bytes", "limit", "messages", "real", "relayed",
                 "session", "total")

    def __init__(
        self, real: asyncio.Transport, session: Session, limit: int, total: proto.Total
    ) -> None:
        self.real = real
        self.session = session
        self.limit = limit
        self.total = total
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.clean = True
        self.messages = session.client_messages_whole()
        self.relayed = session.bytes_relayed(UPSTREAM)

    def write(self, data: bytes) -> None:
        self.writelines([data])

    def writelines(self, chunks: list[bytes]) -> None:
        session = self.session
        whole = session.client_at_boundary()  # the usual case: all goes on
        if not whole and self.clean and session.client_last_frame_open() and (
            session.state is SessionState.OPEN
        ):
            size = sum(map(len, chunks))
            total = self.total
            if self.held_bytes + size <= self.limit and total.bytes + size <= total.limit:
                self.held += chunks
                self.held_bytes += size
                total.bytes += size
                return
        if self.held:
            chunks = self.let_go() + list(chunks)
        if chunks:
            self.real.writelines(chunks)
        self.clean = whole
        if whole:
            self.messages = session.messages(UPSTREAM)
            self.relayed = session.bytes_relayed(UPSTREAM)
        else:
            self.messages = session.client_messages_whole()

    def rewind(self) -> None:
        """The client's socket died in the middle of a held message: the session's
        flow goes back to the last boundary written (Session.rewind_client), the
        message's bytes are dropped, and the control frames among them (the proxy's
        pings, the client's) go on, with our frames that waited behind it."""
        session = self.session
        session.rewind_client(self.messages, self.relayed)
        kept = proto.control_frames(b"".join(self.let_go()))
        self.writelines(kept + session.data_to_send(UPSTREAM))

    def let_go(self) -> list[bytes]:
        """What is held, no longer held (nor counted against ``max_total``)."""
        held = self.held
        self.total.bytes -= self.held_bytes
        self.held = []
        self.held_bytes = 0
        return held

    # The rest of a transport, as the Connection uses it.

    def close(self) -> None:
        if self.held:  # what was written goes first, as on any transport
            self.real.writelines(self.let_go())
        self.real.close()

    def abort(self) -> None:
        self.let_go()
        self.real.abort()

    def is_closing(self) -> bool:
        return self.real.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.real.get_write_buffer_size()

    def pause_reading(self) -> None:
        self.real.pause_reading()

    def resume_reading(self) -> None:
        self.real.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)


class ResumeClientProtocol(asyncio.Protocol):
    """The protocol of an opted-in client's socket (the first, or a resumed one)."""

    __slots__ = ("real", "state")

    def __init__(self, state: ResumeState, real: asyncio.Transport) -> None:
        self.state = state
        self.real = real

    def data_received(self, data: bytes) -> None:
        state = self.state
        if self.real is not state.real:
            return
        state.conn.receive(CLIENT, data)
        state.client_read()

    def eof_received(self) -> bool:
        state = self.state
        if self.real is state.real and not state.holdable():
            state.conn.receive_eof(CLIENT)
        return False  # the socket closes: connection_lost decides

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.client_lost(self.real)

    def pause_writing(self) -> None:
        if self.real is self.state.real:
            self.state.conn.pause_reading(UPSTREAM)

    def resume_writing(self) -> None:
        if self.real is self.state.real:
            self.state.conn.resume_reading(UPSTREAM)


def resume_into(conn: Connection, ask: proto.ResumeAsk) -> None:
    """*conn* is a resume attempt whose auth passed: take over the session it names,
    or refuse it with the proxy's own 101 and a RESUME_FAILED close."""
    table = table_for(conn.ctx)
    sid = ask.session_id
    if not sid:
        _fail(conn, table, proto.MALFORMED)
        return
    state = table.sessions.get(sid)
    if state is None or state.ended:
        _fail(conn, table, table.why_not(sid))
        return
    held = state.conn
    if held.subject != conn.subject:
        _fail(conn, table, proto.OTHER_SUBJECT)  # the session stays for its owner
        return
    if state.real is not None:
        # The client saw its socket die before the proxy did: that one goes.
        old, state.real = state.real, None
        old.abort()
        state.replay.cut_at = state.replay.sent
    if not state.holdable():
        state.end(proto.CLOSED)
        _fail(conn, table, proto.CLOSED)
        return
    state.rewind()
    missed = state.replay.replay(ask.received)
    if missed is None:
        state.end(proto.OVERRUN)
        _fail(conn, table, proto.OVERRUN)
        return
    if state.hold_timer is not None:
        state.hold_timer.cancel()
        state.hold_timer = None
    state.replay.cut_at = None
    held.session.drop_client_partial()
    request = conn.session.request
    assert request is not None
    assert held.session.accepted is not None
    held.resumed_by(conn)
    transport = conn.take_client()
    # The session's subprotocol if the resume offers it again; else the proxy's own
    # choice, the resume's auth offer first (a token as a subprotocol is new on each
    # attempt, and never among the offers the backend saw).
    chosen = held.session.accepted.subprotocol
    if chosen not in request.subprotocols:
        chosen = proxy_subprotocol(request.subprotocols, conn.session.auth_subprotocol)
    acked = state.acked = held.session.messages(UPSTREAM)
    state.real = transport
    transport.set_protocol(ResumeClientProtocol(state, transport))
    transport.writelines([
        accept_response(request.key, UpstreamAccepted(chosen, None)),
        proto.control(type="resumed", acked=acked, sent=state.replay.sent),
        *missed,
    ])
    table.outcomes["resumed"] += 1
    transport.resume_reading()


def _fail(conn: Connection, table: ResumeTable, reason: str) -> None:
    table.outcomes[reason] += 1
    conn.refuse_resume(CloseRefusal(
        "resume_failed", ProxyClose(proto.RESUME_FAILED, f"resume failed: {reason}")
    ))
