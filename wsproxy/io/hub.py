"""The hub: the pumps of a loop's feeds read through one epoll descriptor (issue 18).

wsproxy.io.direct's feeds read a busy connection's sockets with pumps
(wsproxy.io.pump). Each socket could be a loop reader of its own, but then every
ready socket costs the loop's dispatch (in uvloop: libuv's poll callback, a handle,
the GIL, a Python call: ~2.3k instructions a read, more than the pump's own work).
A hub is one epoll descriptor of our own holding every fed socket of the loop
(level-triggered); the loop has one reader, on the hub's descriptor (an epoll
descriptor is readable while one of its sockets is: Linux nests them), and its
callback ``ready()`` takes the ready sockets with epoll_wait()s that do not wait and
reads each one's pump. ``Hub`` is ``_scan.Hub`` (C: the pumps' reads are C calls)
where it was built, ``PyHub`` below otherwise (and for Python pumps): the same logic,
tested as twins in tests/unit/test_hub.py.

Fairness: ``ready()`` reads at most ``limit`` sockets, batch after batch while any is
ready (sockets that become ready while a batch is read wait for no turn of the loop:
under load, fewer wakes, each with its epoll_pwait() and the loop's dispatch);
level-triggered, a socket still readable is ready again after those ready before it,
and one past the limit at the next wake, after the loop's other callbacks. Without
epoll (not Linux), ``ReaderHub`` gives each pump a loop reader of its own, as before
the hub. (Edge-triggered, the hub would skip polling each socket it read once more
at the next epoll_wait(), but must then requeue a socket its read did not empty and
what a failed batch left unread; measured, it was no faster: README, round 16.)

A batch's sends wait for its reads: what each read passes straight through is held
(``pump.Held``; the C hub, in a buffer of its own) and sent at the end of the batch, in
the order read, and before anything else happens (a read for the driver, a pump's
end, a read that might not fit the C hub's buffer). A send wakes the peer's process if
it sleeps, and waking a process on another CPU is an inter-processor interrupt (in a
virtual machine, a trip through the hypervisor: wsproxy.io.pass_end); sends back to
back find it awake. Under ``bench/run.py``'s 64 B figure: IPIs 0.48 -> 0.40 and
context switches 2.10 -> 1.87 per thousand messages, msg/s +2-4 %.

``join(loop, pump)`` puts a pump in its loop's hub (made, and its reader added, on
the first) and returns the hub, whose ``remove(pump)`` takes it out (a pause of the
feed, or its end), and ``release(loop)`` closes the loop's hubs that have no pump
left (a feed's end: an idle process keeps no hub).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from typing import Final, Protocol, cast

from wsproxy.core.scan import SPEEDUPS
from wsproxy.io.pump import Held, PyPump

#: Sockets read per ``ready()`` at most: the loop's other callbacks wait for no more.
HUB_EVENTS: Final = 64


class AnyHub(Protocol):
    """What a feed asks of a hub."""

    def add(self, pump: PyPump) -> None: ...
    def remove(self, pump: PyPump) -> None: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...


class PyHub:
    """Pumps read through one epoll descriptor (the module's doc; ``_scan.Hub`` is its
    compiled twin, for C pumps).

    ``add(pump)`` registers the pump's socket (``fd_in``) for reading and sets its
    ``hub``; ``remove(pump)`` takes it out (nothing if it is not in), before the socket
    is closed (epoll forgets a socket only once every descriptor of it is closed, and
    its transport holds another). ``ready()``, the loop reader's callback on
    ``fileno()``: epoll_wait()s that do not wait, each one's sockets' pumps read if
    they are still in (a pump's read may stop feeds of the same batch), until none is
    ready or *limit* sockets were read (what became ready during a batch is read in
    this wake, without another turn of the loop). An error of a pump's read ends
    ``ready()`` (the loop's exception handler hears of it): the sockets not read yet
    are still ready at the next wake.
    """

    __slots__ = ("_epoll", "_held", "limit", "members")

    def __init__(self, limit: int = HUB_EVENTS) -> None:
        if not 1 <= limit <= _MAX_EVENTS:
            raise ValueError(f"Hub(): limit must be within 1..{_MAX_EVENTS}")
        self.limit = limit
        self._epoll: select.epoll | None = select.epoll()
        #: fd -> the pump that reads it.
        self.members: dict[int, PyPump] = {}
        #: The batch's reads held until its end (the module's doc).
        self._held = Held()

    def add(self, pump: PyPump) -> None:
        epoll = self._open()
        if pump.hub is self:
            return
        if pump.hub is not None or pump.fd_in < 0:
            raise ValueError("Hub.add(): the pump is detached or in a hub")
        epoll.register(pump.fd_in, select.EPOLLIN)
        self.members[pump.fd_in] = pump
        pump.hub = self

    def remove(self, pump: PyPump) -> None:
        if pump.hub is self and self._epoll is not None:
            self._epoll.unregister(pump.fd_in)
            pump.hub = None
            del self.members[pump.fd_in]

    def ready(self) -> None:
        done = 0
        while self._epoll is not None and done < self.limit:
            members = self.members
            batch = [members[fd] for fd, _ in self._epoll.poll(0, self.limit - done)]
            if not batch:
                return
            done += len(batch)
            held = self._held
            try:
                for pump in batch:
                    if pump.hub is self:
                        pump.read(held)
            except Exception:
                with contextlib.suppress(Exception):  # the first error is the one told
                    held.send()  # after an error too: its bytes were taken
                raise
            held.send()

    def fileno(self) -> int:
        return self._open().fileno()

    def close(self) -> None:
        """Every pump out, the descriptor closed: idempotent."""
        for pump in self.members.values():
            pump.hub = None
        self.members.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __len__(self) -> int:
        return len(self.members)

    def _open(self) -> select.epoll:
        if self._epoll is None:
            raise ValueError("the hub is closed")
        return self._epoll


class ReaderHub:
    """Without epoll: each pump's socket a loop reader of its own (``add``/``remove``
    as the other hubs'; no descriptor of its own)."""

    __slots__ = ("loop", "members")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.members: dict[int, PyPump] = {}

    def add(self, pump: PyPump) -> None:
        if self.members.get(pump.fd_in) is not pump:
            self.loop.add_reader(pump.fd_in, pump.readable)
            self.members[pump.fd_in] = pump

    def remove(self, pump: PyPump) -> None:
        if pump.fd_in >= 0 and self.members.get(pump.fd_in) is pump:
            self.loop.remove_reader(pump.fd_in)
            del self.members[pump.fd_in]

    def close(self) -> None:
        for fd in self.members:
            self.loop.remove_reader(fd)
        self.members.clear()

    def __len__(self) -> int:
        return len(self.members)


def join(loop: asyncio.AbstractEventLoop, pump: PyPump) -> AnyHub:
    """*pump*'s socket read by *loop*'s hub for its kind of pump (made on the first)."""
    kind = _hub_kind(pump)
    hub = _hubs.get((loop, kind))
    if hub is None:
        if kind is ReaderHub:
            hub = ReaderHub(loop)
        else:
            made = cast(PyHub, kind())
            loop.add_reader(made.fileno(), made.ready)
            hub = made
        _hubs[loop, kind] = hub
    hub.add(pump)
    return hub


def release(loop: asyncio.AbstractEventLoop) -> None:
    """*loop*'s hubs that read no pump any more: their reader removed, closed."""
    for key in [key for key, hub in _hubs.items() if key[0] is loop and not len(hub)]:
        hub = _hubs.pop(key)
        if not isinstance(hub, ReaderHub):
            loop.remove_reader(cast(PyHub, hub).fileno())
        hub.close()


def hubs(loop: asyncio.AbstractEventLoop) -> list[AnyHub]:
    """*loop*'s hubs (for tests)."""
    return [hub for key, hub in _hubs.items() if key[0] is loop]


def _hub_kind(pump: PyPump) -> type:
    """The hub for *pump*: the C one for a C pump (PyHub sets a pump's ``hub``, which a
    C pump only lets its C hub set), PyHub for a Python one; ReaderHub without epoll."""
    if isinstance(pump, PyPump):
        return PyHub if _EPOLL else ReaderHub
    return Hub if Hub is not PyHub else ReaderHub


def _pick() -> type:
    if SPEEDUPS != "c" or not _EPOLL:
        return PyHub
    from wsproxy.core import _scan

    return cast(type, getattr(_scan, "Hub", PyHub))


_EPOLL: Final = hasattr(select, "epoll")
#: The C hub's bound on *limit* (its events are on the stack).
_MAX_EVENTS: Final = 1024
#: The pumps of a loop's feeds read through one epoll descriptor: PyHub or its C twin.
Hub: Final = _pick()
#: (loop, hub kind) -> the hub.
_hubs: dict[tuple[asyncio.AbstractEventLoop, type], AnyHub] = {}
