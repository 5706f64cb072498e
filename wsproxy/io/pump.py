"""The pump: an OPEN connection's socket read without its transport's read callback.

wsproxy.io.direct starts one on each plain TCP transport of a busy OPEN connection
(its *feed*) and stops it again; the loop's hub (wsproxy.io.hub) calls it when its
socket is readable. ``Pump`` is ``_scan.Pump``, compiled in the core's C
module next to the C ``Relay`` whose fields it reads, where that was built and the
speedups are on (wsproxy.core.scan.SPEEDUPS), and ``PyPump`` below otherwise: the same
logic, tested as twins in tests/unit/test_direct_relay.py. The pump does system calls
(a read on its socket, a send on the other), so its Python twin is a driver, here,
not in the sans-I/O core.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, Protocol, cast

from wsproxy.core.scan import SPEEDUPS, PyRelay


class _Sink(Protocol):
    """The other transport, as a pump writes to it."""

    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...


class _Hub(Protocol):
    """What reads a pump's socket (wsproxy.io.hub), as the pump leaves it."""

    def remove(self, pump: PyPump) -> None: ...


#: How much a pump reads at once (the C pump's buffer).
PUMP_READ: Final = 256 * 1024


class PyPump:
    """An OPEN connection's socket read without the transport's read callback
    (wsproxy.io.direct starts one on each plain TCP transport and stops it again).

    ``read(held)`` is called when *fd_in* (a duplicate of this transport's socket) is
    readable, by the hub that holds the pump (``hub``; wsproxy.io.hub), with its batch
    (``Held``): one read, and what passes straight through is held for ``send()`` at
    the batch's end (``readable()``: sent at once). Its end (nothing read) or an
    error other than "would block" goes to ``end(errno)`` (0 for the end), and nothing
    else happens. A read *relay* (the relay protocol of this transport) would pass
    straight through (its checks: the session OPEN, nothing waiting, ``take``) is sent
    on *fd_out* (the other socket) when *sink* (the other transport) is not closing and
    has nothing buffered, so it cannot overtake the driver's own frames; what the send
    did not take, or all of it if *sink* was busy, goes to ``sink.write``. A read the
    relay would not pass goes to its original protocol's ``data_received``, as a
    transport's read would.

    ``_scan.Pump`` is its compiled twin (``Pump`` below is the one in use; it takes a C
    ``Relay`` and reads into a buffer, one of the module's or its hub's, instead of a
    new bytes object).
    """

    __slots__ = ("end", "fd_in", "fd_out", "hub", "relay", "sink")

    def __init__(
        self, relay: PyRelay, fd_in: int, fd_out: int, sink: _Sink,
        end: Callable[[int], object],
    ) -> None:
        self.relay = relay
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.sink = sink
        self.end = end
        #: The hub that reads *fd_in* (wsproxy.io.hub), while it does.
        self.hub: _Hub | None = None

    def readable(self) -> None:
        self.read(None)

    def read(self, held: Held | None) -> None:
        """One read (``readable()``'s). With *held* (the batch of the hub that reads
        it), what passes straight through is held and sent at the batch's end
        (``Held.send``), and what was held is sent before the driver hears of anything
        (this read, the end); without, it is sent at once."""
        if self.fd_in < 0:
            return
        code = 0
        try:
            data = os.read(self.fd_in, PUMP_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, code = b"", exc.errno or 0
        relay = self.relay
        if data and (relay.session.state is relay.open and not relay.leg.out
                     and relay.flow.take(data)):
            if held is None:
                self.send(data)
            else:
                held.reads.append((self, data))
            return
        if held is not None:
            held.send()  # the driver hears of this read, or of the end: what was held first
        if data:
            relay.original.data_received(data)
        else:
            self.end(code)

    def send(self, data: bytes) -> None:
        """*data*, which a read passed straight through, on its way to the other
        transport: sent on the other socket while that transport has nothing buffered
        and is not closing (so it cannot overtake the driver's own frames), the rest
        (all of it if it was busy, or the pump was detached meanwhile) to its write."""
        sink = self.sink
        sent = 0
        if self.fd_out >= 0 and not sink.is_closing() and not sink.get_write_buffer_size():
            try:
                sent = os.write(self.fd_out, data)
            except OSError:  # full, or an error: the transport's write meets it as its own
                sent = 0
        if sent < len(data):
            sink.write(data[sent:])

    def detach(self) -> None:
        """Forget the sockets (about to be closed), out of the hub first:
        ``readable()`` does nothing after."""
        if self.hub is not None:
            self.hub.remove(self)
        self.fd_in = self.fd_out = -1


class Held:
    """A hub's batch of reads (wsproxy.io.hub): what they passed straight through, held
    until ``send()``, at the batch's end or before the driver hears of anything. The C
    hub holds them in a buffer of its own (``_scan.Hub``)."""

    __slots__ = ("reads",)

    def __init__(self) -> None:
        #: (pump, bytes) in the order read.
        self.reads: list[tuple[PyPump, bytes]] = []

    def send(self) -> None:
        """Each held read sent by its pump, in order (each pump writes to a transport of
        its own). A failure of one does not keep the others' bytes back: the first is
        raised after."""
        reads, self.reads = self.reads, []
        failure: Exception | None = None
        for pump, data in reads:
            try:
                pump.send(data)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


def _pick() -> type[PyPump]:
    if SPEEDUPS != "c":
        return PyPump
    from wsproxy.core import _scan

    return cast(type[PyPump], _scan.Pump)


#: An OPEN connection's socket read: PyPump or its C twin (which takes a C Relay).
Pump: Final = _pick()
