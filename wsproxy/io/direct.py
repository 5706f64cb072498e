"""An OPEN connection's reads relayed without the driver's Python (issue 18).

Once a Connection's session is OPEN, with no backend being dialled, ``relay_directly``
puts a relay protocol on each transport (``Session.relay_protocol``: the C
``_scan.Relay`` where it was built, wsproxy.core.scan.PyRelay otherwise). A read
of whole data messages then goes from one transport's read callback to the other's
``write`` in one C call, counted by the session as ``Session.relay`` counts it.
Every other read, and every other callback (EOF, loss, pause and resume of
writing), goes to the Connection's own path, which stays the one that decides on
control frames, fragments, limits, our pings and closes, and losses: reads, EOF and
loss to the Connection directly (its ``receive``, ``receive_close``, ``receive_eof``,
``transport_lost`` with the relay's side), the rest through the protocol the
transport had before (``get_protocol()``, kept in the relay as ``original``).

The relays stay on until their transports are lost (their ``connection_lost`` lets go
of each other): a relay reads the session's state on every read, so once the session
is no longer OPEN every read goes the driver's way (a whole close frame to its
``receive_close``, the close handshake's usual answer), as it would without the relay.

Where both transports are plain TCP (not TLS) and the C pump is there (``FEEDING``), a
feed (``_Feed``) goes further once a relay has passed FEED_AFTER reads straight through
(its ``wake``: idle and short connections never pay for a feed's descriptors and
pumps): each transport's reading is paused and a duplicate of its socket is read by a
pump (``pump.Pump``: ``_scan.Pump`` in C, ``pump.PyPump`` otherwise) through the loop's
hub (wsproxy.io.hub: one epoll descriptor for every fed socket of the loop, one loop
reader for all of them, each ready socket's pump called from C). A read then goes from
recv() to the relay's checks to send() on the other socket (at the end of the hub's
batch) with no bytes object, no transport callbacks and no loop dispatch of its own,
as long as the other transport has nothing buffered (otherwise through its write, so
nothing overtakes the driver's own frames). Reads the relay would not pass go to the
driver as before. The end of a stream or a read error gives the reading back to the
transport (after an error the transport is aborted, as its own read error would have
it), and so do ``stop_feed`` (the session left OPEN) and the loss of either
transport; a pause of writing on one transport stops the pump that writes into it
until its resume (the driver's pause and resume of the other transport's reading still
happen: the feed takes the reading back after a resume): that socket leaves the hub
meanwhile. A feed's end takes its sockets out of the hub before it closes them, and
the hub is closed once no feed of its loop is left.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
from typing import Final, cast

from wsproxy.core.scan import Driver, PyRelay, Relay
from wsproxy.core.session import Session
from wsproxy.core.states import SessionState, Side
from wsproxy.io import hub
from wsproxy.io.pump import Pump, PyPump


def relay_directly(
    driver: Driver, session: Session, client: asyncio.Transport | None,
    upstream: asyncio.Transport | None,
) -> bool:
    """Both transports to relay protocols, if the session is OPEN and both are there
    (once per connection: when it opens); whether they were (``stop_feed`` then has
    work to do when the session leaves OPEN). *driver*: the Connection whose
    protocols the transports have, which each relay calls directly with its side
    (PyRelay's doc)."""
    if session.state is not _OPEN or client is None or upstream is None:
        return False
    # The drivers' protocols are asyncio.Protocols: a relay stands in for one, and
    # implements the same callbacks (uvloop and asyncio ask no more of a protocol).
    # (No typing.cast: four Python calls an upgrade, ~2k instructions.)
    make = session.relay_protocol
    to_upstream = make(_CLIENT, upstream.write, client.get_protocol())  # type: ignore[arg-type]
    to_client = make(_UPSTREAM, client.write, upstream.get_protocol())  # type: ignore[arg-type]
    client.set_protocol(to_upstream)  # type: ignore[arg-type]
    upstream.set_protocol(to_client)  # type: ignore[arg-type]
    # The driver called without its protocols' one-line callbacks, and a read that is
    # one whole close frame to its receive_close first (the end of nearly every
    # connection: PyRelay._close).
    to_upstream.driver = to_client.driver = driver
    to_upstream.side = _CLIENT
    to_client.side = _UPSTREAM
    if not FEEDING:
        return True
    # The feed once the connection shows it carries messages: an idle or short one
    # never pays for it (two more descriptors, two loop readers, ~1 KiB).
    to_upstream.transport = client
    to_upstream.mate = to_client
    to_upstream.countdown = to_client.countdown = FEED_AFTER
    to_upstream.wake = to_client.wake = _start_feed
    to_client.transport = upstream
    to_client.mate = to_upstream
    return True


def stop_feed(transport: asyncio.Transport | None) -> None:
    """The session left OPEN: the feed of *transport* (of both its connection's
    transports), if one runs, stops, and the transports read their sockets again.
    The relays stay on (the module's doc)."""
    if transport is not None:
        protocol = transport.get_protocol()
        if isinstance(protocol, _RELAYS) and protocol.feeder is not None:
            protocol.feeder.stop()


def _unwake(relay: PyRelay) -> None:
    """No feed to start any more: the relay's references for it dropped (the two relays
    refer to each other: left, that cycle would wait for the garbage collector)."""
    relay.wake = None
    relay.mate = None
    relay.transport = None


def _start_feed(relay: PyRelay) -> None:
    """A relay's ``wake``: the connection carries messages, its sockets get a feed."""
    mate = cast(PyRelay, relay.mate)
    transport = cast(asyncio.Transport, relay.transport)
    other = cast(asyncio.Transport, mate.transport)
    _unwake(relay)
    _unwake(mate)
    if transport.is_closing() or other.is_closing() or not (_plain(transport)
                                                             and _plain(other)):
        return
    try:
        feed = _Feed(asyncio.get_running_loop(), transport, other, relay, mate)
    except OSError:  # out of descriptors (EMFILE, ENFILE): the relays go on without
        return
    feed.start()


def _plain(transport: asyncio.Transport) -> bool:
    """Whether *transport* reads a socket of its own (TLS transports keep their reads)."""
    if transport.get_extra_info("ssl_object") is not None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.fileno() >= 0


class _Reading:
    """One socket of a feed, read by its pump: what the relay on the *other* transport
    tells of that transport's writing (``PyRelay.feeder``)."""

    __slots__ = ("fd", "feed", "hub", "paused", "pump", "transport")

    def __init__(self, feed: _Feed, transport: asyncio.Transport, fd: int) -> None:
        self.feed = feed
        self.transport = transport
        self.fd = fd
        self.pump: PyPump | None = None
        #: The loop's hub that reads the socket, once it has.
        self.hub: hub.AnyHub | None = None
        #: The other transport's writing is paused: this socket is not read meanwhile.
        self.paused = False

    def begin(self) -> None:
        """Reads to the pump instead of the transport (unless the driver paused them)."""
        if not self.transport.is_reading():
            self.paused = True  # flow control got there first: its resume starts us
            return
        self.transport.pause_reading()
        self.hub = hub.join(self.feed.loop, cast(PyPump, self.pump))

    def pause(self) -> None:
        if self.feed.on and not self.paused:
            self.paused = True
            self.leave()

    def leave(self) -> None:
        """The socket out of the hub (before it is closed: see io.hub)."""
        if self.hub is not None:
            self.hub.remove(cast(PyPump, self.pump))

    def resume(self) -> None:
        # After the driver's resume_reading: the reading is taken back from the transport.
        if self.feed.on and self.paused and not self.transport.is_closing():
            self.paused = False
            self.begin()

    def stop(self) -> None:
        self.feed.stop()

    def end(self, errno: int) -> None:
        """The pump read the end of the stream (0) or an error: the transport reads
        again and finds the end itself; after an error it is aborted, as its own read
        error would have it."""
        self.feed.stop()
        if errno:
            self.transport.abort()


class _Feed:
    """Both sockets of an OPEN plain-TCP connection read by pumps (the module's doc)."""

    __slots__ = ("loop", "on", "readings", "relays")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, a: asyncio.Transport, b: asyncio.Transport,
        relay_a: PyRelay, relay_b: PyRelay,
    ) -> None:
        """*a* and *b*: the two transports (either way round), *relay_a* and *relay_b*
        their relay protocols. OSError if a socket cannot be duplicated."""
        self.loop = loop
        self.on = False
        fd_a = os.dup(a.get_extra_info("socket").fileno())
        try:
            fd_b = os.dup(b.get_extra_info("socket").fileno())
        except OSError:
            os.close(fd_a)
            raise
        if max(fd_a, fd_b) >= _descriptor_ceiling():
            # Near the limit: the descriptors are for accepting connections, not this.
            os.close(fd_a)
            os.close(fd_b)
            raise OSError(errno.EMFILE, "too close to the descriptor limit for a feed")
        reading_a = _Reading(self, a, fd_a)
        reading_b = _Reading(self, b, fd_b)
        # The C pump takes C relays; the Python one any (tests mix them).
        pump = Pump if isinstance(relay_a, Relay) else PyPump
        reading_a.pump = pump(relay_a, fd_a, fd_b, b, reading_a.end)
        reading_b.pump = pump(relay_b, fd_b, fd_a, a, reading_b.end)
        self.readings: tuple[_Reading, ...] = (reading_a, reading_b)
        self.relays: tuple[PyRelay, ...] = (relay_a, relay_b)
        # Each relay hears of its transport's writing: the pump of the other socket
        # writes into it.
        relay_b.feeder = reading_a
        relay_a.feeder = reading_b

    def start(self) -> None:
        self.on = True
        for reading in self.readings:
            reading.begin()

    def stop(self) -> None:
        """The transports read again (each that the driver had not paused), the
        duplicates closed: idempotent."""
        if not self.on:
            return
        self.on = False
        for relay in self.relays:
            relay.feeder = None
        for reading in self.readings:
            reading.leave()
            cast(PyPump, reading.pump).detach()
            reading.pump = None  # (pump -> reading.end -> reading: no cycle left for gc)
            reading.hub = None
            os.close(reading.fd)
        hub.release(self.loop)
        for reading in self.readings:
            if not reading.paused and not reading.transport.is_closing():
                reading.transport.resume_reading()
        self.readings = ()
        self.relays = ()


_ceiling: list[int] = []


def _descriptor_ceiling() -> int:
    """The highest descriptor a feed may hold (its duplicates are the lowest free ones,
    so their numbers tell how many are open): an eighth of the process's limit (at
    least 64) stays for connections. Read once."""
    if not _ceiling:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        _ceiling.append(soft - max(64, soft // 8) if soft != resource.RLIM_INFINITY
                        else 1 << 30)
    return _ceiling[0]


#: Whether connections get feeds: with the C pump. The Python one (WSPROXY_NO_SPEEDUPS=1)
#: costs more per read than a transport's read callback into the Python relay
#: (callgrind, whole process: 2,480 vs 2,389 instructions a 64 B message at 16 a read),
#: so it is the C one's reference, run by the tests.
FEEDING: Final = Pump is not PyPump

#: Reads passed straight through by a relay before its connection gets a feed: the feed
#: costs about as much to set up as it saves on ~10 reads of 16 small messages.
FEED_AFTER: Final = 8

# As plain globals: an Enum class's attribute costs ~900 instructions on Python 3.11.
_OPEN: Final = SessionState.OPEN
_CLIENT: Final = Side.CLIENT
_UPSTREAM: Final = Side.UPSTREAM
#: The relay classes there are (the C one only where it was built; the same twice if not).
_RELAYS: Final = (PyRelay, Relay)

