"""Links: transports of our own, read and written through one epoll descriptor per loop
(issue 18, stage 1).

A uvloop transport's every read and every flushed write is a turn of libuv's poll
callback, a handle, the GIL and a Python call: the dispatch the hub
(wsproxy.io.hub) saves the pumps of busy connections. A link is a transport that
costs none of it: an *engine* is one epoll descriptor of a loop (level-triggered)
holding the loop's links and listeners, the loop's only reader for them
(``loop.add_reader(engine.fileno(), engine.ready)``, as a hub); its ``ready()`` takes
the ready sockets with epoll_wait()s that do not wait, and reads, writes or accepts
for each. A link is the part of asyncio.Transport wsproxy uses, with the semantics of
uvloop's and asyncio's transports (what a protocol sees does not change: Connection,
wsproxy.io.connection, is the same on either), for the plain-TCP client listeners
(``serve``) and the ws:// backend dials (``dial``); TLS stays on the loop's transports.

``Engine`` is ``_links.Engine`` (wsproxy/io/_links.c: ``Engine``, ``Listener``,
``Link``) where it was built, the speedups are on (wsproxy.core.scan.SPEEDUPS) and
epoll exists; None otherwise, and ``LINKS`` is false: without C, wsproxy keeps the
loop's own transports, which are faster than a link in Python. ``PyEngine``,
``PyListener`` and ``PyLink`` below are the same logic in Python, a method per event as
the C twin has a function per event: the reference tests/unit/test_links.py compares
the C one with, and what ``open_engine(loop, PyEngine)`` gives a test without C.

Fairness, as the hub's: ``ready()`` handles at most ``limit`` events, batch after batch
while any is ready, each member once (a socket still ready after its turn, or past
the limit, waits for the next wake, after the loop's other callbacks): what a pass
reads, a driver may hold until the pass's end (wsproxy.io.pass_end), so a busy socket
read again and again within one wake would pile its bytes up there, unbounded by the
other transport's write limits. A link is in the epoll set
only for what it waits for (EPOLLIN while it reads, EPOLLOUT while it has bytes to
send or is connecting), and out of it while it waits for nothing: a socket the peer
hung up on is always ready (EPOLLHUP needs no asking), and a paused link must not keep
the loop awake.

A proxy has an engine of its own (wsproxy.supervisor.serve): ``open_engine(loop)``
makes it and adds its reader, ``close_engine(engine)`` removes the reader and closes
it; ``LinkServer(engine, sockets, factory)`` accepts on listening sockets (``sockets``
and ``close()`` as asyncio.Server's); ``dial_link(engine, factory, host, port)``
connects to a numeric address (wsproxy.io.dialer: ws:// backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import os
import select
import socket
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol, cast

from wsproxy.core.scan import SPEEDUPS
from wsproxy.io.listen_socket import CAPACITY_ERRNOS

#: Events handled per ``ready()`` at most: the loop's other callbacks wait for no more.
LINK_EVENTS: Final = 64
#: What one recv() reads at most (a readiness is one recv(): the others wait their turn).
LINK_READ: Final = 256 * 1024
#: Connections a listener accepts per readiness at most (level-triggered: the rest are
#: still ready at the next wake, after the links' reads).
ACCEPTS: Final = 16
#: Seconds a listener rests after accept() found no room (EMFILE, ENFILE, ENOBUFS,
#: ENOMEM): a ready listener it cannot take from would otherwise spin the loop.
ACCEPT_REST: Final = 0.1
#: asyncio's default write limits: ``pause_writing()`` over the high one, and
#: ``resume_writing()`` once drained to the low one.
WRITE_HIGH: Final = 64 * 1024
WRITE_LOW: Final = WRITE_HIGH // 4

# The epoll events (Linux's values: the module imports anywhere, Engine is None there).
_IN: Final[int] = getattr(select, "EPOLLIN", 0x001)
_OUT: Final[int] = getattr(select, "EPOLLOUT", 0x004)
_ERR: Final[int] = getattr(select, "EPOLLERR", 0x008)
_HUP: Final[int] = getattr(select, "EPOLLHUP", 0x010)
#: The C engine's bound on *limit* (its events are on the stack).
_MAX_EVENTS: Final = 1024


class AnyListener(Protocol):
    """What a LinkServer asks of a listener (PyListener or the C Listener)."""

    def close(self) -> None: ...


class AnyLink(Protocol):
    """What ``dial`` asks of a link before it is connected (PyLink or the C Link)."""

    def abort(self) -> None: ...


class AnyEngine(Protocol):
    """What the helpers ask of an engine (PyEngine or the C Engine)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    def fileno(self) -> int: ...
    def ready(self) -> None: ...
    def listen(
        self, sock_fd: int, factory: Callable[[], asyncio.Protocol], /,
    ) -> AnyListener: ...
    def connect(
        self, host: str, port: int, protocol: asyncio.Protocol, future: asyncio.Future[Any], /,
    ) -> AnyLink: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...


class PyEngine:
    """Links and listeners read and written through one epoll descriptor (the module's
    doc; ``_links.Engine`` is its compiled twin).

    ``ready()``, the loop reader's callback on ``fileno()``: epoll_wait()s that do not
    wait, each batch's events handled in order (``event()`` of the link or listener),
    until a batch comes back empty or *limit* events were handled. A member an earlier
    event's callback closed (or the engine, closed by one) is skipped: its events were
    taken before it left. ``listen(sock_fd, factory)`` accepts on a listening socket
    (the caller's: never closed here); ``connect(host, port, protocol, future)``
    dials. ``close()`` aborts every member and closes the descriptor (idempotent);
    ``len()`` counts the members.
    """

    __slots__ = ("_epoll", "limit", "loop", "members", "reserve", "round")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = LINK_EVENTS) -> None:
        if not 1 <= limit <= _MAX_EVENTS:
            raise ValueError(f"Engine(): limit must be within 1..{_MAX_EVENTS}")
        self.loop = loop
        self.limit = limit
        self._epoll: select.epoll | None = select.epoll()
        #: fd -> the link or listener on it (in the epoll set or not: see ``_arm``).
        self.members: dict[int, PyLink | PyListener] = {}
        #: A descriptor kept for the listeners' answer to EMFILE (PyListener._shed),
        #: or -1 (they rest instead).
        self.reserve = _reserve()
        #: The ``ready()`` calls so far: a member handled in this one has it as ``seen``.
        self.round = 0

    def fileno(self) -> int:
        return self._open().fileno()

    def ready(self) -> None:
        self.round += 1
        turn = self.round
        done = 0
        while self._epoll is not None and done < self.limit:
            members = self.members
            # The members as they are now: an fd closed and reused by a callback of
            # this batch is another member, which the stale event must not reach.
            batch = [(members.get(fd), events)
                     for fd, events in self._epoll.poll(0, self.limit - done)]
            fresh = 0
            for member, events in batch:
                # Once a ready() at most: what a pass reads waits for the pass's end
                # (a driver's writes), so a busy socket read again and again before it
                # would pile up its bytes there.
                if member is not None and member._engine is self and member.seen != turn:
                    member.seen = turn
                    fresh += 1
                    member.event(events)
            if not fresh:  # none ready, or only those handled already
                return
            done += fresh

    def listen(self, sock_fd: int, factory: Callable[[], asyncio.Protocol]) -> PyListener:
        """Accept on the listening socket *sock_fd*; ``factory()`` makes each client's
        protocol. OSError if *sock_fd* is no socket or already a member."""
        self._open()
        os.set_blocking(sock_fd, False)  # or a round's second accept() waits for a client
        listener = PyListener(self, sock_fd, factory)
        self._arm(listener, _IN)
        self.members[sock_fd] = listener
        return listener

    def connect(
        self, host: str, port: int, protocol: asyncio.Protocol, future: asyncio.Future[Any],
    ) -> PyLink:
        """A link connecting to *host* (a numeric IPv4 or IPv6 address: ValueError
        otherwise) and *port*. Connected: ``protocol.connection_made(link)``, reading
        starts, ``future.set_result(link)`` (*future* done by then, a dial cancelled:
        the link closed, nothing called). Failed: ``future.set_exception(OSError(errno,
        strerror))``, nothing called on *protocol*. socket() failing (EMFILE...) raises
        its OSError here."""
        self._open()
        family, peer = _address(host, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(peer)
        except BaseException:
            sock.close()
            raise
        link = PyLink(self, sock, peer, protocol)
        link._connecting = True
        link._future = future
        # Connected at once (0) is seen as later, by the same EPOLLOUT: nothing is
        # called from inside connect(). EINTR: the connection goes on (POSIX).
        if err not in (0, errno.EINPROGRESS, errno.EINTR):
            link._connect_failed(err)
            return link
        self.members[link._fd] = link
        link._arm()
        return link

    def close(self) -> None:
        """Every member aborted (connection_lost follows for the links whose
        connection_made was called), the descriptor closed: idempotent."""
        if self._epoll is None:
            return
        for member in list(self.members.values()):
            if isinstance(member, PyListener):
                member.close()
            else:
                member.abort()
        self.members.clear()
        epoll, self._epoll = self._epoll, None
        epoll.close()
        if self.reserve >= 0:
            os.close(self.reserve)
            self.reserve = -1

    def __len__(self) -> int:
        return len(self.members)

    def _arm(self, member: PyLink | PyListener, mask: int) -> None:
        """*member*'s socket waited for *mask*: in the epoll set, modified, or out of it
        (0: waiting for nothing, as EPOLLHUP and EPOLLERR need no asking)."""
        old = member._mask
        if mask == old:
            return
        epoll = self._open()
        if not old:
            epoll.register(member._fd, mask)
        elif not mask:
            epoll.unregister(member._fd)
        else:
            epoll.modify(member._fd, mask)
        member._mask = mask

    def _leave(self, member: PyLink | PyListener) -> None:
        """*member* out of the set and of the members, before its socket closes (epoll
        forgets a socket only once every descriptor of it is closed)."""
        if member._mask and self._epoll is not None:
            self._epoll.unregister(member._fd)
        member._mask = 0
        if self.members.get(member._fd) is member:
            del self.members[member._fd]

    def _open(self) -> select.epoll:
        if self._epoll is None:
            raise ValueError("the engine is closed")
        return self._epoll


class PyListener:
    """Accepts on a listening socket for its engine (``_links.Listener`` is its twin).

    A readiness (``event()``) accepts up to ACCEPTS connections; each gets TCP_NODELAY,
    a protocol from *factory* and a link, whose ``connection_made`` is called and which
    then reads. Out of descriptors (EMFILE, ENFILE): libuv's answer (``_shed``), so that
    the clients in the backlog hear at once that nothing is to be had here rather than
    wait for a timeout. Without a reserve to spend, or out of memory (the other
    CAPACITY_ERRNOS): accepting rests ACCEPT_REST seconds, out of the epoll set. Either
    way the error is told to nobody (the process's connection limits and metrics are
    elsewhere). ECONNABORTED: the next one. Another error is
    reported to the loop's exception handler and ends the round (the listener tries
    again at its next readiness). The socket is the caller's: ``close()`` only stops
    accepting (idempotent).
    """

    __slots__ = (
        "_engine", "_family", "_fd", "_mask", "_nodelay", "_proto", "_timer", "_type",
        "factory", "seen",
    )

    def __init__(
        self, engine: PyEngine, sock_fd: int, factory: Callable[[], asyncio.Protocol],
    ) -> None:
        # The socket's kind, read once: each readiness wraps the descriptor in a
        # socket.socket to accept() with, for no system call, and lets it go again.
        probe = socket.socket(fileno=sock_fd)
        try:
            self._family, self._type, self._proto = probe.family, probe.type, probe.proto
            # Its clients' TCP_NODELAY, inherited (_serve); an error: set on each.
            with contextlib.suppress(OSError):
                probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        finally:
            probe.detach()
        #: The clients' TCP_NODELAY: 0 not known yet, 1 inherited, -1 set on each.
        self._nodelay = 0
        self._engine: PyEngine | None = engine
        self._fd = sock_fd
        self._mask = 0
        #: The engine's ``round`` when it last handled this listener.
        self.seen = 0
        self.factory = factory
        #: The end of a rest (ACCEPT_REST), while accepting rests.
        self._timer: asyncio.TimerHandle | None = None

    def event(self, events: int) -> None:
        listening = socket.socket(self._family, self._type, self._proto, fileno=self._fd)
        try:
            for _ in range(ACCEPTS):
                try:
                    sock, peer = listening.accept()
                except BlockingIOError:
                    return
                except (ConnectionAbortedError, InterruptedError):
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE) and self._shed(listening):
                        return
                    if exc.errno in CAPACITY_ERRNOS:
                        self._rest()
                    else:  # the listener goes on at the next readiness
                        self._report("Error on accepting a connection.", exc)
                    return
                self._serve(sock, peer)
                if self._engine is None:  # closed by the new link's connection_made
                    return
        finally:
            listening.detach()

    def close(self) -> None:
        engine = self._engine
        if engine is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        engine._leave(self)
        self._engine = None

    def _serve(self, sock: socket.socket, peer: Any) -> None:
        engine = cast(PyEngine, self._engine)
        sock.setblocking(False)  # Python's accept4() has no SOCK_NONBLOCK
        with contextlib.suppress(OSError):  # (as the C twin: no reason to refuse one)
            # Linux's accepted sockets inherit TCP_NODELAY from the listener (__init__
            # set it there), which the first client shows: a setsockopt() a client saved.
            if self._nodelay == 0:
                inherited = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                self._nodelay = 1 if inherited else -1
            if self._nodelay < 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            protocol = self.factory()
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, Exception):
                raise
            self._report("Fatal error: the listener's protocol factory failed.", exc)
            return
        link = PyLink(engine, sock, peer, protocol)
        engine.members[link._fd] = link
        link._make()

    def _shed(self, listening: socket.socket) -> bool:
        """The engine's reserve descriptor closed, every waiting connection accepted
        and closed at once, the reserve taken again; False: no reserve to spend."""
        engine = cast(PyEngine, self._engine)
        if engine.reserve < 0:
            return False
        os.close(engine.reserve)
        engine.reserve = -1
        while True:
            try:
                sock, _ = listening.accept()
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError:
                break
            sock.close()
        engine.reserve = _reserve()
        return True

    def _rest(self) -> None:
        engine = cast(PyEngine, self._engine)
        engine._arm(self, 0)
        self._timer = engine.loop.call_later(ACCEPT_REST, self._wake)

    def _wake(self) -> None:
        self._timer = None
        if self._engine is not None:
            self._engine._arm(self, _IN)

    def _report(self, message: str, exc: Exception) -> None:
        cast(PyEngine, self._engine).loop.call_exception_handler(
            {"message": message, "exception": exc})


class PyLink:
    """A connection's transport, read and written by its engine (the module's doc;
    ``_links.Link`` is its compiled twin).

    Reading: one recv() of up to LINK_READ per readiness, to ``data_received``; the
    end of the stream stops reading and calls ``eof_received`` (false: ``close()``).
    ``write()`` sends at once when nothing is buffered, buffers what send() did not
    take and sends it when the socket is writable; ``pause_writing()`` over the high
    limit, ``resume_writing()`` once drained to the low one. A read or send error
    (ECONNRESET, EPIPE...) aborts the link: connection_lost(OSError(errno, strerror)),
    not reported (a peer's reset is news, not a bug). An exception of a protocol
    callback is reported to the loop's exception handler and aborts the link.

    connection_lost is called exactly once for a link whose connection_made was, always
    through ``loop.call_soon`` (never from inside ``close()`` or ``abort()``), and the
    link holds no protocol after it. The link owns its socket: ``fileno()`` is -1
    once it is closed.
    """

    __slots__ = (
        "_buffer", "_closing", "_connecting", "_engine", "_eof", "_fd", "_future", "_high",
        "_lost", "_low", "_made", "_mask", "_paused", "_peer", "_protocol", "_read_eof",
        "_reading", "_sock", "loop", "seen",
    )

    def __init__(
        self, engine: PyEngine, sock: socket.socket, peer: Any, protocol: asyncio.Protocol,
    ) -> None:
        self.loop = engine.loop
        #: The engine, while the link is its member (None once the socket is closed).
        self._engine: PyEngine | None = engine
        self._sock = sock
        self._fd = sock.fileno()
        #: What the socket waits for in the epoll set (0: out of it).
        self._mask = 0
        #: The engine's ``round`` when it last handled this link.
        self.seen = 0
        #: The address as socket.getpeername() gives it (accept()'s, or the one dialled).
        self._peer = peer
        self._protocol: asyncio.Protocol | None = protocol
        #: A dial's future, while it connects.
        self._future: asyncio.Future[Any] | None = None
        self._connecting = False
        #: connection_made was called: connection_lost will be.
        self._made = False
        #: connection_lost is scheduled (or was called).
        self._lost = False
        self._reading = True
        #: The stream's end was read: reading stays stopped.
        self._read_eof = False
        self._closing = False
        #: write_eof() was called.
        self._eof = False
        #: The protocol's writing is paused (pause_writing() was called, not resumed yet).
        self._paused = False
        self._buffer = bytearray()
        self._high = WRITE_HIGH
        self._low = WRITE_LOW

    # The engine's events.

    def event(self, events: int) -> None:
        if self._connecting:
            self._connected(events)
            return
        if events & (_IN | _ERR | _HUP) and not self._closing and not self._read_eof:
            if self._reading:
                self._readable()
            else:
                self._arm()  # paused (lazily, see pause_reading): now out
        if self._buffer and events & (_OUT | _ERR | _HUP):  # no buffer once closed
            self._writable()

    def _connected(self, events: int) -> None:
        err = 0
        try:  # writable without an error reported: connected (no getsockopt() to ask)
            if events & (_ERR | _HUP):
                err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err in (errno.EINPROGRESS, errno.EALREADY):  # not yet (a spurious wake)
            return
        if err:
            self._connect_failed(err)
            return
        self._connecting = False
        future, self._future = self._future, None
        if future is None or future.done():
            # Given up on meanwhile (a dial cancelled): closed, nothing called, as the
            # loop's create_connection would not have made the protocol.
            self._lose(None)
            return
        self._make()
        if future.done():  # cancelled by connection_made: no one takes the link
            self.abort()
        else:
            future.set_result(self)

    def _connect_failed(self, err: int) -> None:
        """The dial failed (or was aborted: ECONNABORTED): the socket closed, nothing
        called on the protocol, which is let go; the future told unless it is done."""
        future = self._future
        self._connecting = False
        self._lose(None)
        if future is not None and not future.done():
            future.set_exception(OSError(err, os.strerror(err)))

    def _make(self) -> None:
        """connection_made, then reading starts (unless the protocol paused it, or
        closed the link)."""
        self._made = True
        protocol = cast(asyncio.Protocol, self._protocol)
        try:
            protocol.connection_made(cast(asyncio.Transport, self))
        except Exception as exc:
            self._failed("connection_made", exc, protocol)
            return
        self._arm()

    def _readable(self) -> None:
        try:
            data = self._sock.recv(LINK_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(_error(exc))
            return
        protocol = cast(asyncio.Protocol, self._protocol)
        if data:
            try:
                protocol.data_received(data)
            except Exception as exc:
                self._failed("data_received", exc, protocol)
            return
        self._reading = False
        self._read_eof = True
        self._arm()
        try:
            keep_open = bool(protocol.eof_received())
        except Exception as exc:
            self._failed("eof_received", exc, protocol)
            return
        if not keep_open:
            self.close()

    def _writable(self) -> None:
        buffer = self._buffer
        try:
            sent = self._sock.send(buffer, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(_error(exc))
            return
        del buffer[:sent]
        if self._paused and len(buffer) <= self._low:
            self._paused = False
            protocol = cast(asyncio.Protocol, self._protocol)
            try:
                protocol.resume_writing()
            except Exception as exc:  # reported, the link goes on (as asyncio's)
                self._report("protocol.resume_writing() failed", exc, protocol)
            if self._fd < 0:  # closed by resume_writing
                return
        if not buffer:
            if self._closing:
                self._lose(None)  # close()'s end: the buffer is out
                return
            if self._eof:
                self._shutdown()
        self._arm()

    # asyncio.WriteTransport.

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return
        if isinstance(data, memoryview):
            data = data.cast("B")  # len() in bytes
        buffer = self._buffer
        if buffer or self._connecting:
            buffer += data
        else:
            try:
                sent = self._sock.send(data, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lose(_error(exc))
                return
            if sent == len(data):
                return
            buffer += memoryview(data)[sent:]
            self._arm()
        self._maybe_pause()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """shutdown(SHUT_WR), once the buffer is out (at once if it is)."""
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._buffer and not self._connecting:
            self._shutdown()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        # asyncio's rules (asyncio.transports._FlowControlMixin).
        if high is None:
            high = WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high = high
        self._low = low
        self._maybe_pause()

    # asyncio.ReadTransport.

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        # Lazily: the socket stays in the epoll set for reading until it is ready (then
        # event() takes it out). The usual pause, the client's between its request and
        # the backend's 101, sees no byte: no epoll_ctl() for it, nor for its resume.
        if not self._closing:
            self._reading = False

    def resume_reading(self) -> None:
        if self._closing or self._reading or self._read_eof:
            return
        self._reading = True
        self._arm()

    # asyncio.BaseTransport.

    def close(self) -> None:
        """Reading stops; the socket closes once the buffer is out (at once if it is),
        and connection_lost(None) is called soon. Idempotent."""
        if self._closing:
            return
        if self._connecting:
            self.abort()
        elif self._buffer:
            self._closing = True
            self._reading = False
            self._arm()
        else:
            self._lose(None)

    def abort(self) -> None:
        """The buffer dropped, the socket closed now, connection_lost(None) soon (if
        not already lost). A link still connecting: nothing is called on its protocol,
        its future (unless done) gets OSError(ECONNABORTED): a dial does not wait on a
        link no engine drives any more (``PyEngine.close()``)."""
        if self._connecting:
            self._connect_failed(errno.ECONNABORTED)
        else:
            self._lose(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "sockname":
            if self._fd < 0:
                return default
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        if name == "socket":
            return self  # what wsproxy asks of it: fileno(), -1 once closed
        return default

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.Protocol | None:
        return self._protocol

    def fileno(self) -> int:
        return self._fd

    # Inside.

    def _arm(self) -> None:
        """The socket in the epoll set for what the link waits for now."""
        if self._engine is None:
            return
        if self._connecting:
            mask = _OUT
        else:
            mask = (_IN if self._reading else 0) | (_OUT if self._buffer else 0)
        self._engine._arm(self, mask)

    def _maybe_pause(self) -> None:
        if self._paused or len(self._buffer) <= self._high or self._protocol is None:
            return
        self._paused = True
        protocol = self._protocol
        try:
            protocol.pause_writing()
        except Exception as exc:  # reported, the link goes on (as asyncio's)
            self._report("protocol.pause_writing() failed", exc, protocol)

    def _shutdown(self) -> None:
        """shutdown(SHUT_WR). Its error (ENOTCONN: the peer reset) is left to the
        reading, or the next send, to meet."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def _lose(self, exc: OSError | None) -> None:
        """The end: closing, the buffer dropped, the socket closed now, and
        connection_lost(*exc*) scheduled once if connection_made was called."""
        self._closing = True
        self._reading = False
        self._buffer.clear()
        if self._fd >= 0:
            if self._engine is not None:
                self._engine._leave(self)
                self._engine = None
            self._sock.close()
            self._fd = -1
        if not self._made:
            self._protocol = None  # a dial that never connected: nothing is called
            self._future = None
        elif not self._lost:
            self._lost = True
            self.loop.call_soon(self._call_lost, exc)

    def _call_lost(self, exc: OSError | None) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        try:
            protocol.connection_lost(exc)
        except Exception as error:
            self._report("Exception in protocol.connection_lost()", error, protocol)
        finally:
            self._protocol = None

    def _failed(self, name: str, exc: Exception, protocol: asyncio.Protocol) -> None:
        """protocol.<*name*>()'s exception: reported, the link aborted."""
        self._report(f"Fatal error: protocol.{name}() call failed.", exc, protocol)
        self.abort()

    def _report(self, message: str, exc: Exception, protocol: asyncio.Protocol) -> None:
        self.loop.call_exception_handler({
            "message": message,
            "exception": exc,
            "transport": self,
            "protocol": protocol,
        })


#: An engine of either kind, as wsproxy uses it.
LinkEngine = AnyEngine


def open_engine(
    loop: asyncio.AbstractEventLoop, kind: Callable[..., AnyEngine] | None = None,
) -> AnyEngine | None:
    """A new engine on *loop* (of *kind*: by default ``Engine``, the C one), its
    descriptor a reader of the loop; None when there is none (no C, no epoll: the
    loop's own transports serve). One per proxy (wsproxy.supervisor.serve), closed by
    ``close_engine`` when it stops."""
    make = kind if kind is not None else Engine
    if make is None:
        return None
    engine = make(loop)
    loop.add_reader(engine.fileno(), engine.ready)
    return engine


def close_engine(engine: AnyEngine) -> None:
    """*engine*'s reader removed and the engine closed: its links aborted (their
    connection_lost follows), its listeners stopped. Idempotent."""
    with contextlib.suppress(ValueError):  # closed already: no descriptor
        engine.loop.remove_reader(engine.fileno())
    engine.close()


class LinkServer:
    """Listening sockets whose clients are links of one engine: ``sockets`` and
    ``close()`` as asyncio.Server's."""

    __slots__ = ("_listeners", "sockets")

    def __init__(
        self, engine: AnyEngine, sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        """Accept on *sockets* (made non-blocking; the server owns them now) through
        *engine*; ``factory()`` makes each client's protocol."""
        #: The listening sockets (empty once closed, as asyncio.Server's).
        self.sockets = sockets
        self._listeners: list[AnyListener] = []
        try:
            for sock in sockets:
                sock.setblocking(False)
                self._listeners.append(engine.listen(sock.fileno(), factory))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Every listener stopped, then the sockets closed (idempotent)."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            sock.close()

    def is_serving(self) -> bool:
        return bool(self._listeners)


async def dial_link(
    engine: AnyEngine, factory: Callable[[], asyncio.Protocol], host: str, port: int,
) -> asyncio.Transport:
    """A link of *engine* connected to *host* (a numeric IPv4 or IPv6 address) and
    *port*, its protocol ``factory()``'s, connection_made called (the link, typed as
    the transport it stands in for), as the loop's create_connection.

    Raises:
        OSError: socket() failed (EMFILE...), or the connect did (refused, unreachable).
        ValueError: *host* is not a numeric address.
        asyncio.CancelledError: cancelled while connecting: the link is aborted.
    """
    future: asyncio.Future[Any] = engine.loop.create_future()
    link = engine.connect(host, port, factory(), future)
    try:
        return cast(asyncio.Transport, await future)
    except asyncio.CancelledError:
        link.abort()
        raise


def _reserve() -> int:
    """A descriptor to spend when out of them (PyListener._shed), or -1."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The family of the numeric address *host* and the peername a socket connected to
    it and *port* would give (ValueError if it is no numeric address)."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be within 0..65535, not {port!r}")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host)
        except OSError:
            continue
        text = socket.inet_ntop(family, packed)  # as getpeername() spells it
        return family, (text, port) if family == socket.AF_INET else (text, port, 0, 0)
    raise ValueError(f"not a numeric IPv4 or IPv6 address: {host!r}")


def _error(exc: OSError) -> OSError:
    """A socket call's error as the C twin makes it: OSError(errno, strerror), which is
    the errno's subclass (ConnectionResetError...), without the traceback's frames."""
    err = exc.errno or errno.EIO
    return OSError(err, os.strerror(err))


def _pick() -> Callable[..., AnyEngine] | None:
    if SPEEDUPS != "c" or not hasattr(select, "epoll"):
        return None
    try:
        module = importlib.import_module("wsproxy.io._links")
    except ImportError:
        return None
    return cast("Callable[..., AnyEngine] | None", getattr(module, "Engine", None))


#: The C engine (``_links.Engine``) where it was built and the speedups are on, else
#: None: wsproxy then keeps the loop's transports (faster than PyEngine's links).
Engine: Final = _pick()
#: Whether wsproxy serves and dials plain TCP through links.
LINKS: Final[bool] = Engine is not None
